"""Surfaces and surface distances of one class, and every metric derived from them.

A class's surface is the set of its voxels that have at least one face neighbour
(6-connectivity, ``connectivity=1``) outside the class; voxels outside the volume count as
outside, so a mask touching the border of the volume has a surface there. This is the
definition of MONAI (``get_mask_edges``) and medpy (``__surface_distances``).

Each surface is found on its own mask's bounding box (padded by one voxel). The distance from
each surface voxel to the nearest voxel of the other surface is then found once per direction,
in millimetres (voxel indices times the spacing), by a k-d tree query over the surface voxels:
the exact Euclidean nearest neighbour, identical to reading a distance transform
(``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``) at those voxels, but
with a cost that grows with the surface size instead of the box volume (a stray fragment far
from the vertebra would otherwise make the box, and the transform, huge). The directed
distances ``pred -> ref`` and ``ref -> pred`` are the single source of HD, HD95, ASSD, NSD and
boundary F1: nothing is recomputed per metric.

``surface="faces"`` (``PanelConfig.surface``) uses DeepMind surface-distance's definition
instead: surface elements on the voxel-corner grid where the 2x2x2 neighbourhood is mixed,
each weighted by its marching-cubes area; every metric is then area-weighted, as DeepMind's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree
from surface_distance import lookup_tables as deepmind_tables

DISTANCE_METRICS: tuple[str, ...] = ("boundary_f1", "hd", "hd95", "assd", "nsd")

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
Spacing = tuple[float, float, float]


@cache
def _structure(connectivity: int) -> npt.NDArray[np.bool_]:
    return ndimage.generate_binary_structure(3, connectivity)


def surface(mask: BoolArray, *, connectivity: int = 1) -> BoolArray:
    """Voxels of ``mask`` with a neighbour (at ``connectivity``) outside it or outside the array."""
    if not mask.any():
        return np.zeros_like(mask)
    eroded = ndimage.binary_erosion(mask, structure=_structure(connectivity), border_value=0)
    return mask & ~eroded


def surface_points(
    mask: BoolArray, offset: tuple[int, int, int], spacing_mm: Spacing, *, connectivity: int = 1
) -> FloatArray:
    """Positions (n, 3) in mm, along the array axes, of the surface voxels of a cropped mask.

    ``offset`` is the index of the crop's first voxel in the whole volume, so points of masks
    cropped differently share one frame.
    """
    ijk = np.argwhere(surface(mask, connectivity=connectivity))
    return (ijk + np.asarray(offset)) * np.asarray(spacing_mm, dtype=np.float64)


def nearest_distances(target: FloatArray, at: FloatArray) -> FloatArray:
    """Distance in mm from each point of ``at`` to the nearest point of ``target`` (non-empty)."""
    distances, _ = cKDTree(target, leafsize=32).query(at, k=1)
    return np.asarray(distances, dtype=np.float64)


@cache
def surfel_area_table(spacing_mm: Spacing) -> FloatArray:
    """Area (mm²) of the surface elements of each 2x2x2 neighbourhood code at this spacing.

    DeepMind's own marching-cubes table, so that ``surface="faces"`` reproduces their surface
    elements exactly.
    """
    table = deepmind_tables.create_table_neighbour_code_to_surface_area(spacing_mm)
    return np.asarray(table, dtype=np.float64)


def surface_elements(
    mask: BoolArray, offset: tuple[int, int, int], spacing_mm: Spacing
) -> tuple[FloatArray, FloatArray]:
    """Face-based surface elements of a cropped mask (DeepMind's definition): positions in mm
    of the voxel corners whose 2x2x2 neighbourhood is mixed, and the area each stands for.

    The crop is padded by one empty plane at its high side, so that every corner around the
    mask is seen; outside the volume counts as outside the mask.
    """
    padded = np.pad(mask.astype(np.uint8), ((0, 1), (0, 1), (0, 1)))
    kernel = deepmind_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    codes = ndimage.correlate(padded, kernel, mode="constant", cval=0)
    border = (codes != 0) & (codes != 255)
    corners = np.argwhere(border) + np.asarray(offset) - 0.5  # corner between voxels i-1, i
    areas = surfel_area_table(spacing_mm)[codes[border]]
    return corners * np.asarray(spacing_mm, dtype=np.float64), areas


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances (mm) of one class: prediction -> reference and back.

    ``pred_weights`` / ``ref_weights`` are the areas of face-based surface elements; ``None``
    for voxel surfaces, where every surface voxel counts once.
    """

    pred_to_ref: FloatArray
    ref_to_pred: FloatArray
    pred_weights: FloatArray | None = None
    ref_weights: FloatArray | None = None

    @classmethod
    def between_points(
        cls, pred_points: FloatArray, ref_points: FloatArray,
        pred_weights: FloatArray | None = None, ref_weights: FloatArray | None = None,
    ) -> SurfaceDistances:  # fmt: skip
        """Surface distances of two non-empty surfaces given as points in mm."""
        return cls(
            pred_to_ref=nearest_distances(ref_points, pred_points),
            ref_to_pred=nearest_distances(pred_points, ref_points),
            pred_weights=pred_weights,
            ref_weights=ref_weights,
        )

    @classmethod
    def between(
        cls, pred: BoolArray, ref: BoolArray, spacing_mm: Spacing, *, connectivity: int = 1
    ) -> SurfaceDistances:
        """Voxel-surface distances of two non-empty masks on the same grid."""
        origin = (0, 0, 0)
        return cls.between_points(
            surface_points(pred, origin, spacing_mm, connectivity=connectivity),
            surface_points(ref, origin, spacing_mm, connectivity=connectivity),
        )

    def weights(self) -> tuple[FloatArray, FloatArray]:
        """Weight of each distance, prediction side and reference side (1 per voxel)."""
        pred = (
            self.pred_weights if self.pred_weights is not None else np.ones(self.pred_to_ref.size)
        )
        ref = self.ref_weights if self.ref_weights is not None else np.ones(self.ref_to_pred.size)
        return pred, ref


def _weighted_percentile(distances: FloatArray, weights: FloatArray, percentile: float) -> float:
    """DeepMind's area-weighted percentile: the first distance whose cumulative area share
    reaches ``percentile`` (same sort, so the same element on ties)."""
    order = np.argsort(distances)
    cumulative = np.cumsum(weights[order]) / np.sum(weights)
    index = int(np.searchsorted(cumulative, percentile / 100.0))
    return float(distances[order][min(index, distances.size - 1)])


def hausdorff(d: SurfaceDistances, percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance: max of the two directed maxima (or directed percentiles).

    With ``percentile`` (e.g. 95) each direction's percentile is taken separately and the
    larger is returned: MONAI's and DeepMind's definition, not medpy's percentile of the pooled
    distances. Voxel surfaces use linear interpolation (``numpy.percentile``, as MONAI); face
    surfaces the area-weighted percentile (as DeepMind).
    """
    if percentile is None:
        return float(max(d.pred_to_ref.max(), d.ref_to_pred.max()))
    if d.pred_weights is None or d.ref_weights is None:
        return float(max(np.percentile(d.pred_to_ref, percentile),
                         np.percentile(d.ref_to_pred, percentile)))  # fmt: skip
    return max(_weighted_percentile(d.pred_to_ref, d.pred_weights, percentile),
               _weighted_percentile(d.ref_to_pred, d.ref_weights, percentile))  # fmt: skip


def assd(d: SurfaceDistances) -> float:
    """Average symmetric surface distance: the (weighted) mean of both directions pooled."""
    wp, wr = d.weights()
    return float((d.pred_to_ref @ wp + d.ref_to_pred @ wr) / (wp.sum() + wr.sum()))


def nsd(d: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface distance (surface Dice): share of both surfaces within tolerance."""
    wp, wr = d.weights()
    within = wp[d.pred_to_ref <= tolerance_mm].sum() + wr[d.ref_to_pred <= tolerance_mm].sum()
    return float(within / (wp.sum() + wr.sum()))


def boundary_f1(d: SurfaceDistances, tolerance_mm: float) -> float:
    """Boundary F1: harmonic mean of boundary precision and recall within ``tolerance_mm``.

    Precision is the share of the predicted surface within tolerance of the reference
    surface; recall the share of the reference surface within tolerance of the prediction.
    """
    wp, wr = d.weights()
    precision = float(wp[d.pred_to_ref <= tolerance_mm].sum() / wp.sum())
    recall = float(wr[d.ref_to_pred <= tolerance_mm].sum() / wr.sum())
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def distance_metrics(
    d: SurfaceDistances,
    *,
    nsd_tolerance_mm: float,
    boundary_tolerance_mm: float,
    percentile: float = 95.0,
) -> dict[str, float]:
    """All surface metrics of one class from its surface distances."""
    return {
        "boundary_f1": boundary_f1(d, boundary_tolerance_mm),
        "hd": hausdorff(d),
        "hd95": hausdorff(d, percentile),
        "assd": assd(d),
        "nsd": nsd(d, nsd_tolerance_mm),
    }


def one_sided_metrics() -> dict[str, float]:
    """Surface metrics when exactly one of the two masks is empty: distances are infinite."""
    return {"boundary_f1": 0.0, "hd": math.inf, "hd95": math.inf, "assd": math.inf, "nsd": 0.0}


def both_empty_metrics(*, perfect: bool) -> dict[str, float]:
    """Surface metrics of a class absent from both masks: NaN, or a perfect score if asked."""
    if perfect:
        return {"boundary_f1": 1.0, "hd": 0.0, "hd95": 0.0, "assd": 0.0, "nsd": 1.0}
    return dict.fromkeys(DISTANCE_METRICS, math.nan)
