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

app = typer.Typer(
    name="spinecloud",
    help="SpineCloud: train, serve and benchmark spine segmentation models for CT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _register_shared_commands() -> None:
    from spinecloud_shared.cli import phantom, worker

    app.command("worker")(worker.worker)
    app.add_typer(phantom.app, name="phantom")


def _register_plugins() -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            sub_app = entry_point.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            err_console.print(
                f"[yellow]warning:[/] command group {entry_point.name!r} could not be loaded: {exc}"
            )
            continue
        if isinstance(sub_app, typer.Typer):
            app.add_typer(sub_app, name=entry_point.name)
        else:
            app.command(entry_point.name)(sub_app)


_register_shared_commands()
_register_plugins()


def main() -> None:
    """Console entry point: domain errors become one red line and exit code 2."""
    try:
        app()
    except SpineCloudError as exc:
        err_console.print(f"[red]error[/] {escape(f'[{exc.code}]')}: {escape(exc.message)}")
        sys.exit(2)
