"""Pure-Python entry points: evaluate label maps, files or folders without any server::

from spinecloud_metrics import api

options = api.Options(pred_scheme="totalseg_v2")
result = api.evaluate_folders("preds/", "labels/", model="segresnet", options=options)
result.classes  # one row per case and class: status, counts, the whole panel
result.cases  # one row per case: labelling metrics and means
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinecloud_metrics import labelling
from spinecloud_metrics.inputs import CasePair, canonical_labels, on_reference_grid, pair_folders
from spinecloud_metrics.inputs import case_id as default_case_id
from spinecloud_metrics.labelmap import IndexedLabelMap
from spinecloud_metrics.panel import (
    PANEL_METRICS,
    ClassResult,
    PanelConfig,
    Status,
    evaluate_arrays,
)
from spinecloud_shared import labels
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.volume import Volume

__all__ = [
    "CaseResult",
    "Evaluation",
    "Options",
    "PanelConfig",
    "evaluate_files",
    "evaluate_folders",
    "evaluate_pairs",
    "evaluate_volumes",
]


@dataclass(frozen=True)
class CaseResult:
    """The whole panel and the labelling metrics of one case."""

    case_id: str
    classes: tuple[ClassResult, ...]
    labelling: labelling.LabellingResult

    def class_rows(self) -> list[dict[str, object]]:
        """One row per class: panel, counts, centroid distance and identification."""
        per_vertebra = {v.label: v for v in self.labelling.per_vertebra}
        rows: list[dict[str, object]] = []
        for result in self.classes:
            vertebra = per_vertebra.get(result.label)
            rows.append(
                {
                    "case_id": self.case_id,
                    **result.row(),
                    "centroid_distance_mm": vertebra.distance_mm if vertebra else float("nan"),
                    "identified": vertebra.identified if vertebra else None,
                }
            )
        return rows

    def summary(self) -> dict[str, object]:
        """One row for the case: labelling metrics and the mean of each metric over classes.

        Means are over the classes present in the reference (status present or missed), with
        missed classes counted at their value (Dice 0, infinite distances make the mean
        infinite); see ``aggregate.py`` for the substitution used in tables.
        """
        scored = [r for r in self.classes if r.status in (Status.PRESENT, Status.MISSED)]
        means = {f"mean_{m}": _mean([r.metrics[m] for r in scored]) for m in ("dice", "hd", "hd95")}
        return {
            "case_id": self.case_id,
            **self.labelling.summary(),
            "n_classes_ref": len(scored),
            "n_false_positive_classes": sum(
                r.status is Status.FALSE_POSITIVE for r in self.classes
            ),
            **means,
        }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


@dataclass(frozen=True)
class Evaluation:
    """Results of many cases of one model: long per-class table and per-case table."""

    classes: pd.DataFrame
    cases: pd.DataFrame

    @classmethod
    def from_cases(cls, results: Sequence[CaseResult], model: str = "model") -> Evaluation:
        """Tables from case results, with a ``model`` column for comparisons."""
        class_rows = [row for r in results for row in r.class_rows()]
        classes = pd.DataFrame(class_rows)
        cases = pd.DataFrame([r.summary() for r in results])
        classes.insert(0, "model", model)
        cases.insert(0, "model", model)
        return cls(classes, cases)


@dataclass(frozen=True)
class Options:
    """How to read and score label maps: their schemes, the panel settings, resampling."""

    pred_scheme: labels.Scheme | str = labels.Scheme.CANONICAL
    ref_scheme: labels.Scheme | str = labels.Scheme.CANONICAL
    config: PanelConfig = field(default_factory=PanelConfig)
    #: Resample a prediction on another grid onto the reference grid (nearest neighbour)
    #: instead of refusing it.
    resample: bool = False


def evaluate_volumes(
    pred: Volume, ref: Volume, *, case_id: str = "case", options: Options | None = None
) -> CaseResult:
    """Panel and labelling metrics of a predicted label map against a reference."""
    options = options or Options()
    pred_source = str(pred.meta.get("source", "prediction"))
    ref_source = str(ref.meta.get("source", "reference"))
    pred_map = canonical_labels(pred.array, options.pred_scheme, pred_source)
    ref_map = canonical_labels(ref.array, options.ref_scheme, ref_source)
    if not pred.same_grid(ref):
        moved = on_reference_grid(
            pred.with_array(pred_map.array, source=pred_source), ref, resample=options.resample
        )
        pred_map = IndexedLabelMap.index(moved.array)
    results = evaluate_arrays(pred_map, ref_map, ref.spacing_mm, options.config)
    wanted = set(options.config.classes)
    ref_ctd = labelling.centroids(ref_map, ref.affine_ras)
    pred_ctd = labelling.centroids(pred_map, ref.affine_ras)
    labelled = labelling.identification(
        {k: v for k, v in ref_ctd.items() if k in wanted},
        {k: v for k, v in pred_ctd.items() if k in wanted},
    )
    return CaseResult(case_id, tuple(results), labelled)


def evaluate_files(
    pred_path: str | Path,
    ref_path: str | Path,
    *,
    case_id: str | None = None,
    options: Options | None = None,
) -> CaseResult:
    """Evaluate one pair of NIfTI label maps; the case id defaults to the reference's name."""
    pred, ref = read_nifti(pred_path), read_nifti(ref_path)
    return evaluate_volumes(
        pred, ref, case_id=case_id or default_case_id(Path(ref_path)), options=options
    )


def evaluate_pairs(
    pairs: Sequence[CasePair],
    *,
    model: str = "model",
    options: Options | None = None,
    progress: Callable[[CasePair], None] | None = None,
) -> Evaluation:
    """Evaluate paired files; ``progress`` is called after each case (for a progress bar)."""
    results = []
    for pair in pairs:
        results.append(evaluate_files(pair.pred, pair.ref, case_id=pair.case_id, options=options))
        if progress:
            progress(pair)
    return Evaluation.from_cases(results, model)


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    model: str = "model",
    options: Options | None = None,
) -> Evaluation:
    """Evaluate every prediction in ``pred_dir`` against the same-named file in ``ref_dir``."""
    return evaluate_pairs(pair_folders(pred_dir, ref_dir), model=model, options=options)


#: Per-class metric names, in report order (re-exported for callers building tables).
METRICS = PANEL_METRICS


def headline_scores(pred_dir: str | Path, ref_dir: str | Path, model: str) -> dict[str, Any]:
    """What a training run reports before and after: mean Dice per case, HD95, identification.

    Offered to other services through the ``spinecloud.evaluators`` entry point (name
    ``panel``), so that training can use the panel when both are installed without importing
    this package. Returns ``{"per_case": {case_id: mean Dice}, "extra": {"mean_hd95": ...,
    "id_rate": ..., "d_mean": ...}}``; non-finite values are left out or None.
    """
    cases = evaluate_folders(pred_dir, ref_dir, model=model).cases
    per_case = {
        str(row["case_id"]): float(row["mean_dice"])
        for _, row in cases.iterrows()
        if np.isfinite(float(row["mean_dice"]))
    }
    extra: dict[str, float | None] = {}
    for column in ("mean_hd95", "id_rate", "d_mean"):
        if column in cases.columns:
            value = float(cases[column].mean())
            extra[column] = value if np.isfinite(value) else None
    return {"per_case": per_case, "extra": extra}
