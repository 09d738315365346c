"""``spinecloud serve`` and ``spinecloud admin ...`` (tokens, projects, members).

``create-token`` prints the new token once; only its hash is stored, so it cannot be shown
again. Registered through the ``spinecloud.cli`` entry-point group.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from spinecloud_gateway.auth import repository
from spinecloud_gateway.auth import service as auth
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db import migrate, session_scope
from spinecloud_shared.db.models import Role
from spinecloud_shared.errors import ConfigurationError

__all__ = ["admin_app", "serve"]

admin_app = typer.Typer(
    help="Administer the gateway: API tokens, projects, members.", no_args_is_help=True
)
console = Console()


def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """Run the gateway with uvicorn (settings from SPINECLOUD_* variables)."""
    import uvicorn

    _settings()  # fail fast, before uvicorn starts, on invalid settings
    uvicorn.run(
        "spinecloud_gateway.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        proxy_headers=True,
    )


def _settings() -> GatewaySettings:
    """The settings, or a ConfigurationError that names what is wrong."""
    try:
        return GatewaySettings()
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors())
        raise ConfigurationError(f"invalid gateway settings: {problems}") from exc


def _database_url() -> str:
    url = _settings().resolved_database_url
    migrate.upgrade(url)
    return url


@admin_app.command("create-token")
def create_token(
    role: Annotated[Role, typer.Option(help="Role the token acts with")],
    project: Annotated[str | None, typer.Option(help="Project (created if new); none: all")] = None,
    name: Annotated[str, typer.Option(help="What the token is for")] = "api-token",
) -> None:
    """Create an API token and print it once."""
    with session_scope(_database_url()) as session:
        target = auth.ensure_project(session, project) if project else None
        row, secret = auth.create_token(session, name=name, role=role, project=target)
        prefix = row.prefix
    console.print(f"[green]created[/] token {prefix} ({role.value}, project {project or 'all'})")
    console.print("Store it now; it cannot be shown again:")
    print(secret)


@admin_app.command("list-tokens")
def list_tokens() -> None:
    """List API tokens (prefix, name, role, project, state); never the secrets."""
    table = Table("prefix", "id", "name", "role", "project", "revoked", "last used")
    with session_scope(_database_url()) as session:
        for row in repository.tokens(session):
            table.add_row(
                row.prefix,
                row.id,
                row.name,
                row.role.value,
                row.project_id or "all",
                row.revoked_at.isoformat() if row.revoked_at else "",
                row.last_used_at.isoformat() if row.last_used_at else "",
            )
    console.print(table)


@admin_app.command("revoke-token")
def revoke_token(token: Annotated[str, typer.Argument(help="Token id or prefix")]) -> None:
    """Revoke an API token; it stops working at once."""
    with session_scope(_database_url()) as session:
        row = auth.revoke_token(session, token)
        prefix = row.prefix
    console.print(f"[yellow]revoked[/] token {prefix}")


@admin_app.command("add-member")
def add_member(
    subject: Annotated[str, typer.Option(help="OIDC subject (sub claim)")],
    project: Annotated[str, typer.Option(help="Project name (created if new)")],
    role: Annotated[Role, typer.Option(help="Role of the user")] = Role.CLINICIAN,
    issuer: Annotated[
        str | None, typer.Option(help="OIDC issuer; default the configured one")
    ] = None,
) -> None:
    """Give a person (by OIDC subject) a role and access to a project."""
    settings = _settings()
    chosen_issuer = issuer or settings.oidc_issuer
    if not chosen_issuer:
        raise typer.BadParameter("no --issuer given and SPINECLOUD_OIDC_ISSUER is not set")
    with session_scope(_database_url()) as session:
        target = auth.ensure_project(session, project)
        auth.add_member(session, issuer=chosen_issuer, subject=subject, project=target, role=role)
    console.print(f"[green]member[/] {subject} -> {project} ({role.value})")
