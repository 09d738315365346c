"""``spinecloud train``: train a segmentation model and write it as a SpineCloud model artefact.

``--backend segresnet`` (presets ``demo`` and ``paper``) writes a MONAI bundle;
``--backend nnunet`` runs nnU-Net v2 3d_fullres through ``nnunet.pipeline.train_nnunet`` and
writes a servable nnU-Net model folder (set ``nnUNet_def_n_proc`` and ``nnUNet_n_proc_DA`` in
the environment to size nnU-Net's process pools; 1 and 0 suit a small CPU machine). Register
the result with ``spinecloud models register``.

Registered as the ``train`` command of the ``spinecloud`` CLI through the ``spinecloud.cli``
entry-point group (the root CLI adds this module's ``train`` function as a command); ``app`` is
the same command as a stand-alone Typer app.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from spinecloud_shared.db.datasets import DATASET_PREFIX
from spinecloud_shared.errors import InvalidInputError
from spinecloud_training.data import DataSplit, ExcludedCase, layout_split, phantom_split
from spinecloud_training.presets import get_preset
from spinecloud_training.segresnet import (
    TrainingProgress,
    TrainingResult,
    TrainRequest,
    ValidationResult,
    train_segresnet,
)

console = Console()
app = typer.Typer(
    name="train", help="Train a spine segmentation model.", pretty_exceptions_enable=False
)


class Backend(StrEnum):
    """Training backends."""

    SEGRESNET = "segresnet"
    NNUNET = "nnunet"


class PresetName(StrEnum):
    """Presets of the SegResNet backend (see spinecloud_training.presets)."""

    DEMO = "demo"
    PAPER = "paper"


def _command_line() -> str:
    """The command as typed, for the manifest's lineage."""
    args = sys.argv[1:]
    if Path(sys.argv[0]).name == "spinecloud":
        return shlex.join(["spinecloud", *args])
    return shlex.join([Path(sys.argv[0]).name, *args])


def _data(dataset: str, phantoms: int, val_phantoms: int, seed: int) -> DataSplit:
    if dataset == "phantoms":
        return phantom_split(phantoms, val_phantoms, seed=seed)
    if dataset.startswith(DATASET_PREFIX):
        from spinecloud_shared.db import upgrade
        from spinecloud_training.dataset_tasks import registered_data

        upgrade()
        return registered_data(dataset.removeprefix(DATASET_PREFIX))
    root = Path(dataset)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such dataset folder (or give 'phantoms').")
    return layout_split(root)


class _Bar:
    """A rich progress bar fed by the trainer's progress callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("loading data", total=None, loss="", dice="", eta="")
        self.last_dice = ""

    def __call__(self, event: TrainingProgress) -> None:
        if event.val_dice is not None:
            self.last_dice = f"val Dice {event.val_dice:.3f}"
        loss = f"loss {event.loss:.3f}" if event.loss is not None else ""
        eta = f"ETA {event.eta_s / 60:.1f} min" if event.eta_s is not None else ""
        self.progress.update(
            self.task,
            description=f"{event.phase.value} (epoch {event.epoch})",
            completed=event.iteration,
            total=event.total_iterations or None,
            loss=loss,
            dice=self.last_dice,
            eta=eta,
        )


class _LogLines:
    """Plain progress lines for logs and pipes, where a live bar cannot redraw."""

    def __init__(self, every: int = 10) -> None:
        self.every = every

    def __call__(self, event: TrainingProgress) -> None:
        routine = event.phase.value == "training" and event.val_dice is None
        if routine and event.iteration % self.every:
            return
        parts = [f"{event.phase.value}", f"iteration {event.iteration}/{event.total_iterations}"]
        parts.append(f"epoch {event.epoch}")
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.val_dice is not None:
            parts.append(f"val Dice {event.val_dice:.4f}")
        parts.append(f"elapsed {event.elapsed_s / 60:.1f} min")
        if event.eta_s is not None:
            parts.append(f"ETA {event.eta_s / 60:.1f} min")
        console.print(", ".join(parts), highlight=False)


class _StopOnSignal:
    """Cancellation on SIGINT/SIGTERM: the trainer checkpoints and stops (resume later)."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[dice]}"),
        TextColumn("{task.fields[eta]}"),
        console=console,
    )


def _excluded_table(excluded: list[ExcludedCase]) -> Table:
    table = Table(title="Excluded cases")
    table.add_column("case")
    table.add_column("code")
    table.add_column("reason")
    for case in excluded:
        table.add_row(case.case_id, case.code, case.reason)
    return table


def _dice_table(validation: ValidationResult, title: str) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("Dice", justify="right")
    for name, value in validation.per_class.items():
        table.add_row(name, "-" if math.isnan(value) else f"{value:.3f}")  # NaN: class absent
    mean = validation.mean
    table.add_row("mean", "-" if mean is None else f"{mean:.3f}", style="bold")
    return table


def _report(result: TrainingResult) -> None:
    if result.excluded:
        console.print(_excluded_table(result.excluded))
    if not result.completed:
        console.print(
            f"[yellow]cancelled[/] at iteration {result.iteration}/{result.total_iterations}; "
            f"checkpoint {result.checkpoint} (continue with --resume)"
        )
        return
    if result.validation is not None:
        title = f"Validation Dice (best, iteration {result.best_iteration})"
        console.print(_dice_table(result.validation, title))
    console.print(
        f"[green]bundle written[/] to {result.bundle_dir} "
        f"({result.iteration} iterations, {result.train_seconds / 60:.1f} min)"
    )


def _nnunet(
    data: DataSplit,
    output: Path,
    work_dir: Path | None,
    name: str,
    version: str,
    epochs: int | None,
    iterations: int | None,
    device: str | None,
) -> None:
    """Train nnU-Net v2 (3d_fullres, SpineCloud's split as fold 0) and write its artefact."""
    from spinecloud_training.nnunet.pipeline import NnUNetRequest, train_nnunet
    from spinecloud_training.nnunet.train import TrainSettings

    request = NnUNetRequest(
        data=data,
        work_dir=work_dir or output.with_name(output.name + ".nnunet"),
        output_dir=output,
        name=name,
        version=version,
        settings=TrainSettings(num_epochs=epochs, iterations_per_epoch=iterations),
        device=device,
        command=_command_line(),
    )
    stop = _StopOnSignal()
    if console.is_terminal:
        with _progress() as progress:
            result = train_nnunet(request, progress=_Bar(progress), should_cancel=stop)
    else:
        result = train_nnunet(request, progress=_LogLines(every=1), should_cancel=stop)
    excluded = [ExcludedCase(**e) for e in result.excluded]
    if excluded:
        console.print(_excluded_table(excluded))
    if not result.completed:
        console.print(
            f"[yellow]cancelled[/] after epoch {result.epoch}; checkpoints in "
            f"{result.fold_dir()} (run the same command again to continue)"
        )
        return
    dice = (result.manifest.metrics if result.manifest else {}).get("val_dice_mean")
    summary = f", validation Dice {dice:.3f}" if isinstance(dice, float) else ""
    console.print(
        f"[green]model written[/] to {result.artefact_dir} (fold {result.fold}, "
        f"{result.epoch} epochs{summary})"
    )


def train(
    backend: Annotated[Backend, typer.Option(help="Training backend.")] = Backend.SEGRESNET,
    preset: Annotated[
        PresetName, typer.Option(help="SegResNet preset (nnU-Net plans its own).")
    ] = PresetName.DEMO,
    dataset: Annotated[
        str,
        typer.Option(
            help="'phantoms', a TotalSegmentator, VerSe or plain layout folder, or "
            "'dataset:NAME' (a registered dataset, trained on its stored splits)."
        ),
    ] = "phantoms",
    phantoms: Annotated[int, typer.Option(min=1, help="Training phantoms.")] = 32,
    val_phantoms: Annotated[int, typer.Option(min=0, help="Validation phantoms.")] = 6,
    output: Annotated[
        Path | None, typer.Option(help="Artefact folder to write (default models/NAME/VERSION).")
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(help="Checkpoint folder (default: <output>.checkpoints, or .nnunet)."),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(min=1, help="SegResNet: the run's iterations; nnU-Net: iterations per epoch."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="nnU-Net epochs (default 1000).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="SegResNet: continue from the last checkpoint (nnU-Net always does)."),
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Model name (default spine-segresnet / spine-nnunet).")
    ] = None,
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "0.1.0",
    seed: Annotated[int, typer.Option(help="Random seed (weights, data, augmentation).")] = 0,
    device: Annotated[
        str | None, typer.Option(help="torch device (default: cuda when present, else cpu).")
    ] = None,
) -> None:
    """Train a spine segmentation model and write it as a model artefact with a manifest."""
    logging.basicConfig(level=logging.WARNING)
    name = name or f"spine-{backend.value}"
    output = output or Path("models") / name / version
    data = _data(dataset, phantoms, val_phantoms, seed)
    if backend is Backend.NNUNET:
        _nnunet(data, output, work_dir, name, version, epochs, iterations, device)
        return
    chosen = get_preset(preset.value).with_overrides(iterations=iterations, seed=seed)
    request = TrainRequest(
        preset=chosen,
        data=data,
        output_dir=output,
        work_dir=work_dir,
        name=name,
        version=version,
        resume=resume,
        command=_command_line(),
        device=device,
    )
    stop = _StopOnSignal()
    if console.is_terminal:
        with _progress() as progress:
            result = train_segresnet(request, progress=_Bar(progress), should_cancel=stop)
    else:
        result = train_segresnet(request, progress=_LogLines(), should_cancel=stop)
    _report(result)


app.command()(train)
