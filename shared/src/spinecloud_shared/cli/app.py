"""Root of the ``spinecloud`` command.

Shared commands live here; each installed service adds its own sub-command through the
``spinecloud.cli`` entry-point group (``metrics = "spinecloud_metrics.cli:app"``), so the
command reaches every capability of whatever is installed without this package importing a
service.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console
from rich.markup import escape

from spinecloud_shared.errors import SpineCloudError

ENTRY_POINT_GROUP = "spinecloud.cli"

#: Commands of this package (the others come from the entry points).
SHARED_COMMANDS = ("phantom", "worker")

err_console = Console(stderr=True)


def _new_app() -> typer.Typer:
    root = typer.Typer(
        name="spinecloud",
        help="SpineCloud: train, serve and benchmark spine segmentation models for CT.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )

    # A callback keeps the root a group when it holds a single command (``build_app("segment")``);
    # without one Typer would run that command directly and read its name as an argument.
    @root.callback()
    def _group() -> None:
        pass

    return root


def _register_shared_commands(root: typer.Typer) -> None:
    from spinecloud_shared.cli import phantom, worker

    root.command("worker")(worker.worker)
    root.add_typer(phantom.app, name="phantom")


def _register_plugins(root: typer.Typer, only: str | None = None) -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and entry_point.name != only:
            continue
        try:
            sub_app = entry_point.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            err_console.print(
                f"[yellow]warning:[/] command group {entry_point.name!r} could not be loaded: {exc}"
            )
            continue
        if isinstance(sub_app, typer.Typer):
            root.add_typer(sub_app, name=entry_point.name)
        else:
            root.command(entry_point.name)(sub_app)


def build_app(command: str | None = None) -> typer.Typer:
    """The root command with every sub-command, or only with ``command`` when it is given.

    Loading a service's sub-command imports the service (torch, MONAI, nnU-Net, FastAPI...),
    which costs seconds; ``spinecloud segment`` need not pay for training and the gateway.
    """
    root = _new_app()
    if command is None or command in SHARED_COMMANDS:
        _register_shared_commands(root)
    if command is None or command not in SHARED_COMMANDS:
        _register_plugins(root, only=command)
    return root


def _requested_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line when it is a known one, else None (all)."""
    if not argv or argv[0].startswith("-"):
        return None
    known = {e.name for e in entry_points(group=ENTRY_POINT_GROUP)} | set(SHARED_COMMANDS)
    return argv[0] if argv[0] in known else None


def __getattr__(name: str) -> typer.Typer:
    """``app``: the root command with every sub-command, built on first use."""
    if name == "app":
        full = build_app()
        globals()["app"] = full
        return full
    raise AttributeError(name)


def main() -> None:
    """Console entry point: domain errors become one red line and exit code 2."""
    root = build_app(_requested_command(sys.argv[1:]))
    try:
        root()
    except SpineCloudError as exc:
        err_console.print(f"[red]error[/] {escape(f'[{exc.code}]')}: {escape(exc.message)}")
        sys.exit(2)
