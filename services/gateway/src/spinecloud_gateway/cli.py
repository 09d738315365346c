"""``spinecloud serve``, ``spinecloud admin ...`` (tokens, projects, members) and
``spinecloud stack up|down|status`` (a whole site as local processes, for a developer).

``create-token`` prints the new token once; only its hash is stored, so it cannot be shown
again. Registered through the ``spinecloud.cli`` entry-point group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from spinecloud_gateway.auth import repository
from spinecloud_gateway.auth import service as auth
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.stack import GATEWAY_APP, Stack, StackConfig, read_state, run_stack
from spinecloud_shared.db import migrate, session_scope
from spinecloud_shared.db.models import Role
from spinecloud_shared.errors import ConfigurationError
from spinecloud_shared.task_names import QUEUES

__all__ = ["admin_app", "serve", "stack_app"]

admin_app = typer.Typer(
    help="Administer the gateway: API tokens, projects, members.", no_args_is_help=True
)
stack_app = typer.Typer(
    help="A whole site as local processes (Orthanc, Redis, gateway, workers), no Docker.",
    no_args_is_help=True,
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
        GATEWAY_APP,
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


StateDir = Annotated[
    Path, typer.Option(help="State folder: database, Orthanc storage, Redis data, logs")
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@stack_app.command("up")
def stack_up(
    state_dir: StateDir = Path("var"),
    host: Annotated[str, typer.Option(help="Address the gateway binds")] = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option(help="Gateway HTTP port")] = 8000,
    orthanc_port: Annotated[int, typer.Option(help="Orthanc HTTP port (loopback)")] = 8042,
    dicom_port: Annotated[int, typer.Option(help="Orthanc DICOM port (C-STORE)")] = 4242,
    redis_url: Annotated[
        str, typer.Option(help="Redis to use; a loopback one is started if none answers")
    ] = "redis://127.0.0.1:6379/0",
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help=f"Worker queues (default all: {', '.join(QUEUES)})"),
    ] = None,
    no_workers: Annotated[bool, typer.Option(help="Start no worker")] = False,
    stable_age: Annotated[int, typer.Option(help="Orthanc StableAge, seconds")] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each piece")] = 600.0,
) -> None:
    """Start Orthanc, Redis, the gateway and one worker per queue; Ctrl-C stops them all."""
    queues = () if no_workers else tuple(queue or QUEUES)
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; choose from {list(QUEUES)}")
    running = read_state(state_dir)
    if running and _alive(int(str(running["pid"]))):
        raise ConfigurationError(f"a stack already runs on {state_dir} (pid {running['pid']})")
    config = StackConfig(
        state_dir=state_dir,
        host=host,
        gateway_port=gateway_port,
        orthanc_port=orthanc_port,
        dicom_port=dicom_port,
        redis_url=redis_url,
        queues=queues,
        stable_age_s=stable_age,
        timeout_s=timeout,
    )
    # Ctrl-C stops the stack even when this process inherited SIGINT as ignored (started as
    # a background job of a shell without job control, which then ignores it for its
    # children); `stack down` sends SIGTERM, handled the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    failed: str | None = None
    try:
        with run_stack(
            config, on_started=lambda line: console.print(f"[green]up[/] {line}")
        ) as site:
            data_dir = state_dir.resolve()
            url = config.gateway_url
            print(f"\nSpineCloud runs (state in {data_dir}):")
            print(f"  gateway   {url}   API docs {url}/docs   DICOMweb {url}/dicom-web")
            print(f"  C-STORE   {site.orthanc.aet}@127.0.0.1:{site.orthanc.dicom_port}")
            print(f"  logs      {data_dir / 'logs'}, {data_dir / 'orthanc' / 'orthanc.log'}")
            print("First admin token (in another shell):")
            print(f"  SPINECLOUD_DATA_DIR={data_dir} spinecloud admin create-token --role admin")
            print("Ctrl-C (or spinecloud stack down) stops everything.", flush=True)
            failed = _watch(site)
    except KeyboardInterrupt:
        console.print("[yellow]stopping[/] ...")
    if failed:
        console.print(f"[red]error[/] {failed}; everything is stopped")
        raise typer.Exit(1)
    console.print("[green]stopped[/]")


def _watch(site: Stack) -> str:
    """Block until a process of ``site`` exits; what happened."""
    while True:
        time.sleep(0.5)
        for process in site.processes.values():
            if not process.running():
                code = process.popen.returncode
                return f"{process.name} exited ({code}); see {process.log_path}"


@stack_app.command("down")
def stack_down(
    state_dir: StateDir = Path("var"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 60.0,
) -> None:
    """Stop the stack up running on the state folder, and so everything it started."""
    running = read_state(state_dir)
    pid = int(str(running["pid"])) if running else None
    if pid is None or not _alive(pid):
        console.print(f"no stack runs on {state_dir}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        raise ConfigurationError(f"stack up (pid {pid}) did not stop within {timeout:.0f} s")
    console.print("[green]stopped[/]")


@stack_app.command("status")
def stack_status(state_dir: StateDir = Path("var")) -> None:
    """Whether a stack runs on the state folder: its processes, the gateway's readiness."""
    running = read_state(state_dir)
    if not running or not _alive(int(str(running["pid"]))):
        console.print(f"no stack runs on {state_dir}")
        raise typer.Exit(1)
    table = Table("process", "pid", "state", "log")
    processes = dict(running.get("processes", {}))  # type: ignore[call-overload]
    logs = dict(running.get("logs", {}))  # type: ignore[call-overload]
    for name, pid in processes.items():
        table.add_row(name, str(pid), "running" if _alive(int(pid)) else "gone", logs.get(name, ""))
    console.print(table)
    url = str(running["gateway_url"])
    try:
        answer = httpx.get(f"{url}/readyz", timeout=5)
        ready = f"{answer.status_code} {answer.json().get('checks', {})}"
    except (httpx.HTTPError, ValueError) as exc:
        ready = f"unreachable ({type(exc).__name__})"
    console.print(f"gateway {url} /readyz: {ready}")
    console.print(f"orthanc {running['orthanc_url']}  DICOM port {running['dicom_port']}")
