"""NIfTI reading and writing with the affine intact (nibabel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from spinecloud_shared.errors import GeometryMismatchError, NiftiInputError
from spinecloud_shared.volume import Volume


def read_nifti(path: str | Path, *, allow_empty: bool = True) -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``) as a Volume in RAS.

    Raises NiftiInputError naming the file when it is unreadable, not 3D, holds NaN or infinite
    values, or (with ``allow_empty=False``) has no non-zero voxel.
    """
    path = Path(path)
    try:
        image: Any = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise NiftiInputError(f"{path}: no such file.", path=str(path)) from None
    except Exception as exc:  # nibabel raises many unrelated types for damaged files
        raise NiftiInputError(
            f"{path}: not a readable NIfTI file ({exc}).", path=str(path)
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiInputError(f"{path}: expected a 3D image, got shape {data.shape}.")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise NiftiInputError(f"{path}: contains NaN or infinite values.", path=str(path))
    if not allow_empty and not np.any(data):
        raise NiftiInputError(f"{path}: every voxel is zero.", path=str(path))
    try:
        return Volume(
            np.ascontiguousarray(data),
            np.asarray(image.affine, dtype=np.float64),
            {"source": str(path)},
        )
    except GeometryMismatchError as exc:
        raise NiftiInputError(f"{path}: {exc.message}", path=str(path)) from exc


def write_nifti(volume: Volume, path: str | Path, *, dtype: npt.DTypeLike | None = None) -> Path:
    """Write a Volume as NIfTI-1 with sform and qform both set to its affine (scanner space)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    image = nib.Nifti1Image(array, volume.affine_ras)
    image.set_sform(volume.affine_ras, code=1)
    image.set_qform(volume.affine_ras, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path
