"""VerSe labelling metrics: vertebra centroids, identification rate and localisation distance.

Definitions follow Sekuboyina et al. 2021 (VerSe, section 2.3): a reference vertebra *i* is
identified when the predicted centroid closest to its true centroid carries label *i* and lies
less than 20 mm away; ``id_rate`` is the share of reference vertebrae identified in the scan.
``d_mean`` is the mean distance between the true and the predicted centroid of each reference
vertebra that the prediction also contains; vertebrae missing from the prediction are left
out (as VerSe's text does) and are counted by ``n_missing``; aggregation may substitute the
VerSe worst case (1000 mm) instead (``aggregate.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_metrics.labelmap import IndexedLabelMap, indexed
from spinecloud_shared import geometry

#: A vertebra counts as identified only closer than this (VerSe).
IDENTIFICATION_DISTANCE_MM = 20.0

Centroids = dict[int, npt.NDArray[np.float64]]


def centroids(
    label_map: npt.NDArray[np.uint8] | IndexedLabelMap, affine_ras: npt.ArrayLike
) -> Centroids:
    """Centre of mass (RAS mm) of every class in a canonical label map, computed on its crop.

    Equal to ``spinecloud_shared.centroids.centroids_from_labels`` (tested), without a full
    pass per class over the volume.
    """
    label_map = indexed(label_map)
    result: Centroids = {}
    for label in label_map.present():
        box = label_map.boxes[label - 1]
        assert box is not None
        local = ndimage.center_of_mass(label_map.array[box] == label)
        ijk = np.asarray(local, dtype=np.float64) + [s.start for s in box]
        result[label] = geometry.apply_affine(affine_ras, ijk)
    return result


@dataclass(frozen=True)
class VertebraLabelling:
    """Labelling outcome of one reference vertebra."""

    label: int
    #: Distance (mm) from the true centroid to the predicted centroid of the same label; NaN
    #: when the prediction lacks that label.
    distance_mm: float
    identified: bool


@dataclass(frozen=True)
class LabellingResult:
    """Labelling metrics of one case."""

    per_vertebra: tuple[VertebraLabelling, ...]
    n_pred: int

    @property
    def n_ref(self) -> int:
        """Vertebrae in the reference."""
        return len(self.per_vertebra)

    @property
    def n_identified(self) -> int:
        """Reference vertebrae identified."""
        return sum(v.identified for v in self.per_vertebra)

    @property
    def n_missing(self) -> int:
        """Reference vertebrae whose label the prediction lacks."""
        return sum(math.isnan(v.distance_mm) for v in self.per_vertebra)

    @property
    def id_rate(self) -> float:
        """Share of reference vertebrae identified; NaN when the reference has none."""
        return self.n_identified / self.n_ref if self.n_ref else math.nan

    @property
    def d_mean(self) -> float:
        """Mean localisation distance (mm) over vertebrae present in both; NaN if none."""
        found = [v.distance_mm for v in self.per_vertebra if not math.isnan(v.distance_mm)]
        return float(np.mean(found)) if found else math.nan

    def summary(self) -> dict[str, float | int]:
        """The case-level numbers as a flat mapping."""
        return {
            "id_rate": self.id_rate,
            "d_mean": self.d_mean,
            "n_ref_vertebrae": self.n_ref,
            "n_pred_vertebrae": self.n_pred,
            "n_identified": self.n_identified,
            "n_missing": self.n_missing,
        }


def _one_vertebra(
    label: int,
    true_mm: npt.NDArray[np.float64],
    pred: Mapping[int, npt.NDArray[np.float64]],
    max_distance_mm: float,
) -> VertebraLabelling:
    same = pred.get(label)
    distance = float(np.linalg.norm(same - true_mm)) if same is not None else math.nan
    if not pred:
        return VertebraLabelling(label, distance, False)
    nearest = min(pred, key=lambda other: float(np.linalg.norm(pred[other] - true_mm)))
    nearest_distance = float(np.linalg.norm(pred[nearest] - true_mm))
    return VertebraLabelling(
        label, distance, nearest == label and nearest_distance < max_distance_mm
    )


def identification(
    reference: Mapping[int, npt.ArrayLike],
    prediction: Mapping[int, npt.ArrayLike],
    *,
    max_distance_mm: float = IDENTIFICATION_DISTANCE_MM,
) -> LabellingResult:
    """VerSe identification of every reference vertebra given centroids in RAS mm."""
    ref = {int(k): np.asarray(v, dtype=np.float64) for k, v in reference.items()}
    pred = {int(k): np.asarray(v, dtype=np.float64) for k, v in prediction.items()}
    per = tuple(_one_vertebra(label, ref[label], pred, max_distance_mm) for label in sorted(ref))
    return LabellingResult(per, len(pred))
