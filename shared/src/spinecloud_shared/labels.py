"""The canonical vertebra label scheme (VerSe ids) and converters from other schemes.

Canonical ids, as in VerSe: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6 (transitional),
26 sacrum, 28 T13 (transitional). The 25 standard classes a SpineCloud model predicts are
C1-L5 and the sacrum. Other schemes (TotalSegmentator v2 "total", TotalSegmentator v1, the
TotalSegmentator dataset's per-structure files) are mapped onto it here, and only here.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from spinecloud_shared.errors import LabelError

CODING_SCHEME = "SCT"
CATEGORY_CODE = ("123037004", CODING_SCHEME, "Anatomical Structure")
GENERIC_VERTEBRA_CODE = ("51282000", CODING_SCHEME, "Vertebra")


class Region(StrEnum):
    """Spine regions used to aggregate per-vertebra results."""

    CERVICAL = "cervical"
    THORACIC = "thoracic"
    LUMBAR = "lumbar"
    SACRUM = "sacrum"


@dataclass(frozen=True)
class Vertebra:
    """One canonical class: its VerSe id, name, region, SNOMED-CT code and display colour."""

    id: int
    name: str
    region: Region
    snomed_code: str
    snomed_meaning: str
    color_rgb: tuple[int, int, int]
    #: Position from head to feet (C1 = 0), used for ordering and plausibility checks.
    order: int
    transitional: bool = False


_SNOMED: dict[str, str] = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001", "T1": "64864005", "T2": "53733008", "T3": "1626008",
    "T4": "73071006", "T5": "56401006", "T6": "45296009", "T7": "62487009", "T8": "11068009",
    "T9": "82687006", "T10": "7610001", "T11": "12989004", "T12": "23215003", "L1": "66794005",
    "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003", "sacrum": "54735007",
}  # fmt: skip

# (canonical id, name, region), head to feet.
_ORDERED: list[tuple[int, str, Region]] = (
    [(i, f"C{i}", Region.CERVICAL) for i in range(1, 8)]
    + [(7 + i, f"T{i}", Region.THORACIC) for i in range(1, 13)]
    + [(28, "T13", Region.THORACIC)]
    + [(19 + i, f"L{i}", Region.LUMBAR) for i in range(1, 6)]
    + [(25, "L6", Region.LUMBAR)]
    + [(26, "sacrum", Region.SACRUM)]
)

# Hue bands per region so neighbouring levels differ and regions are told apart at a glance.
_HUE_BANDS: dict[Region, tuple[float, float]] = {
    Region.CERVICAL: (0.90, 1.15),
    Region.THORACIC: (0.25, 0.55),
    Region.LUMBAR: (0.63, 0.88),
    Region.SACRUM: (0.12, 0.12),
}


def _color(region: Region, index_in_region: int, count_in_region: int) -> tuple[int, int, int]:
    lo, hi = _HUE_BANDS[region]
    hue = (lo + (hi - lo) * index_in_region / max(count_in_region - 1, 1)) % 1.0
    # Alternate lightness so adjacent levels stay distinguishable in the viewer.
    value = 0.95 if index_in_region % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _build() -> tuple[Vertebra, ...]:
    result = []
    for order, (vid, name, region) in enumerate(_ORDERED):
        members = [n for _, n, r in _ORDERED if r == region]
        code = _SNOMED.get(name, GENERIC_VERTEBRA_CODE[0])
        meaning = "Sacrum" if name == "sacrum" else f"{name} vertebra"
        if name not in _SNOMED:
            meaning = GENERIC_VERTEBRA_CODE[2]
        result.append(
            Vertebra(
                id=vid,
                name=name,
                region=region,
                snomed_code=code,
                snomed_meaning=meaning,
                color_rgb=_color(region, members.index(name), len(members)),
                order=order,
                transitional=name in ("T13", "L6"),
            )
        )
    return tuple(result)


#: Every canonical class, head to feet, transitional vertebrae included.
VERTEBRAE: tuple[Vertebra, ...] = _build()
_BY_ID: dict[int, Vertebra] = {v.id: v for v in VERTEBRAE}
_BY_NAME: dict[str, Vertebra] = {v.name.lower(): v for v in VERTEBRAE}

#: The 25 classes a SpineCloud model predicts: C1-L5 and the sacrum (VerSe ids 1-24 and 26).
STANDARD_IDS: tuple[int, ...] = (*tuple(range(1, 25)), 26)
#: Every id the canonical scheme knows (standard and transitional).
ALL_IDS: tuple[int, ...] = tuple(sorted(_BY_ID))
MAX_ID = max(ALL_IDS)


def by_id(label_id: int) -> Vertebra:
    """The canonical class with this VerSe id; LabelError for an unknown id."""
    try:
        return _BY_ID[int(label_id)]
    except KeyError:
        raise LabelError(
            f"Unknown canonical vertebra label id {label_id}.", label=label_id
        ) from None


def by_name(name: str) -> Vertebra:
    """The canonical class with this name ('C1', 'T12', 'L5', 'sacrum'), case-insensitive."""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        raise LabelError(f"Unknown vertebra name {name!r}.", name=name) from None


def ids_in_region(region: Region | str) -> tuple[int, ...]:
    """Canonical ids of the standard classes in a region, head to feet."""
    region = Region(region)
    return tuple(v.id for v in VERTEBRAE if v.region == region and v.id in STANDARD_IDS)


class Scheme(StrEnum):
    """Label schemes SpineCloud converts from and to."""

    CANONICAL = "canonical"
    TOTALSEG_V2 = "totalseg_v2"
    TOTALSEG_V1 = "totalseg_v1"


def _totalseg_v2() -> dict[int, int]:
    mapping = {25: 26, 26: 26}  # sacrum and vertebrae_S1 both become the canonical sacrum
    mapping.update({27 + i: 24 - i for i in range(5)})  # 27 L5 ... 31 L1
    mapping.update({32 + i: 19 - i for i in range(12)})  # 32 T12 ... 43 T1
    mapping.update({44 + i: 7 - i for i in range(7)})  # 44 C7 ... 50 C1
    return mapping


def _totalseg_v1() -> dict[int, int]:
    mapping = {92: 26}
    mapping.update({18 + i: 24 - i for i in range(5)})  # 18 L5 ... 22 L1
    mapping.update({23 + i: 19 - i for i in range(12)})  # 23 T12 ... 34 T1
    mapping.update({35 + i: 7 - i for i in range(7)})  # 35 C7 ... 41 C1
    return mapping


#: Scheme id -> canonical id, for the spine classes of each scheme. Other ids are not spine.
TO_CANONICAL: dict[Scheme, dict[int, int]] = {
    Scheme.CANONICAL: {i: i for i in ALL_IDS},
    Scheme.TOTALSEG_V2: _totalseg_v2(),
    Scheme.TOTALSEG_V1: _totalseg_v1(),
}

#: Canonical id -> scheme id. TotalSegmentator v2's vertebrae_S1 (26) has no canonical class of
#: its own: it is merged into the sacrum, and the sacrum maps back to 25.
FROM_CANONICAL: dict[Scheme, dict[int, int]] = {
    Scheme.CANONICAL: {i: i for i in ALL_IDS},
    Scheme.TOTALSEG_V2: {c: s for s, c in _totalseg_v2().items() if s != 26},
    Scheme.TOTALSEG_V1: {c: s for s, c in _totalseg_v1().items()},
}


def _lookup_table(mapping: Mapping[int, int]) -> npt.NDArray[np.uint8]:
    table = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def _check_integer(label_map: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
    arr = np.asarray(label_map)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise LabelError("Label map contains NaN or infinite values.")
        if not np.array_equal(arr, np.round(arr)):
            raise LabelError("Label map contains non-integer values.")
    elif arr.dtype.kind not in "iub":
        raise LabelError(f"Label map has non-numeric dtype {arr.dtype}.")
    if arr.size and arr.min() < 0:
        raise LabelError("Label map contains negative label ids.")
    return arr.astype(np.int64, copy=False)


def convert(
    label_map: npt.NDArray[np.generic],
    source: Scheme | str,
    target: Scheme | str = Scheme.CANONICAL,
) -> npt.NDArray[np.uint8]:
    """Relabel a label map from one scheme to another; ids that are not spine become 0.

    Conversion goes through the canonical scheme, so TotalSegmentator's vertebrae_S1 is merged
    into the sacrum and the transitional classes T13 and L6 (absent from TotalSegmentator) are
    dropped when converting to it.
    """
    src, dst = Scheme(source), Scheme(target)
    arr = _check_integer(label_map)
    to_canon = TO_CANONICAL[src]
    from_canon = FROM_CANONICAL[dst]
    combined = {s: from_canon[c] for s, c in to_canon.items() if c in from_canon}
    table = _lookup_table(combined)
    out = np.zeros(arr.shape, dtype=np.uint8)
    inside = arr < table.size
    out[inside] = table[arr[inside]]
    return out


def check_canonical(label_map: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Validate that a label map holds only canonical ids (and 0); return it as uint8."""
    arr = np.asarray(label_map)
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        # Label maps are uint8: count values in place. bench/inference_e2e.py showed the int64
        # copy and np.unique of a 512 x 512 x 300 map taking about 7 s each, called ~7 times
        # per job; bincount on the uint8 array takes about 0.3 s.
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=1))
    else:
        arr = _check_integer(arr)
        present = np.unique(arr)
    unknown = [int(v) for v in present if v != 0 and v not in _BY_ID]
    if unknown:
        raise LabelError(
            f"Label map contains ids that are not canonical vertebrae: {unknown}.", unknown=unknown
        )
    return arr.astype(np.uint8)


def structure_name(label_id: int) -> str:
    """TotalSegmentator per-structure file stem for a canonical id ('vertebrae_L1', 'sacrum')."""
    vertebra = by_id(label_id)
    if vertebra.transitional:
        raise LabelError(f"TotalSegmentator has no structure file for {vertebra.name}.")
    return "sacrum" if vertebra.name == "sacrum" else f"vertebrae_{vertebra.name}"


#: Per-structure file stems TotalSegmentator writes for the spine, with their canonical id.
STRUCTURE_FILES: dict[str, int] = {structure_name(i): i for i in STANDARD_IDS} | {
    "vertebrae_S1": 26
}


def merge_structure_masks(masks: Mapping[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.uint8]:
    """Combine TotalSegmentator per-structure masks (stem -> mask) into one canonical label map.

    Stems that are not spine structures are ignored; overlapping voxels keep the class further
    down the spine, so the result does not depend on the order of ``masks``.
    """
    spine = {stem: m for stem, m in masks.items() if stem in STRUCTURE_FILES}
    if not spine:
        raise LabelError("None of the given structure files is a vertebra or the sacrum.")
    shapes = {np.shape(m) for m in spine.values()}
    if len(shapes) != 1:
        raise LabelError(f"Structure masks have different shapes: {sorted(shapes)}.")
    out = np.zeros(shapes.pop(), dtype=np.uint8)
    for stem in sorted(spine, key=lambda s: by_id(STRUCTURE_FILES[s]).order):
        out[np.asarray(spine[stem]) > 0] = STRUCTURE_FILES[stem]
    return out


def split_structure_masks(label_map: npt.NDArray[np.generic]) -> dict[str, npt.NDArray[np.uint8]]:
    """One binary mask per standard class (stem -> uint8 mask), as TotalSegmentator writes them."""
    arr = check_canonical(label_map)
    return {structure_name(i): (arr == i).astype(np.uint8) for i in STANDARD_IDS}
