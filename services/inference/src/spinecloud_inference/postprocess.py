"""Clean a predicted label map: one connected piece per vertebra, no small fragments.

For every class present, the voxels are split into connected components with 26-connectivity
(voxels touching by a face, an edge or a corner belong together: a thin oblique process
sampled on an anisotropic grid often touches its neighbours only by edges or corners, and a
vertebra is one bone). The largest component is kept and the others become background (among
pieces of equal size, the most superior one, then the most anterior, then the rightmost: a
choice made in the patient, so the result does not depend on the order of the array's axes);
then a class whose kept component is smaller than ``min_fragment_ml`` is removed altogether (a
spurious detection, not a vertebra). Components are found inside each class's bounding box,
so the cost follows the size of the spine, not of the scan.

The sizes of all components before cleaning are reported, because the plausibility checks
need them (a second large component means a duplicated level) and cleaning erases them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared import labels
from spinecloud_shared.centroids import canonical_in_box
from spinecloud_shared.volume import Volume

#: Classes whose largest piece is smaller than this (ml) are removed. A real vertebra, even
#: half outside the field of view, is larger; a cervical vertebra is about 5 ml.
DEFAULT_MIN_FRAGMENT_ML = 0.5
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class ClassComponents:
    """What cleaning found for one class.

    ``sizes_ml`` holds every component before cleaning, largest first; ``kept_ml`` is what
    is left (0 when the class was removed as a fragment); ``touches_border`` tells whether the
    kept component reaches the edge of the field of view (then it may be cut off).
    """

    label: int
    sizes_ml: tuple[float, ...]
    kept_ml: float
    touches_border: bool

    @property
    def name(self) -> str:
        """The canonical name of the class ('L1')."""
        return labels.by_id(self.label).name


@dataclass(frozen=True)
class CleanedLabels:
    """A cleaned label map (same grid as the input) and the per-class component report."""

    labels: Volume
    components: dict[int, ClassComponents]

    @property
    def removed_ml(self) -> float:
        """Volume set to background by cleaning, in ml."""
        return sum(sum(c.sizes_ml) - c.kept_ml for c in self.components.values())


def voxel_volume_ml(volume: Volume) -> float:
    """Volume of one voxel in millilitres (cm³)."""
    return float(np.prod(volume.spacing_mm)) / 1000.0


def _touches_border(box: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    return any(s.start == 0 or s.stop == n for s, n in zip(box, shape, strict=True))


def _largest(
    mask: npt.NDArray[np.bool_],
    components: npt.NDArray[np.int32],
    sizes: npt.NDArray[np.intp],
    box: tuple[slice, ...],
    affine_ras: npt.NDArray[np.float64],
) -> int:
    """The id of the largest component; ties go to the most superior, anterior, right one.

    Centroids are rounded to 1 µm so that the same piece seen through differently ordered
    axes compares equal.
    """
    tied = np.flatnonzero(sizes == sizes.max()) + 1
    if len(tied) == 1:
        return int(tied[0])
    centres = np.asarray(ndimage.center_of_mass(mask, components, tied), dtype=float)
    offset = np.array([s.start for s in box], dtype=float)
    world = (affine_ras[:3, :3] @ (centres + offset).T).T + affine_ras[:3, 3]
    key = np.round(world, 3)
    order = np.lexsort((-key[:, 0], -key[:, 1], -key[:, 2]))
    return int(tied[order[0]])


def _clean_class(
    array: npt.NDArray[np.uint8],
    label: int,
    box: tuple[slice, ...],
    grid: Volume,
    min_fragment_ml: float,
) -> ClassComponents:
    """Keep the largest component of ``label`` inside ``box`` (in place); report the sizes.

    ``grid`` gives the voxel size and the affine (for ties); its array is not read.
    """
    voxel_ml = voxel_volume_ml(grid)
    view = array[box]
    mask = view == label
    components, count = ndimage.label(mask, structure=_CONNECTIVITY_26)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    keep = _largest(mask, components, sizes, box, grid.affine_ras)
    kept_ml = float(sizes[keep - 1]) * voxel_ml
    if kept_ml < min_fragment_ml:
        view[mask] = 0
        kept_ml, touches = 0.0, False
    else:
        view[mask & (components != keep)] = 0
        kept_box = ndimage.find_objects((components == keep).astype(np.uint8))[0]
        absolute = tuple(
            slice(outer.start + inner.start, outer.start + inner.stop)
            for outer, inner in zip(box, kept_box, strict=True)
        )
        touches = _touches_border(absolute, array.shape)
    ordered = sorted((float(s) * voxel_ml for s in sizes), reverse=True)
    return ClassComponents(label, tuple(ordered), kept_ml, touches)


def clean_labels(
    label_map: Volume, *, min_fragment_ml: float = DEFAULT_MIN_FRAGMENT_ML
) -> CleanedLabels:
    """Largest connected component per class, then removal of classes below ``min_fragment_ml``.

    The input is not modified; the result is a uint8 label map on the same grid.
    """
    checked, outer = canonical_in_box(label_map.array)
    array = checked.copy() if checked is label_map.array else checked
    report: dict[int, ClassComponents] = {}
    if outer is None:
        return CleanedLabels(label_map.with_array(array), report)
    # Classes are found inside the foreground box (a crop of a mostly empty map), then their
    # boxes are shifted back to the whole map's indices.
    for index, inner in enumerate(ndimage.find_objects(array[outer])):
        if inner is not None:
            box = tuple(
                slice(o.start + i.start, o.start + i.stop)
                for o, i in zip(outer, inner, strict=True)
            )
            label = index + 1
            report[label] = _clean_class(array, label, box, label_map, min_fragment_ml)
    return CleanedLabels(label_map.with_array(array), report)
