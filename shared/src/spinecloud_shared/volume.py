"""A volume: a 3D array plus the affine that places its voxels in RAS patient space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from spinecloud_shared import geometry
from spinecloud_shared.errors import GeometryMismatchError


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map on a grid.

    ``array`` is indexed ``(i, j, k)``; ``affine_ras`` maps ``(i, j, k, 1)`` to RAS millimetres
    (see ``spinecloud_shared.geometry``). ``meta`` carries provenance such as the DICOM UIDs of
    the source series; it never affects geometry.
    """

    array: npt.NDArray[Any]
    affine_ras: npt.NDArray[np.float64]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if np.ndim(self.array) != 3:
            raise GeometryMismatchError(f"A volume must be 3D, got shape {np.shape(self.array)}.")
        object.__setattr__(self, "affine_ras", geometry.check_affine(self.affine_ras))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (i, j, k)."""
        i, j, k = self.array.shape
        return int(i), int(j), int(k)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in millimetres."""
        return geometry.spacing_from_affine(self.affine_ras)

    @property
    def orientation(self) -> str:
        """Axis codes of i, j, k in RAS terms (e.g. 'LAS')."""
        return geometry.axcodes(self.affine_ras)

    @property
    def origin_ras(self) -> tuple[float, float, float]:
        """RAS position of voxel (0, 0, 0) in millimetres."""
        x, y, z = (float(v) for v in self.affine_ras[:3, 3])
        return x, y, z

    def with_array(self, array: npt.NDArray[Any], **meta: Any) -> Volume:
        """A volume on the same grid with other voxel values (e.g. a label map for this image)."""
        if tuple(array.shape) != self.shape:
            raise GeometryMismatchError(
                f"Array of shape {tuple(array.shape)} does not fit grid {self.shape}."
            )
        return Volume(array, self.affine_ras.copy(), {**self.meta, **meta})

    def same_grid(self, other: Volume, *, atol_mm: float = 1e-3) -> bool:
        """Whether ``other`` lies on exactly this grid (shape, and affine within ``atol_mm``)."""
        return geometry.same_grid(
            self.shape, self.affine_ras, other.shape, other.affine_ras, atol_mm=atol_mm
        )

    def require_same_grid(self, other: Volume, *, what: str = "volumes") -> None:
        """Raise GeometryMismatchError unless ``other`` shares this grid."""
        if not self.same_grid(other):
            raise GeometryMismatchError(
                f"The {what} are not on the same grid: shape {self.shape} vs {other.shape}, "
                f"orientation {self.orientation} vs {other.orientation}, "
                f"spacing {self.spacing_mm} vs {other.spacing_mm}.",
            )

    def reoriented(self, codes: str) -> Volume:
        """The same voxels, axes permuted and flipped so that they run along ``codes``.

        Exact (no interpolation): each voxel keeps its world position.
        """
        start = nio.io_orientation(self.affine_ras)
        end = nio.axcodes2ornt(tuple(codes.upper()))
        transform = nio.ornt_transform(start, end)
        array = nio.apply_orientation(self.array, transform)
        inverse = nio.inv_ornt_aff(transform, self.array.shape)
        return Volume(np.ascontiguousarray(array), self.affine_ras @ inverse, dict(self.meta))

    def world_coordinates(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """RAS millimetres of voxel indices (..., 3)."""
        return geometry.apply_affine(self.affine_ras, ijk)
