"""Anatomical plausibility of a spine segmentation: findings for a reader, never fixes.

Checks, each giving ``Finding`` objects with a stable ``code``:

- ``order_inverted``: two levels present whose centroids are not in head-to-feet order along
  the RAS z axis (superior is +z): the upper level's centroid must lie higher than the next
  present level's. Transitional levels (T13, L6) take their place in the canonical order.
- ``duplicated_level``: a class had a second connected component (before cleaning) of at
  least ``DUPLICATE_MIN_FRACTION`` of its largest one and at least ``DUPLICATE_MIN_ML``: the
  network likely gave one label to two vertebrae. Cleaning kept only the larger one.
- ``skipped_level``: standard levels missing between the highest and the lowest level present
  (e.g. L1 and L3 but no L2). Transitional levels are never reported missing.
- ``volume_too_large`` / ``volume_too_small``: a level's cleaned volume outside
  ``VOLUME_RANGES_ML`` for its region. Too small is only reported for levels that do not touch
  the edge of the field of view (a level cut by the edge is small by nature).

Ranges (ml) are wide adult bounds for a whole vertebra, posterior elements included: the
aim is to flag gross errors (two levels merged, a vertebra half missing), not to grade anatomy.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from spinecloud_inference.postprocess import ClassComponents
from spinecloud_shared import labels

#: Plausible whole-vertebra volume per region, in ml: (minimum, maximum).
VOLUME_RANGES_ML: dict[labels.Region, tuple[float, float]] = {
    labels.Region.CERVICAL: (2.0, 30.0),
    labels.Region.THORACIC: (5.0, 90.0),
    labels.Region.LUMBAR: (15.0, 150.0),
    labels.Region.SACRUM: (40.0, 450.0),
}
#: A second component is a duplicate when at least this fraction of the largest...
DUPLICATE_MIN_FRACTION = 0.3
#: ...and at least this many ml.
DUPLICATE_MIN_ML = 1.0


class FindingCode(StrEnum):
    """What kind of implausibility a finding reports."""

    ORDER_INVERTED = "order_inverted"
    DUPLICATED_LEVEL = "duplicated_level"
    SKIPPED_LEVEL = "skipped_level"
    VOLUME_TOO_LARGE = "volume_too_large"
    VOLUME_TOO_SMALL = "volume_too_small"


@dataclass(frozen=True)
class Finding:
    """One plausibility finding: its code, the levels concerned (names), a sentence."""

    code: FindingCode
    levels: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (code as a string, levels as a list)."""
        data = asdict(self)
        data["code"] = self.code.value
        data["levels"] = list(self.levels)
        return data


def _head_to_feet(ids: list[int] | set[int]) -> list[int]:
    return sorted(ids, key=lambda i: labels.by_id(i).order)


def check_order(centroids: dict[int, npt.NDArray[np.float64]]) -> list[Finding]:
    """``order_inverted`` for each pair of consecutive present levels out of z order."""
    present = _head_to_feet(set(centroids))
    findings = []
    for upper, lower in itertools.pairwise(present):
        z_upper, z_lower = float(centroids[upper][2]), float(centroids[lower][2])
        if z_upper <= z_lower:
            a, b = labels.by_id(upper).name, labels.by_id(lower).name
            findings.append(
                Finding(
                    FindingCode.ORDER_INVERTED,
                    (a, b),
                    f"{a} (z {z_upper:.1f} mm) is not above {b} (z {z_lower:.1f} mm).",
                )
            )
    return findings


def check_duplicates(components: dict[int, ClassComponents]) -> list[Finding]:
    """``duplicated_level`` for classes with a second large component before cleaning."""
    findings = []
    for label in _head_to_feet(set(components)):
        sizes = components[label].sizes_ml
        if len(sizes) < 2:
            continue
        second = sizes[1]
        if second >= DUPLICATE_MIN_ML and second >= DUPLICATE_MIN_FRACTION * sizes[0]:
            name = labels.by_id(label).name
            findings.append(
                Finding(
                    FindingCode.DUPLICATED_LEVEL,
                    (name,),
                    f"{name} was found as two separate pieces ({sizes[0]:.1f} ml and "
                    f"{second:.1f} ml); only the larger was kept.",
                )
            )
    return findings


def check_skipped(present: set[int]) -> list[Finding]:
    """``skipped_level``: standard levels missing between the highest and lowest present."""
    standard = _head_to_feet(set(labels.STANDARD_IDS))
    indices = [standard.index(i) for i in present if i in labels.STANDARD_IDS]
    if len(indices) < 2:
        return []
    missing = [i for i in standard[min(indices) : max(indices) + 1] if i not in present]
    if not missing:
        return []
    names = tuple(labels.by_id(i).name for i in missing)
    return [
        Finding(
            FindingCode.SKIPPED_LEVEL,
            names,
            f"{', '.join(names)} missing between levels that are present.",
        )
    ]


def check_volumes(components: dict[int, ClassComponents]) -> list[Finding]:
    """``volume_too_large`` / ``volume_too_small`` against ``VOLUME_RANGES_ML``."""
    findings = []
    for label in _head_to_feet(set(components)):
        item = components[label]
        if item.kept_ml <= 0:
            continue
        vertebra = labels.by_id(label)
        low, high = VOLUME_RANGES_ML[vertebra.region]
        if item.kept_ml > high:
            code, bound = FindingCode.VOLUME_TOO_LARGE, f"above {high:g} ml"
        elif item.kept_ml < low and not item.touches_border:
            code, bound = FindingCode.VOLUME_TOO_SMALL, f"below {low:g} ml"
        else:
            continue
        findings.append(
            Finding(
                code,
                (vertebra.name,),
                f"{vertebra.name} measures {item.kept_ml:.1f} ml, {bound} "
                f"(plausible {vertebra.region.value} range {low:g}-{high:g} ml).",
            )
        )
    return findings


def check_plausibility(
    components: dict[int, ClassComponents], centroids: dict[int, npt.NDArray[np.float64]]
) -> list[Finding]:
    """Every finding for a cleaned segmentation: order, duplicates, skipped levels, volumes.

    ``components`` comes from ``postprocess.clean_labels``; ``centroids`` (RAS mm) are those of
    the cleaned label map.
    """
    present = {label for label, item in components.items() if item.kept_ml > 0}
    return [
        *check_order({k: v for k, v in centroids.items() if k in present}),
        *check_duplicates(components),
        *check_skipped(present),
        *check_volumes(components),
    ]
