"""A canonical label map indexed once: the bounding box of every label from a single pass.

Validation (which ids are present), the panel (per-class crops) and the centroids all need
the classes' bounding boxes; ``scipy.ndimage.find_objects`` finds all of them in one pass
over the volume, so each label map is scanned once, not once per class or per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared.errors import LabelError

Box = tuple[slice, slice, slice]


@dataclass(frozen=True, eq=False)
class IndexedLabelMap:
    """A uint8 label map and the bounding box of each of its labels (``boxes[label - 1]``)."""

    array: npt.NDArray[np.uint8]
    boxes: tuple[Box | None, ...]

    @classmethod
    def index(cls, array: npt.NDArray[np.uint8]) -> IndexedLabelMap:
        """Index a 3D uint8 (or boolean) label map; other types go through validation first
        (``inputs.canonical_labels``), never through a silent cast."""
        if array.dtype not in (np.uint8, np.bool_):
            raise LabelError(
                f"Label map of type {array.dtype}: validate it with canonical_labels first."
            )
        array = np.ascontiguousarray(array, dtype=np.uint8)
        return cls(array, tuple(ndimage.find_objects(array)))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the label map."""
        return tuple(self.array.shape)

    def box(self, label: int) -> Box | None:
        """Bounding box of ``label``, or None when it is absent."""
        return self.boxes[label - 1] if 0 < label <= len(self.boxes) else None

    def present(self) -> list[int]:
        """Labels present (non-zero), ascending."""
        return [n + 1 for n, box in enumerate(self.boxes) if box is not None]


def indexed(label_map: npt.NDArray[np.uint8] | IndexedLabelMap) -> IndexedLabelMap:
    """``label_map`` indexed, unless it already is."""
    if isinstance(label_map, IndexedLabelMap):
        return label_map
    return IndexedLabelMap.index(label_map)
