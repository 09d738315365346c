"""``spinecloud datasets``: register, list and inspect datasets from the command line.

Registered as the ``datasets`` command group of the ``spinecloud`` CLI through the
``spinecloud.cli`` entry-point group. Works on the settings' database
(``SPINECLOUD_DATABASE_URL``; the embedded SQLite file by default), migrated first.
``register`` creates the dataset row and scans it in this process with the training worker's
own code (``dataset_tasks.run_scan``), with a progress bar; ``--queue`` leaves the scan to a
training worker instead. Train on a registered dataset with ``spinecloud train --dataset
dataset:NAME``.
"""

from __future__ import annotations

import getpass
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_shared.db import session_scope, upgrade
from spinecloud_shared.db.datasets import (
    create_dataset,
    get_dataset,
    list_datasets,
    parse_fractions,
)
from spinecloud_shared.db.models import Dataset, JobStatus, Project
from spinecloud_shared.errors import SpineCloudError

console = Console()
app = typer.Typer(
    name="datasets",
    help="Datasets: register a folder or Orthanc corrections, list them, show their summary.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class Layout(StrEnum):
    """Layouts ``register`` accepts (``orthanc``: corrected SEGs in the settings' Orthanc)."""

    TOTALSEGMENTATOR = "totalsegmentator"
    VERSE = "verse"
    PLAIN = "plain"
    ORTHANC = "orthanc"


def _project_id(session: Session, name: str | None) -> str | None:
    """The id of project ``name``, created when new (as the gateway does for studies)."""
    if name is None:
        return None
    project = session.scalars(select(Project).where(Project.name == name)).one_or_none()
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project.id


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _fmt(distribution: dict[str, float] | None) -> str:
    if not distribution:
        return "-"
    return f"{distribution['min']:g} / {distribution['median']:g} / {distribution['max']:g}"


def datasets_table(datasets: list[Dataset]) -> Table:
    """A rich table of datasets: name, layout, status, cases, splits, where."""
    table = Table(title="Datasets")
    for column in ("name", "layout", "status", "cases", "excluded", "train/val/test", "root"):
        table.add_column(column, justify="right" if column in ("cases", "excluded") else "left")
    for dataset in datasets:
        summary = dataset.summary or {}
        splits = summary.get("splits") or {}
        style = {JobStatus.SUCCEEDED: "green", JobStatus.FAILED: "red"}.get(dataset.status)
        table.add_row(
            dataset.name,
            dataset.layout,
            dataset.status.value,
            str(summary.get("cases", "-")),
            str(summary.get("excluded_cases", "-")),
            "/".join(str(splits.get(s, 0)) for s in ("train", "val", "test")) if splits else "-",
            dataset.root or "-",
            style=style,
        )
    return table


def summary_tables(dataset: Dataset) -> list[Table]:
    """The summary of one dataset as rich tables: overview, classes, excluded cases."""
    summary: dict[str, Any] = dataset.summary or {}
    overview = Table(title=f"Dataset {dataset.name}", show_header=False)
    overview.add_column("field")
    overview.add_column("value")
    rows = [
        ("id", dataset.id),
        ("layout", dataset.layout),
        ("status", dataset.status.value),
        ("source", json.dumps(dataset.source)),
        ("root", dataset.root or "-"),
        ("seed / fractions", f"{dataset.seed} / {json.dumps(dataset.split_fractions)}"),
        ("cases (usable)", str(summary.get("cases", "-"))),
        ("excluded", str(summary.get("excluded_cases", "-"))),
        ("splits", json.dumps(summary.get("splits", {}))),
    ]
    for axis in "xyz":
        rows.append(
            (f"spacing {axis} mm (min/median/max)", _fmt(summary.get("spacing_mm", {}).get(axis)))
        )
    for axis in "xyz":
        rows.append(
            (f"size {axis} (min/median/max)", _fmt(summary.get("size_voxels", {}).get(axis)))
        )
    if dataset.error_code:
        rows.append(("error", f"{dataset.error_code}: {dataset.error_message}"))
    for field, value in rows:
        overview.add_row(field, value)
    tables = [overview]
    classes = summary.get("classes_present") or {}
    if classes:
        table = Table(title="Classes present")
        table.add_column("class")
        table.add_column("cases", justify="right")
        for name, count in classes.items():
            table.add_row(name, str(count))
        tables.append(table)
    if summary.get("excluded"):
        table = Table(title="Excluded cases")
        for column in ("case", "code", "reason"):
            table.add_column(column)
        for entry in summary["excluded"]:
            table.add_row(entry["case_id"], entry["code"], entry["reason"])
        tables.append(table)
    return tables


@app.command("register")
def register_command(
    source: Annotated[
        str, typer.Argument(help="Dataset folder, or an Orthanc query for --layout orthanc.")
    ],
    name: Annotated[str, typer.Option(help="Unique dataset name.")],
    layout: Annotated[Layout, typer.Option(help="Layout of the folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the drawn splits.")] = 0,
    split: Annotated[
        str, typer.Option(help="Train,val,test fractions for cases the layout gives no split.")
    ] = "0.8,0.1,0.1",
    project: Annotated[str | None, typer.Option(help="Project that owns the dataset.")] = None,
    queue: Annotated[
        bool, typer.Option(help="Leave the scan to a training worker instead of this process.")
    ] = False,
    by: Annotated[str | None, typer.Option(help="Who registers (default: the OS user).")] = None,
) -> None:
    """Register a dataset and scan it: every case validated, summary and splits stored.

    For ``--layout orthanc`` SOURCE is ``all`` or a comma-separated list of
    StudyInstanceUIDs whose corrected SEGs make the dataset.
    """
    try:
        fractions = parse_fractions(split)
    except SpineCloudError as exc:
        raise typer.BadParameter(exc.message, param_hint="--split") from exc
    if layout is Layout.ORTHANC:
        studies = None if source == "all" else [s.strip() for s in source.split(",") if s.strip()]
        spec: dict[str, Any] = {"orthanc": {"study_uids": studies}}
    else:
        spec = {"path": str(Path(source).resolve())}
    upgrade()
    try:
        with session_scope() as session:
            dataset = create_dataset(
                session,
                name=name,
                layout=layout.value,
                source=spec,
                seed=seed,
                fractions=fractions,
                project_id=_project_id(session, project),
                created_by=by or getpass.getuser(),
                enqueue=queue,
            )
            dataset_id = dataset.id
    except SpineCloudError as exc:
        console.print(f"[red]{exc.code}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    if queue:
        console.print(f"dataset {name} ({dataset_id}) queued for a training worker to scan")
        return
    # Imported here: scanning needs the training data stack (MONAI, torch), listing does not.
    from spinecloud_training.dataset_tasks import run_scan

    with _bar() as progress:
        task = progress.add_task("starting", total=None)

        def report(stage: str, done: int, total: int | None) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        outcome = run_scan(dataset_id, report)
    with session_scope() as session:
        for table in summary_tables(get_dataset(session, dataset_id)):
            console.print(table)
    if outcome.status is not JobStatus.SUCCEEDED:
        failure = outcome.failure
        console.print(f"[red]failed[/]: {failure.code}: {failure.message}" if failure else "failed")
        raise typer.Exit(1)


@app.command("list")
def list_command(
    project: Annotated[str | None, typer.Option(help="Only this project's datasets.")] = None,
) -> None:
    """List registered datasets, newest first."""
    upgrade()
    with session_scope() as session:
        ids = None
        if project is not None:
            found = session.scalars(select(Project.id).where(Project.name == project)).all()
            ids = frozenset(found)
        console.print(datasets_table(list_datasets(session, project_ids=ids)))


@app.command("show")
def show_command(ref: Annotated[str, typer.Argument(help="Dataset name or id.")]) -> None:
    """A dataset's summary: cases, excluded cases with reasons, classes, spacing and size."""
    upgrade()
    try:
        with session_scope() as session:
            for table in summary_tables(get_dataset(session, ref)):
                console.print(table)
    except SpineCloudError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc


@app.command("splits")
def splits_command(
    ref: Annotated[str, typer.Argument(help="Dataset name or id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the splits as JSON.")] = False,
) -> None:
    """A dataset's stored splits: case id -> train, val or test."""
    upgrade()
    with session_scope() as session:
        dataset = get_dataset(session, ref)
        splits = dict(dataset.splits)
    if as_json:
        typer.echo(json.dumps(splits, indent=1, sort_keys=True))
        return
    table = Table(title=f"Splits of {ref}")
    table.add_column("case")
    table.add_column("split")
    for case_id, part in sorted(splits.items()):
        table.add_row(case_id, part)
    console.print(table)
