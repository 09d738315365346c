"""Confusion-matrix metrics of one class: Dice, IoU, accuracy, precision, recall, kappa, AUC.

Everything here is derived from the four counts of a binary confusion matrix, so a metric never
touches the voxels again. Counts come from the cropped bounding box of the class
(``panel.py``); the true negatives are the rest of the volume.

Undefined ratios (0/0) are NaN, never silently 0 or 1; ``docs/metrics.md`` lists what each
metric returns for an empty prediction, an empty reference, or both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OVERLAP_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "accuracy",
    "precision",
    "sensitivity",
    "specificity",
    "kappa",
    "auc",
)


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a binary confusion matrix (prediction against reference)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        """Number of voxels in the volume."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def n_pred(self) -> int:
        """Voxels labelled with the class in the prediction."""
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        """Voxels labelled with the class in the reference."""
        return self.tp + self.fn


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero (an undefined ratio)."""
    return numerator / denominator if denominator else math.nan


def cohen_kappa(c: Confusion) -> float:
    """Cohen's kappa of the two binary raters: (p_o - p_e) / (1 - p_e).

    Computed on fractions of the volume so that large volumes do not lose precision.
    """
    n = float(c.total)
    if n == 0:
        return math.nan
    tp, fp, fn, tn = c.tp / n, c.fp / n, c.fn / n, c.tn / n
    observed = tp + tn
    expected = (tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)
    return ratio(observed - expected, 1.0 - expected)


def overlap_metrics(c: Confusion) -> dict[str, float]:
    """All confusion-matrix metrics of one class, as a name -> value mapping.

    AUC of a binary mask is (sensitivity + specificity) / 2 (Müller et al. 2022, miseval).
    """
    sensitivity = ratio(c.tp, c.tp + c.fn)
    specificity = ratio(c.tn, c.tn + c.fp)
    return {
        "dice": ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "iou": ratio(c.tp, c.tp + c.fp + c.fn),
        "accuracy": ratio(c.tp + c.tn, c.total),
        "precision": ratio(c.tp, c.tp + c.fp),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "kappa": cohen_kappa(c),
        "auc": (sensitivity + specificity) / 2.0,
    }
