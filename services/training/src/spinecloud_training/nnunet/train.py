"""nnU-Net v2 planning, preprocessing, training, export and manifest, through nnunetv2's API.

A training works in one folder, ``work_dir``, with nnU-Net's three folders inside
(``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``); ``nnunet_environment`` points
nnU-Net's environment variables at them for the duration of a call and restores them after.
nnU-Net reads ``nnUNet_def_n_proc`` (its worker pool size, e.g. for validation export) once at
import: set it in the process environment before the first nnunetv2 import (1 on small CPU
machines). ``nnUNet_n_proc_DA`` = 0 runs data augmentation in the training process (no worker
processes); planning needs it positive, so it is raised to 1 while planning.

Trainer: the stock ``nnUNetTrainer`` class, instantiated directly, with its schedule
(``num_epochs``, iterations per epoch) set on the instance from ``TrainSettings`` before it is
initialised. The checkpoints therefore name ``nnUNetTrainer``: any nnU-Net installation, and
SpineCloud's nnU-Net backend, rebuilds the network without looking for a custom class (nnU-Net
finds trainers by name inside its own package, or ``nnUNet_extTrainer`` folders).

Outputs: the trained model folder ``nnUNet_results/Dataset.../nnUNetTrainer__nnUNetPlans__
3d_fullres/`` gets a ``spinecloud.json`` (``write_model_manifest``), which makes it a servable
artefact folder; ``export_zip`` writes nnU-Net's export zip with the same manifest at its root
(weights paths relative to the zip root), which ``import_model_zip`` of the inference backend
unpacks into a servable folder.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from spinecloud_shared import labels
from spinecloud_shared.models.manifest import (
    MANIFEST_FILE,
    Backend,
    Intensity,
    Lineage,
    Manifest,
    sha256_file,
    write_manifest,
)

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainer"
CHECKPOINT = "checkpoint_final.pth"
#: Checkpoints a resumed training starts from, in order of preference (as nnU-Net's ``--c``).
RESUME_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
Fold = int | str
#: nnU-Net's data augmentation worker count (0: in the training process).
_N_PROC_DA = "nnUNet_n_proc_DA"


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How long to train; ``None`` keeps nnU-Net's default (1000 x 250 iterations, 50 val)."""

    num_epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    #: Write ``checkpoint_latest.pth`` every this many epochs (nnU-Net's default: 50).
    save_every: int | None = None

    def apply(self, trainer: nnUNetTrainer) -> None:
        """Set the schedule on a trainer that is not initialised yet."""
        if self.num_epochs is not None:
            trainer.num_epochs = self.num_epochs
        if self.iterations_per_epoch is not None:
            trainer.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            trainer.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        if self.save_every is not None:
            trainer.save_every = self.save_every

    def to_dict(self) -> dict[str, Any]:
        """For the manifest's lineage."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class NnUNetFolders:
    """nnU-Net's raw, preprocessed and results folders inside one work folder."""

    work_dir: Path

    @property
    def raw(self) -> Path:
        """``nnUNet_raw``: the raw datasets (``raw_dataset.write_raw_dataset``)."""
        return self.work_dir / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        """``nnUNet_preprocessed``: plans and preprocessed cases."""
        return self.work_dir / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        """``nnUNet_results``: trained model folders."""
        return self.work_dir / "nnUNet_results"

    def model_folder(self, dataset_name: str, configuration: str = CONFIGURATION) -> Path:
        """The trained model folder of a dataset and configuration."""
        return self.results / dataset_name / f"{TRAINER}__{PLANS}__{configuration}"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def nnunet_environment(folders: NnUNetFolders) -> Iterator[None]:
    """Point nnU-Net's ``nnUNet_raw/_preprocessed/_results`` at ``folders`` in this process."""
    for path in (folders.raw, folders.preprocessed, folders.results):
        path.mkdir(parents=True, exist_ok=True)
    with _environment(
        {
            "nnUNet_raw": str(folders.raw),
            "nnUNet_preprocessed": str(folders.preprocessed),
            "nnUNet_results": str(folders.results),
        }
    ):
        yield


def plan_and_preprocess(
    folders: NnUNetFolders,
    dataset_id: int,
    *,
    configurations: Sequence[str] = (CONFIGURATION,),
    num_processes: int = 1,
) -> None:
    """Fingerprint (with nnU-Net's integrity check), plan and preprocess a raw dataset."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    with nnunet_environment(folders):
        extract_fingerprints(
            [dataset_id], num_processes=num_processes, check_dataset_integrity=True
        )
        # The planner sets torch's thread count to nnUNet_n_proc_DA, which must be positive.
        if os.environ.get(_N_PROC_DA) == "0":
            with _environment({_N_PROC_DA: "1"}):
                plan_experiments([dataset_id])
        else:
            plan_experiments([dataset_id])
        preprocess(
            [dataset_id],
            configurations=tuple(configurations),
            num_processes=[num_processes] * len(configurations),
        )


def build_trainer(
    folders: NnUNetFolders,
    dataset_name: str,
    *,
    fold: Fold,
    settings: TrainSettings,
    device: torch.device,
    continue_training: bool = False,
    configuration: str = CONFIGURATION,
) -> nnUNetTrainer:
    """A stock ``nnUNetTrainer`` for a preprocessed dataset, with ``settings`` applied.

    ``continue_training`` tells nnU-Net's loggers to append to the run's logs (the trainer
    reads it from the plans, as ``nnUNetv2_train --c`` passes it).
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    base = folders.preprocessed / dataset_name
    plans = json.loads((base / f"{PLANS}.json").read_text())
    plans["continue_training"] = continue_training
    dataset = json.loads((base / "dataset.json").read_text())
    with nnunet_environment(folders):
        trainer = nnUNetTrainer(
            plans=plans, configuration=configuration, fold=fold, dataset_json=dataset, device=device
        )
    settings.apply(trainer)
    return trainer


EpochHook = Callable[["nnUNetTrainer"], None]


class TrainingStoppedError(Exception):
    """Raised by an epoch hook to stop a run after its latest checkpoint (see ``stop_training``)."""


def _add_epoch_hook(trainer: nnUNetTrainer, hook: EpochHook) -> None:
    """Run ``hook(trainer)`` after the trainer's own ``on_epoch_end``."""
    original = trainer.on_epoch_end

    def on_epoch_end() -> None:
        original()
        hook(trainer)

    trainer.on_epoch_end = on_epoch_end


def stop_training(trainer: nnUNetTrainer) -> NoReturn:
    """Save ``checkpoint_latest.pth``, stop the data loaders and raise ``TrainingStoppedError``.

    Called from an epoch hook; ``train(continue_training=True)`` later resumes from the
    checkpoint (the epoch counter already counts the finished epoch).
    """
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_latest.pth"))
    for name in ("dataloader_train", "dataloader_val"):
        loader = getattr(trainer, name, None)
        finish = getattr(loader, "_finish", None)
        if callable(finish):
            finish()
    raise TrainingStoppedError(f"stopped after epoch {trainer.current_epoch}")


def epoch_summary(trainer: nnUNetTrainer) -> dict[str, float | int | None]:
    """Epochs done, of how many, and the last epoch's train loss and pseudo Dice."""
    logged: dict[str, list[Any]] = trainer.logger.get_checkpoint()
    losses = logged.get("train_losses") or [None]
    dice = logged.get("mean_fg_dice") or [None]
    return {
        "epoch": int(trainer.current_epoch),
        "epochs": int(trainer.num_epochs),
        "loss": None if losses[-1] is None else float(losses[-1]),
        "val_dice": None if dice[-1] is None else float(dice[-1]),
    }


def resume_checkpoint(trainer: nnUNetTrainer) -> Path | None:
    """The checkpoint a resumed training continues from (final, latest, best), if any."""
    for name in RESUME_CHECKPOINTS:
        path = Path(trainer.output_folder) / name
        if path.is_file():
            return path
    return None


def train(
    folders: NnUNetFolders,
    dataset_name: str,
    *,
    fold: Fold = "all",
    settings: TrainSettings | None = None,
    device: torch.device | str = "cpu",
    continue_training: bool = False,
    validate: bool = True,
    epoch_hook: EpochHook | None = None,
) -> Path:
    """Train one fold (``"all"``: every case, no held-out fold); returns the model folder.

    With ``continue_training`` the trainer restores its last checkpoint (epoch, weights,
    optimiser, logs) and trains on to ``settings.num_epochs``. ``validate`` runs nnU-Net's
    validation of the fold, which ``export_zip`` needs (``validation/summary.json``).
    ``epoch_hook(trainer)`` runs after each epoch's own end-of-epoch work (logging,
    checkpoints): for progress reports, and to stop the run by raising (``stop_training``).
    """
    trainer = build_trainer(
        folders,
        dataset_name,
        fold=fold,
        settings=settings or TrainSettings(),
        device=torch.device(device),
        continue_training=continue_training,
    )
    if epoch_hook is not None:
        _add_epoch_hook(trainer, epoch_hook)
    with nnunet_environment(folders):
        checkpoint = resume_checkpoint(trainer) if continue_training else None
        if checkpoint is not None:
            trainer.load_checkpoint(str(checkpoint))
        trainer.run_training()
        if validate:
            trainer.perform_actual_validation(False)
    return Path(trainer.output_folder_base)


# --------------------------------------------------------------------------- manifest, export


def label_map_from_dataset_json(dataset: dict[str, Any]) -> dict[int, int]:
    """nnU-Net label value -> canonical id, from label names written by ``raw_dataset``."""
    return {
        int(value): 0 if value == 0 else labels.by_name(name).id
        for name, value in dataset["labels"].items()
    }


def plans_geometry(
    model_folder: Path, configuration: str = CONFIGURATION
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(target spacing mm, patch size) along RAS x, y, z, from the model's plans.

    The configuration's values are in nnU-Net's transposed axis order: ``transpose_backward``
    gives SimpleITK order (z, y, x), reversed to x, y, z (the raw images were RAS).
    """
    plans = json.loads((model_folder / "plans.json").read_text())
    config = plans["configurations"][configuration]
    backward = plans["transpose_backward"]
    spacing = [float(config["spacing"][i]) for i in backward]
    patch = [int(config["patch_size"][i]) for i in backward]
    return tuple(reversed(spacing)), tuple(reversed(patch))


def model_manifest(
    model_folder: Path,
    *,
    name: str,
    version: str,
    folds: Sequence[Fold],
    root: Path | None = None,
    lineage: Lineage | None = None,
    description: str = "",
) -> Manifest:
    """The manifest of a trained model folder; weights paths relative to ``root``.

    Orientation RAS and target spacing from the plans, intensity normalisation ``none``
    (nnU-Net normalises itself), labels from dataset.json (see the inference backend).
    """
    dataset = json.loads((model_folder / "dataset.json").read_text())
    spacing, patch = plans_geometry(model_folder)
    base = root or model_folder
    weights = {
        str((model_folder / f"fold_{fold}" / CHECKPOINT).relative_to(base)): "" for fold in folds
    }
    return Manifest(
        name=name,
        version=version,
        backend=Backend.NNUNET,
        labels=label_map_from_dataset_json(dataset),
        target_spacing_mm=(spacing[0], spacing[1], spacing[2]),
        patch_size=(patch[0], patch[1], patch[2]),
        orientation="RAS",
        intensity=Intensity(normalisation="none"),
        description=description,
        lineage=lineage or Lineage(),
        weights_sha256=weights,
    )


def write_model_manifest(model_folder: Path, manifest: Manifest) -> Path:
    """Write ``spinecloud.json`` into the model folder (weights digests computed)."""
    return write_manifest(manifest, model_folder)


def export_zip(
    folders: NnUNetFolders,
    dataset_name: str,
    zip_path: Path,
    manifest: Manifest,
    *,
    folds: Sequence[Fold] = ("all",),
) -> Path:
    """nnU-Net's export zip of the model, with ``manifest`` added as ``spinecloud.json``.

    ``manifest`` lists weights relative to ``nnUNet_results`` (``model_manifest(root=
    folders.results)``), which is the zip's root; their digests are computed here.
    """
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with nnunet_environment(folders):
        export_pretrained_model(
            dataset_name,
            str(zip_path),
            configurations=(CONFIGURATION,),
            trainer=TRAINER,
            plans_identifier=PLANS,
            folds=tuple(folds),
            strict=True,
            save_checkpoints=(CHECKPOINT,),
        )
    digests = {rel: sha256_file(folders.results / rel) for rel in manifest.weights_sha256}
    final = manifest.model_copy(update={"weights_sha256": digests})
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_FILE, final.model_dump_json(indent=2))
    return zip_path
