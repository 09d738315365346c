"""``spinecloud models``: the model registry from the command line (list, register, promote).

Registered as the ``models`` command group of the ``spinecloud`` CLI through the
``spinecloud.cli`` entry-point group. Works on the settings' database
(``SPINECLOUD_DATABASE_URL``; the embedded SQLite file by default), migrated first so that a
fresh machine works. Rules of the registry: ``spinecloud_shared.db.registry``.
"""

from __future__ import annotations

import getpass
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from spinecloud_shared.db import session_scope, upgrade
from spinecloud_shared.db.models import RegisteredModel
from spinecloud_shared.db.registry import (
    list_models,
    promote,
    refresh_evaluation,
    register_model,
    retire,
)
from spinecloud_shared.models.manifest import ModelState, parse_model_ref

console = Console()
app = typer.Typer(
    name="models",
    help="The model registry: list, register, promote and retire model versions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_HEADLINE = ("dice", "val_dice_mean", "hd95")


def _user(by: str | None) -> str:
    return by or getpass.getuser()


def _number(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return "-"


def models_table(models: list[RegisteredModel]) -> Table:
    """A rich table of registered versions with their state and headline metrics."""
    table = Table(title="Registered models")
    for column in ("name", "version", "backend", "state", "Dice", "HD95 mm", "promoted", "path"):
        table.add_column(column, justify="right" if column in ("Dice", "HD95 mm") else "left")
    for model in models:
        metrics = model.metrics or {}
        dice = metrics.get("dice", metrics.get("val_dice_mean"))
        promoted = (
            f"{model.promoted_by} {model.promoted_at:%Y-%m-%d %H:%M}" if model.promoted_at else ""
        )
        style = "bold green" if model.state is ModelState.PRODUCTION else None
        table.add_row(
            model.name,
            model.version,
            model.backend,
            model.state.value,
            _number(dice),
            _number(metrics.get("hd95")),
            promoted,
            model.artifact_uri,
            style=style,
        )
    return table


@app.command("list")
def list_command(
    name: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    state: Annotated[ModelState | None, typer.Option(help="Only this state.")] = None,
) -> None:
    """List registered model versions."""
    upgrade()
    with session_scope() as session:
        models = [
            refresh_evaluation(session, m) for m in list_models(session, name=name, state=state)
        ]
        console.print(models_table(models))


@app.command("register")
def register_command(
    folder: Annotated[
        Path,
        typer.Argument(exists=True, file_okay=False, help="Artefact folder with spinecloud.json."),
    ],
    by: Annotated[str | None, typer.Option(help="Who registers (default: the OS user).")] = None,
) -> None:
    """Register a trained model artefact (manifest and weights verified) as a draft."""
    upgrade()
    with session_scope() as session:
        model = register_model(session, folder, registered_by=_user(by))
        console.print(models_table([model]))


@app.command("promote")
def promote_command(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    to: Annotated[ModelState, typer.Option(help="Target state.")] = ModelState.PRODUCTION,
    by: Annotated[str | None, typer.Option(help="Who promotes (default: the OS user).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
) -> None:
    """Promote a version; the name's previous production version becomes validated."""
    name, version = parse_model_ref(ref)
    if version is None:
        raise typer.BadParameter("give NAME@VERSION")
    upgrade()
    with session_scope() as session:
        promote(session, name, version, to=to, by=_user(by), reason=reason)
        console.print(models_table(list_models(session, name=name)))


@app.command("retire")
def retire_command(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    by: Annotated[str | None, typer.Option(help="Who retires (default: the OS user).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why, for the history.")] = None,
) -> None:
    """Retire a version for good."""
    name, version = parse_model_ref(ref)
    if version is None:
        raise typer.BadParameter("give NAME@VERSION")
    upgrade()
    with session_scope() as session:
        retire(session, name, version, by=_user(by), reason=reason)
        console.print(models_table(list_models(session, name=name)))
