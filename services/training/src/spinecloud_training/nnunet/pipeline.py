"""One nnU-Net v2 training run from SpineCloud cases to a servable artefact folder.

``train_nnunet`` is what ``spinecloud train --backend nnunet`` and the training worker run:

1. **Raw dataset** (``raw_dataset.write_raw_dataset``) of the training and validation cases,
   bad cases excluded with their reason; then nnU-Net's fingerprint, plans and preprocessing.
   Skipped when the work folder already holds the preprocessed dataset (a resumed run).
2. **Split.** ``splits_final.json`` makes fold 0 exactly SpineCloud's split (train / val), so
   nnU-Net's own validation of the fold is the held-out evaluation; without validation cases
   the fold is ``all``.
3. **Training** with the stock ``nnUNetTrainer`` (``train.train``), ``checkpoint_latest.pth``
   every epoch, resumed from the fold's latest checkpoint when there is one. Progress is
   reported per epoch as ``TrainingProgress`` (iteration = epoch); ``should_cancel`` is asked
   after each epoch and stops the run after a checkpoint.
4. **Artefact.** The model folder's ``plans.json``, ``dataset.json``,
   ``dataset_fingerprint.json`` and the fold's ``checkpoint_final.pth`` are copied to
   ``output_dir`` with a ``spinecloud.json`` (lineage, nnU-Net's validation Dice as metrics):
   what the inference service's nnU-Net backend serves.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spinecloud_shared.errors import InvalidInputError
from spinecloud_shared.models.manifest import Lineage, Manifest
from spinecloud_training.data import DataSplit
from spinecloud_training.nnunet.raw_dataset import (
    CASES_FILE,
    dataset_folder_name,
    write_raw_dataset,
)
from spinecloud_training.nnunet.train import (
    CHECKPOINT,
    PLANS,
    RESUME_CHECKPOINTS,
    Fold,
    NnUNetFolders,
    TrainingStoppedError,
    TrainSettings,
    epoch_summary,
    model_manifest,
    plan_and_preprocess,
    stop_training,
    train,
    write_model_manifest,
)
from spinecloud_training.segresnet import (
    CancelCallback,
    Phase,
    ProgressCallback,
    TrainingProgress,
    code_version,
    select_device,
)

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

#: The raw dataset's id inside a run's own work folder (each run has its own nnU-Net folders).
DATASET_ID = 1
DATASET_NAME = "Spine"
#: Files of the trained model folder an artefact needs besides the fold's checkpoint.
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


@dataclass(frozen=True, kw_only=True)
class NnUNetRequest:
    """An nnU-Net run: data, work folder (nnU-Net's folders inside), artefact folder."""

    data: DataSplit
    work_dir: Path
    output_dir: Path
    name: str = "spine-nnunet"
    version: str = "0.1.0"
    description: str = "nnU-Net v2 3d_fullres spine segmentation (C1-L5, sacrum) by SpineCloud"
    settings: TrainSettings = field(default_factory=TrainSettings)
    device: str | None = None
    command: str | None = None


@dataclass
class NnUNetResult:
    """How the run ended and what it produced."""

    completed: bool
    fold: Fold
    excluded: list[dict[str, Any]]
    #: nnU-Net identifier -> SpineCloud case id of the cases nnU-Net validated.
    validation_cases: dict[str, str]
    model_folder: Path
    epoch: int = 0
    artefact_dir: Path | None = None
    manifest: Manifest | None = None
    resumed_from_epoch: int | None = None
    train_seconds: float = 0.0

    def fold_dir(self) -> Path:
        """The trained fold's folder (checkpoints, ``validation/``)."""
        return self.model_folder / f"fold_{self.fold}"


def _prepare(request: NnUNetRequest, folders: NnUNetFolders, raw_name: str) -> None:
    """Raw dataset, plans and preprocessing, unless a previous attempt finished them."""
    if (folders.preprocessed / raw_name / f"{PLANS}.json").is_file():
        return
    shutil.rmtree(folders.raw / raw_name, ignore_errors=True)
    shutil.rmtree(folders.preprocessed / raw_name, ignore_errors=True)
    sources = [*request.data.train, *request.data.val]
    try:
        write_raw_dataset(sources, folders.raw, dataset_id=DATASET_ID, name=DATASET_NAME)
    except InvalidInputError as exc:
        listed = [vars(e) for e in request.data.excluded]
        raise InvalidInputError(
            f"No usable case in {request.data.description}: {exc.message}",
            excluded=listed + list(exc.details.get("excluded", [])),
        ) from exc
    plan_and_preprocess(folders, DATASET_ID)


def _split(
    request: NnUNetRequest, folders: NnUNetFolders, raw_name: str
) -> tuple[Fold, dict[str, str], list[dict[str, Any]]]:
    """Write ``splits_final.json`` (fold 0 = SpineCloud's split); returns the fold, the
    validation cases and every exclusion."""
    written = json.loads((folders.raw / raw_name / CASES_FILE).read_text())
    cases: dict[str, str] = written["cases"]
    val_ids = {s.case_id for s in request.data.val}
    val = {i: c for i, c in cases.items() if c in val_ids}
    train_ids = [i for i, c in cases.items() if c not in val_ids]
    excluded = [vars(e) for e in request.data.excluded] + list(written["excluded"])
    if not train_ids:
        raise InvalidInputError(
            f"No usable training case in {request.data.description}.", excluded=excluded
        )
    if not val:
        return "all", dict(cases), excluded
    splits = [{"train": sorted(train_ids), "val": sorted(val)}]
    (folders.preprocessed / raw_name / "splits_final.json").write_text(json.dumps(splits))
    return 0, val, excluded


class _EpochReporter:
    """Per-epoch progress and cancellation for nnU-Net's trainer."""

    def __init__(
        self, progress: ProgressCallback | None, should_cancel: CancelCallback | None
    ) -> None:
        self.progress = progress
        self.should_cancel = should_cancel
        self.started = time.monotonic()
        self.first_epoch: int | None = None
        self.last_epoch = 0

    def __call__(self, trainer: nnUNetTrainer) -> None:
        summary = epoch_summary(trainer)
        epoch, total = int(summary["epoch"] or 0), int(summary["epochs"] or 0)
        if self.first_epoch is None:
            self.first_epoch = epoch - 1
        self.last_epoch = epoch
        elapsed = time.monotonic() - self.started
        done = epoch - self.first_epoch
        eta = elapsed / done * (total - epoch) if done > 0 else None
        if self.progress is not None:
            self.progress(
                TrainingProgress(
                    phase=Phase.TRAINING,
                    iteration=epoch,
                    total_iterations=total,
                    epoch=epoch,
                    loss=summary["loss"],
                    val_dice=summary["val_dice"],
                    elapsed_s=elapsed,
                    eta_s=eta,
                )
            )
        if epoch < total and self.should_cancel is not None and self.should_cancel():
            stop_training(trainer)


def _finite(value: Any) -> float | None:
    """A number for JSON: NaN (a class absent from every validation case) becomes None."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _validation_metrics(fold_dir: Path) -> dict[str, Any]:
    """nnU-Net's validation summary of the fold: mean foreground Dice and per class."""
    path = fold_dir / "validation" / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    per_class = summary.get("mean", {})
    return {
        "val_dice_mean": _finite(summary.get("foreground_mean", {}).get("Dice")),
        "val_dice_per_label_value": {k: _finite(v.get("Dice")) for k, v in per_class.items()},
        "val_space": "nnU-Net validation of the fold (raw image grid, RAS)",
    }


def publish_artefact(
    request: NnUNetRequest, result: NnUNetResult, lineage: Lineage
) -> tuple[Path, Manifest]:
    """Copy the trained fold into ``request.output_dir`` and write its manifest."""
    out = request.output_dir
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / f"fold_{result.fold}").mkdir(parents=True)
    for name in MODEL_FILES:
        source = result.model_folder / name
        if source.is_file():
            shutil.copy2(source, staging / name)
    shutil.copy2(result.fold_dir() / CHECKPOINT, staging / f"fold_{result.fold}" / CHECKPOINT)
    manifest = model_manifest(
        staging,
        name=request.name,
        version=request.version,
        folds=[result.fold],
        lineage=lineage,
        description=request.description,
    ).model_copy(update={"metrics": _validation_metrics(result.fold_dir())})
    write_model_manifest(staging, manifest)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return out, manifest


def _lineage(request: NnUNetRequest, result: NnUNetResult) -> Lineage:
    return Lineage.model_validate(
        {
            "dataset": request.data.description,
            "split": (
                f"nnU-Net fold {result.fold}; validation: "
                + ", ".join(sorted(result.validation_cases.values()))
            ),
            "config": {
                "backend": "nnunet",
                "configuration": "3d_fullres",
                "trainer": "nnUNetTrainer",
                "fold": result.fold,
                "settings": request.settings.to_dict(),
                "device": str(select_device(request.device)),
            },
            "code_version": code_version(),
            "command": request.command,
            "excluded_cases": result.excluded,
        }
    )


def train_nnunet(
    request: NnUNetRequest,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> NnUNetResult:
    """Prepare, train (or resume) and publish an nnU-Net model; see the module docstring.

    Raises InvalidInputError (with ``details["excluded"]``) when no training case is usable.
    """
    if progress is not None:
        progress(TrainingProgress(Phase.LOADING, 0, 0, 0))
    folders = NnUNetFolders(request.work_dir)
    raw_name = dataset_folder_name(DATASET_ID, DATASET_NAME)
    _prepare(request, folders, raw_name)
    fold, val_cases, excluded = _split(request, folders, raw_name)
    result = NnUNetResult(
        completed=False,
        fold=fold,
        excluded=excluded,
        validation_cases=val_cases,
        model_folder=folders.model_folder(raw_name),
    )
    resume = any((result.fold_dir() / n).is_file() for n in RESUME_CHECKPOINTS)
    settings = request.settings
    if settings.save_every is None:
        settings = TrainSettings(**{**settings.to_dict(), "save_every": 1})
    reporter = _EpochReporter(progress, should_cancel)
    started = time.monotonic()
    try:
        train(
            folders,
            raw_name,
            fold=fold,
            settings=settings,
            device=select_device(request.device),
            continue_training=resume,
            validate=True,
            epoch_hook=reporter,
        )
    except TrainingStoppedError:
        result.epoch = reporter.last_epoch
        if progress is not None:
            progress(TrainingProgress(Phase.CANCELLED, result.epoch, 0, result.epoch))
        return result
    finally:
        result.train_seconds = time.monotonic() - started
        if resume and reporter.first_epoch is not None:
            result.resumed_from_epoch = reporter.first_epoch
    result.completed = True
    result.epoch = reporter.last_epoch
    if progress is not None:
        progress(TrainingProgress(Phase.WRITING, 0, 0, 0))
    result.artefact_dir, result.manifest = publish_artefact(
        request, result, _lineage(request, result)
    )
    if progress is not None:
        progress(TrainingProgress(Phase.FINISHED, 0, 0, 0))
    return result
