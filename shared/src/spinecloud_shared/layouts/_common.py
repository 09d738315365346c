"""What the dataset layouts share: the cases a writer accepts and error reporting per case."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from spinecloud_shared import labels
from spinecloud_shared.errors import GeometryMismatchError, NiftiInputError, SpineCloudError
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.phantom import Phantom
from spinecloud_shared.volume import Volume

#: What a writer accepts per case: a phantom, or a CT and its canonical label map on one grid.
LabelledCase = Phantom | tuple[Volume, Volume]

CT_DTYPE = np.int16
MASK_DTYPE = np.uint8


def as_pair(case: LabelledCase, case_id: str) -> tuple[Volume, Volume]:
    """(CT, canonical label map) of a case, checked to share a grid and to hold canonical ids."""
    ct, label_map = (case.ct, case.labels) if isinstance(case, Phantom) else case
    if not ct.same_grid(label_map):
        raise GeometryMismatchError(
            f"{case_id}: the label map is not on the CT's grid "
            f"(shape {label_map.shape} vs {ct.shape}).",
            case_id=case_id,
        )
    try:
        checked = labels.check_canonical(label_map.array)
    except SpineCloudError as exc:
        raise rewrap(exc, case_id) from exc
    return ct, label_map.with_array(checked)


def split_names(count: int, splits: Sequence[str] | None) -> list[str]:
    """One split name per case; every case is 'train' when no splits are given."""
    if splits is None:
        return ["train"] * count
    if len(splits) != count:
        raise ValueError(f"Got {len(splits)} split names for {count} cases.")
    return [str(s) for s in splits]


def rewrap(exc: SpineCloudError, case_id: str) -> SpineCloudError:
    """The same kind of error, its message prefixed with the case id."""
    return type(exc)(f"{case_id}: {exc.message}", **{**exc.details, "case_id": case_id})


def header_grid(path: Path, case_id: str) -> Volume:
    """The grid of a NIfTI file from its header alone (an all-zero view, no voxel data read)."""
    if not path.is_file():
        raise NiftiInputError(f"{case_id}: {path}: no such file.", case_id=case_id, path=str(path))
    try:
        image: Any = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many unrelated types for damaged files
        raise NiftiInputError(
            f"{case_id}: {path}: not a readable NIfTI file ({exc}).",
            case_id=case_id,
            path=str(path),
        ) from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise NiftiInputError(
            f"{case_id}: {path}: expected a 3D image, got shape {shape}.",
            case_id=case_id,
            path=str(path),
        )
    try:
        return Volume(np.broadcast_to(np.zeros((), dtype=np.uint8), shape), affine)
    except GeometryMismatchError as exc:
        raise NiftiInputError(
            f"{case_id}: {path}: {exc.message}", case_id=case_id, path=str(path)
        ) from exc


def read_case_nifti(path: Path, case_id: str) -> Volume:
    """``read_nifti`` with the case id in any error."""
    try:
        return read_nifti(path)
    except SpineCloudError as exc:
        raise rewrap(exc, case_id) from exc


def require_grid(reference: Volume, other: Volume, case_id: str, path: Path, of: Path) -> None:
    """GeometryMismatchError naming the case and both files unless ``other`` is on the grid."""
    if not reference.same_grid(other):
        raise GeometryMismatchError(
            f"{case_id}: {path} is not on the grid of {of}: shape {other.shape} vs "
            f"{reference.shape}, orientation {other.orientation} vs {reference.orientation}, "
            f"spacing {other.spacing_mm} vs {reference.spacing_mm}.",
            case_id=case_id,
            path=str(path),
        )
