"""Fine-tune a SegResNet bundle on a dataset of clinicians' corrections, and say if it helped.

The loop (``finetune``):

1. **Parent.** The bundle to start from (``spinecloud.json`` verified, MONAI backend). Its
   network comes from its ``configs/inference.json`` (what its weights fit), its grid, patch and
   intensity window from its manifest, and its training hyper-parameters from the preset in its
   lineage (the ``demo`` preset when it has none).
2. **Training.** The SegResNet trainer (``segresnet.train_segresnet``) starts from the parent's
   ``models/model.pt`` (``TrainRequest.init_weights``) with the learning rate lowered
   (``lr_factor``, 0.1 by default), held constant, for a few iterations on the dataset's
   ``train`` split plus an optional replay sample of the original data (``replay``); the
   weights written are the last ones (no best-checkpoint selection on the few cases).
3. **Bundle.** A new version of the same model (``version``: the parent's patch number plus one
   unless given) whose lineage names the parent (``name@version``) and the corrections'
   provenance: case and study counts and SHA-256 digests of the study UIDs
   (``CorrectionDataset.provenance``), never a patient id or a raw UID.
4. **Before/after.** Parent and new model segment each ``val`` case on its own CT grid (RAS,
   model spacing, sliding window, nearest-neighbour back to the CT grid); predictions and
   references are written as NIfTI folders and scored by an ``Evaluator``. The default is the
   metrics service's panel (the ``spinecloud.evaluators`` entry point ``panel``) when that
   package is installed beside training, else a plain Dice. The headline is the mean over
   cases of the mean Dice over the classes present in each reference; the new version is *not
   worse* when its headline is at least the parent's minus ``margin`` (0.01) and *improved*
   when it is higher. The held-out cases are the dataset's ``val`` split plus ``holdout``
   (cases of the original data the parent was not trained on), so that a version that learns
   the corrections but forgets the original data does not pass. Both numbers and the verdict
   go into the new manifest's ``metrics.finetune``; registering or promoting it is the
   registry's decision.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from spinecloud_shared.errors import InvalidInputError, SpineCloudError
from spinecloud_shared.models.manifest import Backend, Manifest, read_manifest, write_manifest
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.resample import Interpolation, resample_like, resample_to_spacing
from spinecloud_shared.volume import Volume
from spinecloud_training import bundle
from spinecloud_training.corrections import MANIFEST_FILE as CORRECTIONS_FILE
from spinecloud_training.data import CaseSource, DataSplit, layout_split, scale_window
from spinecloud_training.presets import DEMO, AugmentConfig, NetworkConfig, Preset, Scheduler
from spinecloud_training.segresnet import (
    CancelCallback,
    ProgressCallback,
    TrainingResult,
    TrainRequest,
    predict_labels,
    select_device,
    train_segresnet,
)

__all__ = [
    "EvalScores",
    "Evaluator",
    "FinetuneRequest",
    "FinetuneResult",
    "bump_version",
    "default_evaluator",
    "dice_evaluator",
    "finetune",
    "metrics_panel_evaluator",
    "parent_preset",
    "predict_on_grid",
]

logger = logging.getLogger(__name__)

#: Entry-point group through which an installed metrics service offers its evaluator.
EVALUATOR_GROUP = "spinecloud.evaluators"

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class EvalScores:
    """One model's scores on the validation cases."""

    evaluator: str
    #: Mean over cases of each case's mean Dice over the classes in its reference.
    mean_dice: float | None
    per_case_dice: dict[str, float]
    #: Other headline numbers the evaluator gives (e.g. HD95, identification rate).
    extra: dict[str, float | None] = field(default_factory=dict)


#: Scores predictions in a folder against same-named references: (pred_dir, ref_dir, model).
Evaluator = Callable[[Path, Path, str], EvalScores]


@dataclass(frozen=True, kw_only=True)
class FinetuneRequest:
    """A fine-tuning run: parent bundle, dataset, where the new bundle goes, and how hard."""

    parent: Path
    dataset: Path
    output_dir: Path
    work_dir: Path | None = None
    iterations: int = 60
    lr_factor: float = 0.1
    version: str | None = None
    name: str | None = None
    replay: Sequence[CaseSource] = ()
    #: Held-out cases of the original data, scored before/after beside the dataset's ``val``.
    holdout: Sequence[CaseSource] = ()
    margin: float = 0.01
    seed: int = 0
    device: str | None = None
    command: str | None = None

    @property
    def scratch(self) -> Path:
        """Checkpoints and evaluation files: ``work_dir`` or ``<output_dir>.finetune``."""
        return self.work_dir or self.output_dir.with_name(self.output_dir.name + ".finetune")


@dataclass
class FinetuneResult:
    """What the run produced and whether it helped."""

    training: TrainingResult
    parent: str
    before: EvalScores | None = None
    after: EvalScores | None = None
    margin: float = 0.01
    bundle_dir: Path | None = None
    manifest: Manifest | None = None

    @property
    def delta(self) -> float | None:
        """After minus before (mean Dice), when both were measured."""
        if self.before is None or self.after is None:
            return None
        if self.before.mean_dice is None or self.after.mean_dice is None:
            return None
        return self.after.mean_dice - self.before.mean_dice

    @property
    def not_worse(self) -> bool | None:
        """After >= before - margin; None when not measured."""
        return None if self.delta is None else self.delta >= -self.margin

    @property
    def improved(self) -> bool | None:
        """After > before; None when not measured."""
        return None if self.delta is None else self.delta > 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready verdict, as stored in the manifest's ``metrics.finetune``."""
        return {
            "parent": self.parent,
            "metric": "mean over validation cases of mean Dice over reference classes",
            "evaluator": self.after.evaluator if self.after else None,
            "val_cases": len(self.after.per_case_dice) if self.after else 0,
            "before": _rounded(self.before.mean_dice if self.before else None),
            "after": _rounded(self.after.mean_dice if self.after else None),
            "delta": _rounded(self.delta),
            "margin": self.margin,
            "not_worse": self.not_worse,
            "improved": self.improved,
            "before_extra": self.before.extra if self.before else {},
            "after_extra": self.after.extra if self.after else {},
            "iterations": self.training.iteration,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# --------------------------------------------------------------------------- parent and preset


def bump_version(version: str) -> str:
    """The next patch version: '0.1.0' -> '0.1.1' (any suffix dropped)."""
    match = _SEMVER.match(version)
    if match is None:
        raise InvalidInputError(
            f"Cannot bump version {version!r} (not MAJOR.MINOR.PATCH); give --version."
        )
    major, minor, patch = (int(g) for g in match.groups())
    return f"{major}.{minor}.{patch + 1}"


def _preset_from_lineage(config: Mapping[str, Any]) -> Preset | None:
    """The preset recorded in a bundle's lineage (``Preset.to_dict``), if there is one."""
    saved = config.get("preset")
    if not isinstance(saved, dict):
        return None
    known = {f.name for f in fields(Preset)}
    values = {k: v for k, v in saved.items() if k in known}
    for key in ("spacing_mm", "patch_size", "window_hu", "pos_neg"):
        if key in values:
            values[key] = tuple(values[key])
    if isinstance(values.get("augment"), dict):
        values["augment"] = AugmentConfig(**values["augment"])
    values.pop("network", None)
    if "scheduler" in values:
        values["scheduler"] = Scheduler(values["scheduler"])
    try:
        return Preset(**values)
    except (TypeError, ValueError):
        return None


def _network_from_bundle(folder: Path) -> NetworkConfig:
    """The SegResNet configuration the bundle's weights fit (``network_def``)."""
    definition = json.loads((folder / bundle.INFERENCE_FILE).read_text())["network_def"]
    norm = definition.get("norm")
    groups = int(norm[1]["num_groups"]) if isinstance(norm, list) and len(norm) == 2 else 8
    return NetworkConfig(
        init_filters=int(definition.get("init_filters", 8)),
        blocks_down=tuple(int(b) for b in definition.get("blocks_down", (1, 2, 2, 4))),
        blocks_up=tuple(int(b) for b in definition.get("blocks_up", (1, 1, 1))),
        dropout_prob=float(definition.get("dropout_prob") or 0.0),
        norm_groups=groups,
    )


def parent_preset(folder: Path, manifest: Manifest) -> Preset:
    """The parent's training preset, with its network, grid, patch and window from the bundle."""
    base = _preset_from_lineage(manifest.lineage.config) or DEMO
    return replace(
        base,
        network=_network_from_bundle(folder),
        spacing_mm=manifest.target_spacing_mm,
        patch_size=manifest.patch_size,
        window_hu=manifest.intensity.window_hu,
    )


def finetune_preset(parent: Preset, request: FinetuneRequest) -> Preset:
    """The parent's preset with a lower constant learning rate and a short run."""
    if request.iterations < 1 or request.lr_factor <= 0:
        raise InvalidInputError("Fine-tuning needs iterations >= 1 and a positive lr_factor.")
    return replace(
        parent,
        name=f"{parent.name}-finetune",
        learning_rate=parent.learning_rate * request.lr_factor,
        scheduler=Scheduler.CONSTANT,
        iterations=request.iterations,
        val_every=request.iterations,
        checkpoint_every=request.iterations,
        num_workers=0,
        seed=request.seed,
        # The processes the parent trained with say nothing about this machine's GPUs.
        world_size=None,
    )


# --------------------------------------------------------------------------- prediction


def _channel_ids(channels: Mapping[int, int]) -> npt.NDArray[np.uint8]:
    table = np.zeros(max(channels) + 1, dtype=np.uint8)
    for channel, label_id in channels.items():
        table[channel] = label_id
    return table


def predict_on_grid(
    model: torch.nn.Module,
    ct: Volume,
    preset: Preset,
    channels: Mapping[int, int],
    device: torch.device,
) -> Volume:
    """Canonical label map of ``ct`` on its own grid: RAS, model spacing, sliding window,
    channels to canonical ids, nearest neighbour back onto the CT's grid."""
    ct_ras = ct.with_array(ct.array.astype(np.float32)).reoriented("RAS")
    ct_model = resample_to_spacing(ct_ras, preset.spacing_mm, fill_value=preset.window_hu[0])
    image = torch.from_numpy(scale_window(ct_model.array, preset.window_hu)[None, None])
    model.eval()
    predicted = predict_labels(model, image, preset, device)[0, 0].cpu().numpy()
    canonical = _channel_ids(channels)[predicted.astype(np.intp)]
    on_ct = resample_like(ct_model.with_array(canonical), ct, interpolation=Interpolation.NEAREST)
    return on_ct.with_array(on_ct.array.astype(np.uint8), source="prediction")


# --------------------------------------------------------------------------- evaluators


def _case_dice(pred: npt.NDArray[Any], ref: npt.NDArray[Any]) -> float | None:
    """Mean Dice over the classes present in ``ref`` (a missed class counts 0)."""
    scores = []
    for label_id in (int(v) for v in np.unique(ref) if v):
        p, r = pred == label_id, ref == label_id
        scores.append(2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum()))
    return float(np.mean(scores)) if scores else None


def _nifti_cases(folder: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".nii.gz"): p for p in sorted(folder.glob("*.nii.gz"))}


def dice_evaluator(pred_dir: Path, ref_dir: Path, model: str) -> EvalScores:
    """Plain Dice (no metrics service): per case, mean over the reference's classes."""
    preds, refs = _nifti_cases(pred_dir), _nifti_cases(ref_dir)
    per_case: dict[str, float] = {}
    for case_id, ref_path in refs.items():
        if case_id not in preds:
            raise InvalidInputError(f"{model}: no prediction for case {case_id}.")
        ref = read_nifti(ref_path)
        pred = read_nifti(preds[case_id])
        ref.require_same_grid(pred, what="prediction and reference")
        dice = _case_dice(pred.array, ref.array)
        if dice is not None:
            per_case[case_id] = dice
    mean = float(np.mean(list(per_case.values()))) if per_case else None
    return EvalScores("dice", mean, per_case)


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def metrics_panel_evaluator() -> Evaluator | None:
    """The metrics service's panel, when installed beside training; else None.

    Services never import each other: the metrics package offers ``headline_scores`` through
    the ``spinecloud.evaluators`` entry point (name ``panel``), found here like the Celery
    tasks and CLI commands are. The training image may install ``spinecloud-metrics`` (it
    carries no torch); without it, ``dice_evaluator``.
    """
    found = entry_points(group=EVALUATOR_GROUP, name="panel")
    if not found:
        return None
    score = next(iter(found)).load()

    def evaluate(pred_dir: Path, ref_dir: Path, model: str) -> EvalScores:
        result = score(pred_dir, ref_dir, model)
        per_case = {str(k): float(v) for k, v in result["per_case"].items()}
        mean = float(np.mean(list(per_case.values()))) if per_case else None
        return EvalScores("spinecloud_metrics", mean, per_case, dict(result["extra"]))

    return evaluate


def default_evaluator() -> Evaluator:
    """The metrics service's panel when available, else plain Dice."""
    return metrics_panel_evaluator() or dice_evaluator


# --------------------------------------------------------------------------- the loop


def _write_predictions(
    folder: Path,
    model: torch.nn.Module,
    cases: Sequence[tuple[str, Volume]],
    preset: Preset,
    channels: Mapping[int, int],
    device: torch.device,
) -> None:
    for case_id, ct in cases:
        label_map = predict_on_grid(model, ct, preset, channels, device)
        write_nifti(label_map, folder / f"{case_id}.nii.gz", dtype=np.uint8)


def _before_after(
    request: FinetuneRequest,
    data: DataSplit,
    preset: Preset,
    channels: Mapping[int, int],
    evaluator: Evaluator,
    bundle_dir: Path,
) -> tuple[EvalScores, EvalScores] | None:
    """Scores of the parent and the new bundle on the validation cases (None without any)."""
    device = select_device(request.device)
    cases: list[tuple[str, Volume]] = []
    folder = request.scratch / "evaluation"
    for source in [*data.val, *request.holdout]:
        try:
            ct, reference = source.load()
        except SpineCloudError as exc:
            logger.warning("held-out case %s left out: %s", source.case_id, exc.code)
            continue
        write_nifti(reference, folder / "reference" / f"{source.case_id}.nii.gz", dtype=np.uint8)
        cases.append((source.case_id, ct))
    if not cases:
        return None
    scores = []
    for name, model_dir in (("before", request.parent), ("after", bundle_dir)):
        model = bundle.load_network(model_dir, device)
        _write_predictions(folder / name, model, cases, preset, channels, device)
        scores.append(evaluator(folder / name, folder / "reference", name))
    return scores[0], scores[1]


def _corrections_provenance(dataset: Path) -> dict[str, Any] | None:
    path = dataset / CORRECTIONS_FILE
    if not path.is_file():
        return None
    provenance = json.loads(path.read_text()).get("provenance")
    return provenance if isinstance(provenance, dict) else None


def _update_bundle(
    folder: Path, manifest: Manifest, parent: Manifest, result: FinetuneResult, dataset: Path
) -> Manifest:
    """Lineage (parent, corrections) and the before/after verdict into the new manifest."""
    lineage = manifest.lineage.model_dump()
    lineage["parent"] = parent.ref
    lineage["corrections"] = _corrections_provenance(dataset)
    # The trainer ran without validation cases (they are scored here), so its empty
    # validation fields give way to the after-scores on the CT grids.
    metrics = {
        k: v
        for k, v in manifest.metrics.items()
        if not k.startswith("val_") and k != "best_iteration"
    }
    if result.after is not None:
        metrics["val_dice_mean"] = _rounded(result.after.mean_dice)
        metrics["val_cases"] = len(result.after.per_case_dice)
        metrics["val_space"] = "source CT grids; see finetune (mean over cases of mean Dice)"
    metrics["finetune"] = result.summary()
    updated = manifest.model_copy(
        update={
            "lineage": type(manifest.lineage).model_validate(lineage),
            "metrics": metrics,
            "description": f"{parent.description} Fine-tuned from {parent.ref} on corrections.",
        }
    )
    write_manifest(updated, folder)
    metadata_path = folder / bundle.METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    metadata["changelog"] = {
        manifest.version: f"fine-tuned from {parent.ref} on clinicians' corrections"
    }
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return read_manifest(folder, verify=True)


def finetune(
    request: FinetuneRequest,
    *,
    evaluator: Evaluator | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> FinetuneResult:
    """Fine-tune the parent bundle on the dataset and evaluate before/after (module docstring).

    Raises InvalidInputError (no usable training case, a parent that is not a MONAI bundle or
    whose weights do not fit). A cancelled run returns without a bundle (``training.completed``
    False).
    """
    parent = read_manifest(request.parent, verify=True)
    if parent.backend is not Backend.MONAI_BUNDLE:
        raise InvalidInputError(f"{parent.ref} is a {parent.backend} model; only MONAI bundles.")
    preset = finetune_preset(parent_preset(request.parent, parent), request)
    split = layout_split(request.dataset)
    data = replace(
        split,
        description=f"corrections ({split.description}) from {parent.ref}"
        + (f" + {len(request.replay)} replay cases" if request.replay else ""),
        train=[*split.train, *request.replay],
        # The validation cases are scored once, before and after, on their CT grids (below);
        # the trainer's own validation pass would only repeat the "after" half on the model grid.
        val=[],
    )
    train_request = TrainRequest(
        preset=preset,
        data=data,
        output_dir=request.output_dir,
        work_dir=request.scratch / "checkpoints",
        name=request.name or parent.name,
        version=request.version or bump_version(parent.version),
        description=parent.description,
        channels=dict(parent.labels),
        command=request.command,
        device=request.device,
        init_weights=request.parent / bundle.WEIGHTS_FILE,
    )
    training = train_segresnet(train_request, progress=progress, should_cancel=should_cancel)
    result = FinetuneResult(training=training, parent=parent.ref, margin=request.margin)
    if not training.completed or training.manifest is None:
        return result
    scores = _before_after(
        request, split, preset, parent.labels, evaluator or default_evaluator(), request.output_dir
    )
    if scores is not None:
        result.before, result.after = scores
    result.bundle_dir = request.output_dir
    result.manifest = _update_bundle(
        request.output_dir, training.manifest, parent, result, request.dataset
    )
    logger.info("fine-tuned %s -> %s: %s", parent.ref, result.manifest.ref, result.summary())
    return result
