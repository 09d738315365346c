"""The per-case, per-class metric panel: every class's crop, confusion matrix and surfaces once.

For each class the bounding boxes of the prediction and the reference (found for all classes
in one pass, ``scipy.ndimage.find_objects``) are padded by one voxel; masks, counts and
surfaces are computed on those crops only, true positives on their overlap. True negatives are
the remaining voxels of the whole volume, so the confusion matrix is still exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from spinecloud_metrics.labelmap import Box, IndexedLabelMap, indexed
from spinecloud_metrics.overlap import OVERLAP_METRICS, Confusion, overlap_metrics
from spinecloud_metrics.surface import (
    DISTANCE_METRICS,
    Spacing,
    SurfaceDistances,
    both_empty_metrics,
    distance_metrics,
    one_sided_metrics,
    surface_elements,
    surface_points,
)
from spinecloud_shared import labels
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError

#: Every per-class metric of the panel, in report order.
PANEL_METRICS: tuple[str, ...] = OVERLAP_METRICS + DISTANCE_METRICS

LabelArray = npt.NDArray[np.uint8]


class SurfaceMode(StrEnum):
    """Which surface the distance metrics use (docs/metrics.md, "Surfaces")."""

    VOXELS = "voxels"  # boundary voxels, each counted once (MONAI default, medpy)
    FACES = "faces"  # marching-cubes surface elements weighted by area (DeepMind)


class Status(StrEnum):
    """How a class appears in a case."""

    PRESENT = "present"  # in both prediction and reference
    MISSED = "missed"  # in the reference only (empty prediction)
    FALSE_POSITIVE = "false_positive"  # in the prediction only (empty reference)
    ABSENT = "absent"  # in neither


@dataclass(frozen=True)
class PanelConfig:
    """Settings of the panel; the defaults are those documented in docs/metrics.md."""

    classes: tuple[int, ...] = labels.STANDARD_IDS
    #: Tolerance of the normalised surface distance (surface Dice), mm.
    nsd_tolerance_mm: float = 1.0
    #: Tolerance of boundary F1, mm.
    boundary_tolerance_mm: float = 2.0
    #: Percentile of the robust Hausdorff distance.
    hd_percentile: float = 95.0
    #: What a surface is: boundary voxels (MONAI, medpy) or area-weighted faces (DeepMind).
    surface: SurfaceMode = SurfaceMode.VOXELS
    #: Neighbourhood of the surface erosion (voxel surfaces): 1 = 6-connectivity, 3 = 26.
    connectivity: int = 1
    #: Score a class absent from both masks as perfect (1 / 0 mm) instead of NaN.
    both_empty_perfect: bool = False

    def __post_init__(self) -> None:
        for label in self.classes:
            labels.by_id(label)  # LabelError for an id the canonical scheme does not know
        if min(self.nsd_tolerance_mm, self.boundary_tolerance_mm) < 0:
            raise InvalidInputError("Surface tolerances must not be negative.")
        if not 0 <= self.hd_percentile <= 100:
            raise InvalidInputError(
                f"HD percentile must lie in [0, 100], got {self.hd_percentile}."
            )
        object.__setattr__(self, "surface", SurfaceMode(self.surface))
        if self.connectivity not in (1, 2, 3):
            raise InvalidInputError(f"Connectivity must be 1, 2 or 3, got {self.connectivity}.")


@dataclass(frozen=True)
class ClassResult:
    """The panel of one class in one case."""

    label: int
    status: Status
    confusion: Confusion
    metrics: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float | int | str]:
        """A flat table row: label, name, region, status, counts and every metric."""
        vertebra = labels.by_id(self.label)
        c = self.confusion
        return {
            "label": self.label,
            "name": vertebra.name,
            "region": str(vertebra.region),
            "status": str(self.status),
            "n_pred": c.n_pred,
            "n_ref": c.n_ref,
            "tp": c.tp,
            "fp": c.fp,
            "fn": c.fn,
            "tn": c.tn,
            **self.metrics,
        }


def _padded(box: Box, shape: tuple[int, ...], pad: int = 1) -> Box:
    i, j, k = (
        slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape, strict=True)
    )
    return i, j, k


def _intersection(a: Box, b: Box) -> Box | None:
    parts = [slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True)]
    if any(p.start >= p.stop for p in parts):
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class _ClassCrop:
    """One class of one label map, cropped to its own bounding box padded by one voxel."""

    mask: npt.NDArray[np.bool_]
    box: Box

    @classmethod
    def of(cls, label_map: LabelArray, label: int, box: Box | None) -> _ClassCrop | None:
        if box is None:
            return None
        padded = _padded(box, label_map.shape)
        return cls(label_map[padded] == label, padded)

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def offset(self) -> tuple[int, int, int]:
        return self.box[0].start, self.box[1].start, self.box[2].start


def _true_positives(pred: _ClassCrop, ref: _ClassCrop, pred_map: LabelArray, label: int) -> int:
    """Voxels of the class in both maps: only the overlap of the two boxes can hold them."""
    common = _intersection(pred.box, ref.box)
    if common is None:
        return 0
    ref_part = ref.mask[
        tuple(slice(c.start - o, c.stop - o) for c, o in zip(common, ref.offset, strict=True))
    ]
    return int(np.count_nonzero(ref_part & (pred_map[common] == label)))


def _status(n_pred: int, n_ref: int) -> Status:
    if n_pred and n_ref:
        return Status.PRESENT
    if n_ref:
        return Status.MISSED
    if n_pred:
        return Status.FALSE_POSITIVE
    return Status.ABSENT


def _absent(label: int, total: int, config: PanelConfig) -> ClassResult:
    confusion = Confusion(0, 0, 0, total)
    if config.both_empty_perfect:
        overlap = overlap_metrics(confusion) | {
            "dice": 1.0,
            "iou": 1.0,
            "precision": 1.0,
            "sensitivity": 1.0,
            "kappa": 1.0,
            "auc": 1.0,
        }
    else:
        overlap = dict.fromkeys(OVERLAP_METRICS, math.nan)
    surface = both_empty_metrics(perfect=config.both_empty_perfect)
    return ClassResult(label, Status.ABSENT, confusion, overlap | surface)


def _distances(
    pred: _ClassCrop, ref: _ClassCrop, spacing_mm: Spacing, config: PanelConfig
) -> SurfaceDistances:
    if config.surface is SurfaceMode.FACES:
        (pred_points, pred_areas), (ref_points, ref_areas) = (
            surface_elements(c.mask, c.offset, spacing_mm) for c in (pred, ref)
        )
        return SurfaceDistances.between_points(pred_points, ref_points, pred_areas, ref_areas)
    pred_points, ref_points = (
        surface_points(c.mask, c.offset, spacing_mm, connectivity=config.connectivity)
        for c in (pred, ref)
    )
    return SurfaceDistances.between_points(pred_points, ref_points)


def _surface_metrics(
    pred: _ClassCrop, ref: _ClassCrop, spacing_mm: Spacing, config: PanelConfig
) -> dict[str, float]:
    return distance_metrics(
        _distances(pred, ref, spacing_mm, config),
        nsd_tolerance_mm=config.nsd_tolerance_mm,
        boundary_tolerance_mm=config.boundary_tolerance_mm,
        percentile=config.hd_percentile,
    )


def _class_result(
    label: int,
    *,
    pred: _ClassCrop | None,
    ref: _ClassCrop | None,
    pred_map: LabelArray,
    spacing_mm: Spacing,
    config: PanelConfig,
) -> ClassResult:
    n_pred = pred.count if pred else 0
    n_ref = ref.count if ref else 0
    tp = _true_positives(pred, ref, pred_map, label) if pred and ref else 0
    confusion = Confusion(tp, n_pred - tp, n_ref - tp, int(pred_map.size) - n_pred - n_ref + tp)
    status = _status(n_pred, n_ref)
    if pred and ref:
        surface = _surface_metrics(pred, ref, spacing_mm, config)
    else:
        surface = one_sided_metrics()
    return ClassResult(label, status, confusion, overlap_metrics(confusion) | surface)


def evaluate_arrays(
    pred: LabelArray | IndexedLabelMap,
    ref: LabelArray | IndexedLabelMap,
    spacing_mm: Sequence[float],
    config: PanelConfig | None = None,
) -> list[ClassResult]:
    """The panel of every configured class for one case.

    ``pred`` and ``ref`` are canonical label maps (uint8, or already indexed) on the same grid;
    ``spacing_mm`` is the voxel size along each array axis. Validation of ids and geometry
    happens before this (``api.py``); here only the shapes are checked.
    """
    pred_map, ref_map = indexed(pred), indexed(ref)
    config = config or PanelConfig()
    if pred_map.shape != ref_map.shape or len(pred_map.shape) != 3:
        raise GeometryMismatchError(
            f"Prediction and reference must be 3D arrays of one shape, got {pred_map.shape} "
            f"and {ref_map.shape}."
        )
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    results = []
    for label in config.classes:
        pred_crop = _ClassCrop.of(pred_map.array, label, pred_map.box(label))
        ref_crop = _ClassCrop.of(ref_map.array, label, ref_map.box(label))
        if pred_crop is None and ref_crop is None:
            results.append(_absent(label, int(pred_map.array.size), config))
        else:
            results.append(
                _class_result(
                    label,
                    pred=pred_crop,
                    ref=ref_crop,
                    pred_map=pred_map.array,
                    spacing_mm=spacing,
                    config=config,
                )
            )
    return results
