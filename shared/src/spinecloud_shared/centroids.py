"""Vertebra centroids: computed from label maps, and VerSe ``_ctd.json`` files.

A centroid here is the centre of mass of a class's voxels in RAS millimetres. VerSe centroid
files store voxel coordinates of the image, with the axes reoriented to the codes given in
their first entry (``{"direction": ["P", "I", "R"]}``, nibabel axis codes); they are converted
to and from world coordinates against the grid they belong to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError, LabelError
from spinecloud_shared.volume import Volume

Centroids = dict[int, npt.NDArray[np.float64]]


def voxel_centres(
    label_map: npt.NDArray[np.uint8], origin: tuple[int, int, int] = (0, 0, 0)
) -> dict[int, npt.NDArray[np.float64]]:
    """Centre of mass, in voxel indices ``(i, j, k)``, of every non-zero class of a uint8 map.

    ``origin`` is the index of ``label_map[0, 0, 0]`` in a larger map when a crop of it is
    given; the result is then in the larger map's indices (exactly as if it had been given).

    Each class is measured inside its bounding box (``ndimage.find_objects``), so the cost
    follows the size of the classes, not of the scan: ``bench/inference_e2e.py`` showed
    ``ndimage.center_of_mass`` over a whole 512 x 512 x 300 map (float64 index grids of the
    full volume) taking about a third of the job's time.
    """
    centres: dict[int, npt.NDArray[np.float64]] = {}
    for index, box in enumerate(ndimage.find_objects(label_map)):
        if box is not None:
            points = np.nonzero(label_map[box] == index + 1)
            offsets = [s.start + o for s, o in zip(box, origin, strict=True)]
            centres[index + 1] = np.array(
                [float(p.mean()) + o for p, o in zip(points, offsets, strict=True)]
            )
    return centres


def foreground_box(label_map: npt.NDArray[np.uint8]) -> tuple[slice, slice, slice] | None:
    """The smallest box ``(i, j, k)`` slices holding every non-zero voxel; None when there is none.

    Label maps on a 512 x 512 x 300 CT grid are mostly background: ``bench/inference_e2e.py``
    showed each whole-volume pass (validation, counts, centroids) costing 0.3-1.5 s, so the
    inference outputs find this box once per call with three maxima (cheap on uint8) and work
    inside it.
    """
    nx = label_map.shape[0]
    rows = np.flatnonzero(label_map.reshape(nx, -1).max(axis=1))
    if rows.size == 0:
        return None
    i = slice(int(rows[0]), int(rows[-1]) + 1)
    slab = label_map[i]
    cols = np.flatnonzero(slab.max(axis=(0, 2)))
    planes = np.flatnonzero(slab.max(axis=(0, 1)))
    return i, slice(int(cols[0]), int(cols[-1]) + 1), slice(int(planes[0]), int(planes[-1]) + 1)


def canonical_in_box(
    label_map: npt.NDArray[np.generic],
) -> tuple[npt.NDArray[np.uint8], tuple[slice, slice, slice] | None]:
    """``labels.check_canonical`` of a label map, and its foreground box (``foreground_box``).

    A uint8 map is validated inside its foreground box only (every non-zero voxel lies there,
    so the check is the same) and returned as is, without the full-size copy
    ``check_canonical`` makes; other dtypes take ``check_canonical`` on the whole array.
    """
    arr = np.asarray(label_map)
    if arr.dtype == np.uint8 and arr.ndim == 3:
        box = foreground_box(arr)
        if box is not None:
            labels.check_canonical(arr[box])
        return arr, box
    checked = labels.check_canonical(arr)
    return checked, foreground_box(checked)


def centroids_from_labels(label_map: Volume) -> Centroids:
    """Centre of mass (RAS mm) of every canonical class present in a label map."""
    arr, box = canonical_in_box(label_map.array)
    if box is None:
        return {}
    centres = voxel_centres(arr[box], (box[0].start, box[1].start, box[2].start))
    if not centres:
        return {}
    present = sorted(centres)
    ijk = np.asarray([centres[label] for label in present], dtype=np.float64).reshape(-1, 3)
    world = label_map.world_coordinates(ijk)
    return {label: world[n] for n, label in enumerate(present)}


def _grid_transform(grid: Volume, direction: str) -> npt.NDArray[np.float64]:
    """Orientation transform from the grid's own axes to ``direction``'s axes."""
    start = nio.io_orientation(grid.affine_ras)
    end = nio.axcodes2ornt(tuple(direction.upper()))
    return np.asarray(nio.ornt_transform(start, end), dtype=np.float64)


def _to_direction(
    ijk: npt.NDArray[np.float64], grid: Volume, direction: str
) -> npt.NDArray[np.float64]:
    transform = _grid_transform(grid, direction)
    out = np.empty(3)
    for axis, (new_axis, flip) in enumerate(transform):
        value = ijk[axis]
        out[int(new_axis)] = grid.shape[axis] - 1 - value if flip < 0 else value
    return out


def _from_direction(
    xyz: npt.NDArray[np.float64], grid: Volume, direction: str
) -> npt.NDArray[np.float64]:
    transform = _grid_transform(grid, direction)
    ijk = np.empty(3)
    for axis, (new_axis, flip) in enumerate(transform):
        value = xyz[int(new_axis)]
        ijk[axis] = grid.shape[axis] - 1 - value if flip < 0 else value
    return ijk


def write_ctd_json(
    centroids: Mapping[int, npt.ArrayLike],
    grid: Volume,
    path: str | Path,
    *,
    direction: str | None = None,
) -> Path:
    """Write centroids (label -> RAS mm) as a VerSe ``_ctd.json`` for the image on ``grid``.

    ``direction`` defaults to the grid's own axis codes, so X, Y, Z are its voxel indices.
    """
    direction = (direction or grid.orientation).upper()
    inverse = np.linalg.inv(grid.affine_ras)
    entries: list[dict[str, object]] = [{"direction": list(direction)}]
    for label in sorted(centroids, key=lambda i: labels.by_id(i).order):
        world = np.asarray(centroids[label], dtype=np.float64)
        ijk = inverse[:3, :3] @ world + inverse[:3, 3]
        x, y, z = _to_direction(ijk, grid, direction)
        entries.append(
            {
                "label": int(label),
                "X": round(float(x), 4),
                "Y": round(float(y), 4),
                "Z": round(float(z), 4),
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One entry a line, as the VerSe files are laid out.
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")
    return path


def read_ctd_json(path: str | Path, grid: Volume) -> Centroids:
    """Read a VerSe ``_ctd.json`` as label -> RAS mm, given the grid of its image."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
        head, *points = entries
        direction = "".join(head["direction"])
        result: Centroids = {}
        for entry in points:
            label = int(entry["label"])
            labels.by_id(label)
            xyz = np.array([entry["X"], entry["Y"], entry["Z"]], dtype=np.float64)
            ijk = _from_direction(xyz, grid, direction)
            result[label] = grid.world_coordinates(ijk)
    except (OSError, ValueError, KeyError, TypeError, LabelError) as exc:
        raise InvalidInputError(
            f"{path}: not a valid VerSe centroid file ({exc}).", path=str(path)
        ) from exc
    return result
