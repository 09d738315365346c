"""The TotalSegmentator dataset layout: writer and reader.

::

    root/meta.csv                          image_id;age;gender;institute;study_type;split;...
    root/s0000/ct.nii.gz                   CT, int16 HU
    root/s0000/segmentations/<stem>.nii.gz one binary uint8 mask per structure

``meta.csv`` is semicolon-separated as in the published dataset (a comma-separated file is
accepted too); ``split`` is ``train``, ``val`` or ``test``. The dataset holds masks of many
structures besides the spine; the reader merges only the spine files
(``labels.STRUCTURE_FILES``: ``vertebrae_C1`` ... ``vertebrae_L5``, ``sacrum``,
``vertebrae_S1``) into one canonical label map and ignores the others.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError, LabelError, NiftiInputError
from spinecloud_shared.layouts._common import (
    CT_DTYPE,
    MASK_DTYPE,
    LabelledCase,
    as_pair,
    header_grid,
    read_case_nifti,
    require_grid,
    split_names,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume

META_FILE = "meta.csv"
META_COLUMNS = ("image_id", "age", "gender", "institute", "study_type", "split")
CT_FILE = "ct.nii.gz"
SEGMENTATIONS_DIR = "segmentations"
_NII_GZ = ".nii.gz"


@dataclass(frozen=True)
class TotalSegCase:
    """One case read back: its id (``s0000``), CT file, canonical label map and split."""

    case_id: str
    ct_path: Path
    labels: Volume
    split: str | None

    def load_ct(self) -> Volume:
        """The CT volume (HU)."""
        return read_case_nifti(self.ct_path, self.case_id)


def case_name(index: int) -> str:
    """The dataset's case id for a running number: 0 -> 's0000'."""
    return f"s{index:04d}"


def write_totalsegmentator(
    root: str | Path,
    cases: Iterable[LabelledCase],
    *,
    splits: Sequence[str] | None = None,
    first_index: int = 0,
) -> list[str]:
    """Write cases as ``s{first_index:04d}``, ... with one mask per spine structure.

    Every standard spine structure gets a file, empty where the level is absent, as the
    dataset does. ``meta.csv`` is created or updated (rows for the written ids are replaced).
    Returns the case ids written. Transitional vertebrae (T13, L6) have no TotalSegmentator
    file and raise LabelError.
    """
    root = Path(root)
    cases = list(cases)
    rows = read_meta(root) if (root / META_FILE).is_file() else {}
    ids = []
    for offset, (case, split) in enumerate(
        zip(cases, split_names(len(cases), splits), strict=True)
    ):
        case_id = case_name(first_index + offset)
        _write_case(root / case_id, case, case_id)
        rows[case_id] = {"image_id": case_id, "study_type": "phantom", "split": split}
        ids.append(case_id)
    _write_meta(root, rows)
    return ids


def _write_case(folder: Path, case: LabelledCase, case_id: str) -> None:
    ct, label_map = as_pair(case, case_id)
    transitional = sorted(set(np.unique(label_map.array).tolist()) - {0, *labels.STANDARD_IDS})
    if transitional:
        raise LabelError(
            f"{case_id}: TotalSegmentator has no structure file for label ids {transitional}.",
            case_id=case_id,
        )
    write_nifti(ct, folder / CT_FILE, dtype=CT_DTYPE)
    for stem, mask in labels.split_structure_masks(label_map.array).items():
        write_nifti(
            label_map.with_array(mask),
            folder / SEGMENTATIONS_DIR / f"{stem}{_NII_GZ}",
            dtype=MASK_DTYPE,
        )


def _write_meta(root: Path, rows: dict[str, dict[str, str]]) -> None:
    columns = list(META_COLUMNS)
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    root.mkdir(parents=True, exist_ok=True)
    with (root / META_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter=";", restval="")
        writer.writeheader()
        for case_id in sorted(rows):
            writer.writerow(rows[case_id])


def read_meta(root: str | Path) -> dict[str, dict[str, str]]:
    """``meta.csv`` as image_id -> row (column -> value); InvalidInputError when unusable."""
    path = Path(root) / META_FILE
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInputError(
            f"{path}: cannot read the case list ({exc}).", path=str(path)
        ) from exc
    lines = text.splitlines()
    delimiter = ";" if lines and ";" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    if reader.fieldnames is None or "image_id" not in reader.fieldnames:
        raise InvalidInputError(f"{path}: no 'image_id' column.", path=str(path))
    return {row["image_id"].strip(): dict(row) for row in reader if row.get("image_id")}


def read_totalsegmentator(root: str | Path, *, split: str | None = None) -> Iterator[TotalSegCase]:
    """Cases of a TotalSegmentator-layout folder, in id order; only ``split``'s when given.

    The case list comes from ``meta.csv``; without it, from the ``s*`` folders (split then
    ``None``, and asking for a split is an error). Each case's spine masks are read, checked
    against the CT's grid and merged into canonical ids. Errors name the case and the file:
    NiftiInputError (missing or unreadable file), GeometryMismatchError (mask not on the CT's
    grid), LabelError (a mask that is not binary, or no spine structure at all).
    """
    root = Path(root)
    for case_id, case_split in case_list(root, split):
        if split is None or case_split == split:
            yield read_case(root / case_id, case_id, case_split)


def case_list(root: Path, split: str | None = None) -> list[tuple[str, str | None]]:
    """(case id, split) of every case, from ``meta.csv`` or, without it, the ``s*`` folders."""
    if (root / META_FILE).is_file():
        rows = read_meta(root)
        return [(i, (rows[i].get("split") or "").strip() or None) for i in sorted(rows)]
    if split is not None:
        raise InvalidInputError(
            f"{root / META_FILE}: missing, so split {split!r} is unknown.",
            path=str(root / META_FILE),
        )
    return [(p.name, None) for p in sorted(root.glob("s*")) if (p / CT_FILE).exists()]


def read_case(folder: Path, case_id: str, split: str | None) -> TotalSegCase:
    """One case folder, its spine masks merged into canonical ids (errors as the reader's)."""
    ct_path = folder / CT_FILE
    grid = header_grid(ct_path, case_id)
    seg_dir = folder / SEGMENTATIONS_DIR
    if not seg_dir.is_dir():
        raise NiftiInputError(
            f"{case_id}: {seg_dir}: no segmentations folder.", case_id=case_id, path=str(seg_dir)
        )
    masks = {}
    for path in sorted(seg_dir.glob(f"*{_NII_GZ}")):
        stem = path.name[: -len(_NII_GZ)]
        if stem in labels.STRUCTURE_FILES:
            masks[stem] = _read_mask(path, grid, case_id, ct_path)
    if not masks:
        raise LabelError(
            f"{case_id}: {seg_dir}: no vertebra or sacrum mask.", case_id=case_id, path=str(seg_dir)
        )
    merged = labels.merge_structure_masks(masks)
    return TotalSegCase(case_id, ct_path, Volume(merged, grid.affine_ras.copy()), split)


def _read_mask(path: Path, grid: Volume, case_id: str, ct_path: Path) -> np.ndarray:
    mask = read_case_nifti(path, case_id)
    require_grid(grid, mask, case_id, path, ct_path)
    values = np.unique(mask.array)
    if not np.all(np.isin(values, (0, 1))):
        raise LabelError(
            f"{case_id}: {path}: a structure mask must hold only 0 and 1, got "
            f"{values[:5].tolist()}.",
            case_id=case_id,
            path=str(path),
        )
    return mask.array
