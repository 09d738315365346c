"""A spine-like pair of label maps for the metrics benchmark: reference and perturbed prediction.

25 stacked vertebrae (C1-L5 and the sacrum, canonical ids) along the k axis, each a
vertebral body (elliptic cylinder) plus a posterior arch (box) and a spinous process, sized
like real vertebrae in millimetres. The prediction moves some vertebrae by a few voxels,
grows or shrinks others, roughens every boundary and adds a few stray false-positive
fragments, so every metric has work to do.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared.labels import STANDARD_IDS

Spacing = tuple[float, float, float]


def _vertebra_mask(
    shape_vox: tuple[int, int, int], spacing: Spacing, size_mm: float
) -> npt.NDArray[np.bool_]:
    """One vertebra in its own box: body (elliptic cylinder) + arch + spinous process."""
    ii, jj = np.meshgrid(
        (np.arange(shape_vox[0]) - shape_vox[0] / 2) * spacing[0],
        np.arange(shape_vox[1]) * spacing[1],
        indexing="ij",
    )
    body_r_x, body_r_y = 20.0 * size_mm, 15.0 * size_mm
    body = (ii / body_r_x) ** 2 + ((jj - body_r_y) / body_r_y) ** 2 <= 1.0
    ring = (ii / (body_r_x * 0.8)) ** 2 + ((jj - 2.6 * body_r_y) / (body_r_y * 0.8)) ** 2
    arch = (ring <= 1.0) & (ring >= 0.45)
    process = (np.abs(ii) <= 3.0) & (jj >= 3.2 * body_r_y) & (jj <= 4.2 * body_r_y)
    plane = body | arch | process
    mask = np.repeat(plane[:, :, None], shape_vox[2], axis=2)
    mask[:, :, 0] = mask[:, :, -1] = False  # intervertebral gaps
    return mask


def spine_phantom(
    shape: tuple[int, int, int] = (512, 512, 300),
    spacing: Spacing = (0.8, 0.8, 1.0),
) -> npt.NDArray[np.uint8]:
    """Reference label map: the 25 standard classes stacked head (high k) to feet (low k)."""
    ref = np.zeros(shape, dtype=np.uint8)
    height = shape[2] // len(STANDARD_IDS)
    for n, label in enumerate(STANDARD_IDS):
        size = 0.6 + 0.5 * n / len(STANDARD_IDS) + (0.3 if label == 26 else 0.0)
        nx, ny = int(50 * size / spacing[0]), int(75 * size / spacing[1])
        k0 = shape[2] - (n + 1) * height
        i0, j0 = shape[0] // 2 - nx // 2, shape[1] // 2 - ny // 3
        mask = _vertebra_mask((nx, ny, height), spacing, size)
        region = ref[i0 : i0 + nx, j0 : j0 + ny, k0 : k0 + height]
        region[mask] = label
    return ref


def perturbed_prediction(ref: npt.NDArray[np.uint8], seed: int = 0) -> npt.NDArray[np.uint8]:
    """A plausible prediction: shifted, grown, shrunk and rough vertebrae, stray fragments."""
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(ref)
    boxes = ndimage.find_objects(ref)
    for label in STANDARD_IDS:
        box = boxes[label - 1]
        if box is None:
            continue
        padded = tuple(
            slice(max(s.start - 4, 0), min(s.stop + 4, n))
            for s, n in zip(box, ref.shape, strict=True)
        )
        mask = ref[padded] == label
        action = label % 4
        if action == 0:
            mask = np.roll(mask, shift=int(rng.integers(1, 4)), axis=int(rng.integers(0, 2)))
        elif action == 1:
            mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)))
        elif action == 2:
            mask = ndimage.binary_erosion(mask, iterations=1)
        noise = rng.random(mask.shape) < 0.02
        edge = mask ^ ndimage.binary_erosion(mask)
        mask = mask ^ (edge & noise)
        target = pred[padded]
        target[mask & (target == 0)] = label
    for label in rng.choice(STANDARD_IDS, size=4, replace=False):
        i, j, k = (int(rng.integers(20, n - 20)) for n in ref.shape)
        pred[i : i + 5, j : j + 4, k : k + 3] = label
    return pred
