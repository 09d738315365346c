"""``spinecloud finetune``: fine-tune a SegResNet bundle on clinicians' corrections in Orthanc.

Registered as the ``finetune`` command of the ``spinecloud`` CLI through the ``spinecloud.cli``
entry-point group. It finds the corrected SEGs (``corrections``), writes them as a dataset in
the TotalSegmentator layout (or takes an existing dataset folder with ``--dataset``), fine-tunes
the parent bundle (``finetune``) and prints whether the new version did better on the
validation cases.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_training.corrections import CorrectionDataset, build_correction_dataset
from spinecloud_training.data import phantom_sources
from spinecloud_training.finetune import FinetuneRequest, FinetuneResult, finetune
from spinecloud_training.segresnet import TrainingProgress

console = Console()
#: First seed of replay phantoms: clear of the default model's training and validation seeds.
REPLAY_SEED = 400_000


class _Bar:
    """A rich progress bar fed by the trainer's progress callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("loading", total=None, loss="")

    def __call__(self, event: TrainingProgress) -> None:
        loss = f"loss {event.loss:.3f}" if event.loss is not None else ""
        self.progress.update(
            self.task,
            description=event.phase.value,
            completed=event.iteration,
            total=event.total_iterations or None,
            loss=loss,
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        console=console,
        disable=not console.is_terminal,
    )


def _dataset_table(dataset: CorrectionDataset) -> Table:
    table = Table(title=f"Corrections dataset ({dataset.root})")
    for column in ("case", "split", "CT series (sha256)", "levels"):
        table.add_column(column)
    for case in dataset.cases:
        table.add_row(case.case_id, case.split, case.ct_series, " ".join(case.levels))
    for bad in dataset.excluded:
        table.add_row("excluded", bad.code, bad.ct_series, bad.reason, style="yellow")
    return table


def _verdict_table(result: FinetuneResult) -> Table:
    table = Table(title=f"Validation before/after ({result.summary()['evaluator']})")
    for column in ("model", "mean Dice"):
        table.add_column(column)
    for name, scores in ((result.parent, result.before), ("fine-tuned", result.after)):
        value = scores.mean_dice if scores else None
        table.add_row(name, "-" if value is None else f"{value:.4f}")
    return table


def _report(result: FinetuneResult) -> None:
    if not result.training.completed or result.manifest is None:
        console.print(
            f"[yellow]cancelled[/] at iteration {result.training.iteration}; nothing written."
        )
        return
    if result.after is not None:
        console.print(_verdict_table(result))
        summary = result.summary()
        verdict = "improved" if result.improved else ("not worse" if result.not_worse else "worse")
        console.print(f"delta {summary['delta']:+.4f} (margin {result.margin}): [bold]{verdict}[/]")
    else:
        console.print("[yellow]no validation case[/]: before/after not measured.")
    console.print(f"[green]bundle written[/] {result.manifest.ref} -> {result.bundle_dir}")


def finetune_command(
    parent: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Bundle folder to start from.")
    ],
    output: Annotated[Path, typer.Option(help="Folder of the new bundle version.")],
    work_dir: Annotated[
        Path, typer.Option(help="Dataset, checkpoints and evaluation files go here.")
    ] = Path("var/finetune"),
    dataset: Annotated[
        Path | None,
        typer.Option(help="Use this dataset folder instead of reading Orthanc."),
    ] = None,
    study: Annotated[
        list[str] | None, typer.Option(help="Only this StudyInstanceUID (repeatable).")
    ] = None,
    iterations: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 60,
    lr_factor: Annotated[
        float, typer.Option(min=0.0, help="Parent's learning rate times this.")
    ] = 0.1,
    replay_phantoms: Annotated[
        int, typer.Option(min=0, help="Phantoms of the original data mixed into training.")
    ] = 0,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.25,
    margin: Annotated[float, typer.Option(help="Mean Dice the new version may lose.")] = 0.01,
    version: Annotated[str | None, typer.Option(help="Default: parent's patch + 1.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (split, crops, weights order).")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda if any).")] = None,
) -> None:
    """Fine-tune a SegResNet bundle on clinicians' corrected SEGs stored in Orthanc."""
    logging.basicConfig(level=logging.WARNING)
    if dataset is None:
        dataset = work_dir / "dataset"
        built = build_correction_dataset(
            OrthancClient.from_settings(),
            dataset,
            study_uids=study or None,
            val_fraction=val_fraction,
            seed=seed,
        )
        console.print(_dataset_table(built))
    request = FinetuneRequest(
        parent=parent,
        dataset=dataset,
        output_dir=output,
        work_dir=work_dir / "run",
        iterations=iterations,
        lr_factor=lr_factor,
        version=version,
        replay=phantom_sources(replay_phantoms, first_seed=REPLAY_SEED, prefix="replay"),
        margin=margin,
        seed=seed,
        device=device,
        command=shlex.join(["spinecloud", *sys.argv[1:]]),
    )
    with _progress() as progress:
        result = finetune(request, progress=_Bar(progress))
    _report(result)
