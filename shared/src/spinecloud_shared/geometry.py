"""The geometry convention, in one place.

SpineCloud's patient space is **RAS+** in millimetres, as in nibabel and NIfTI: +x points to
the patient's Right, +y Anterior, +z Superior. DICOM stores positions
and directions in **LPS+**; every conversion between the two goes through this module.

A voxel grid is an array indexed ``(i, j, k)`` plus a 4x4 affine that maps ``(i, j, k, 1)`` to
RAS millimetres. Volumes read from DICOM are indexed ``(column, row, slice)`` with rows flipped
and slices ordered along the slice normal, which is the grid dcm2niix (and so TotalSegmentator)
writes; see ``spinecloud_shared.dicom_series``.
"""

from __future__ import annotations

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from spinecloud_shared.errors import GeometryMismatchError

FloatArray = npt.NDArray[np.float64]

#: Multiplying an LPS affine or point on the left by this gives RAS, and vice versa.
LPS_TO_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_affine(affine_lps: npt.ArrayLike) -> FloatArray:
    """A voxel->LPS affine as a voxel->RAS affine (the conversion is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


ras_to_lps_affine = lps_to_ras_affine


def lps_to_ras_points(points_lps: npt.ArrayLike) -> FloatArray:
    """Points (..., 3) in LPS millimetres as RAS millimetres."""
    pts = np.array(points_lps, dtype=np.float64)
    pts[..., :2] *= -1.0
    return pts


ras_to_lps_points = lps_to_ras_points


def spacing_from_affine(affine: npt.ArrayLike) -> tuple[float, float, float]:
    """Voxel size along each array axis, in millimetres."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    x, y, z = (float(v) for v in np.linalg.norm(columns, axis=0))
    return x, y, z


def axcodes(affine: npt.ArrayLike) -> str:
    """Orientation codes of the array axes in RAS terms, e.g. 'RAS', 'LPS', 'LAS', 'PIR'."""
    return "".join(str(c) for c in nio.aff2axcodes(np.asarray(affine)))


def apply_affine(affine: npt.ArrayLike, ijk: npt.ArrayLike) -> FloatArray:
    """Map voxel indices (..., 3) through a 4x4 affine to millimetres (..., 3)."""
    aff = np.asarray(affine, dtype=np.float64)
    pts = np.asarray(ijk, dtype=np.float64)
    return pts @ aff[:3, :3].T + aff[:3, 3]


def check_affine(affine: npt.ArrayLike) -> FloatArray:
    """Validate a 4x4 voxel->world affine: finite, invertible, bottom row (0, 0, 0, 1)."""
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise GeometryMismatchError(f"An affine must be 4x4, got shape {aff.shape}.")
    if not np.all(np.isfinite(aff)):
        raise GeometryMismatchError("The affine contains NaN or infinite values.")
    if not np.allclose(aff[3], [0.0, 0.0, 0.0, 1.0]):
        raise GeometryMismatchError(f"The affine's last row must be (0, 0, 0, 1), got {aff[3]}.")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise GeometryMismatchError("The affine is singular (a zero or repeated axis).")
    return aff


def same_grid(
    shape_a: tuple[int, ...],
    affine_a: npt.ArrayLike,
    shape_b: tuple[int, ...],
    affine_b: npt.ArrayLike,
    *,
    atol_mm: float = 1e-3,
) -> bool:
    """Whether two grids have the same shape and the same affine within ``atol_mm``."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=atol_mm, rtol=0.0)
    )
