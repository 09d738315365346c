"""Shared helpers of the metrics tests (no tests here): phantom masks and case folders.

Small balls, boxes and smoothed random blobs for the panel and reference tests; folders of
phantom cases with two models' predictions for the CLI, report and task tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import PhantomSpec, generate_phantom

ANISO = (0.8, 1.3, 2.0)


def ball(
    shape: tuple[int, int, int],
    centre: tuple[float, ...],
    radii_mm: tuple[float, ...],
    spacing: tuple[float, float, float] = ANISO,
) -> npt.NDArray[np.uint8]:
    """An ellipsoid with semi-axes in mm, on an anisotropic grid."""
    grid = np.indices(shape).astype(np.float64)
    inside = sum(((grid[a] - centre[a]) * spacing[a] / radii_mm[a]) ** 2 for a in range(3))
    return (inside <= 1.0).astype(np.uint8)


def blob_pair(
    seed: int, shape: tuple[int, int, int] = (40, 36, 30)
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A random smooth reference blob and a noisy, slightly smaller prediction of it."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 3)
    ref = field > np.quantile(field, 0.7)
    noisy = ndimage.gaussian_filter(field + 0.02 * rng.standard_normal(shape), 1)
    pred = noisy > np.quantile(field, 0.72)
    return pred.astype(np.uint8), ref.astype(np.uint8)


def _worse(arr: np.ndarray, seed: int) -> np.ndarray:
    """Model 'rough': every vertebra eroded by one voxel, one level moved by two voxels."""
    out = np.zeros_like(arr)
    for label in np.unique(arr[arr > 0]):
        out[ndimage.binary_erosion(arr == label)] = label
    moved = int(np.unique(arr[arr > 0])[seed % 3])
    mask = out == moved
    out[mask] = 0
    out[np.roll(mask, 2, axis=0)] = moved
    return out


def write_cases(root: Path, n_cases: int = 6) -> dict[str, Path]:
    """``root/ref``, ``root/good`` (perfect but one voxel layer added on one level) and
    ``root/rough``; returns the folders by name."""
    folders = {name: root / name for name in ("ref", "good", "rough")}
    for seed in range(n_cases):
        spec = PhantomSpec(seed=seed, levels=("T11", "L2"), spacing_mm=(3.0, 3.0, 3.0), noise_hu=0)
        labels = generate_phantom(spec).labels
        arr = np.asarray(labels.array)
        good = arr.copy()
        first = int(np.unique(arr[arr > 0])[0])
        good[ndimage.binary_dilation(arr == first) & (arr == 0)] = first
        name = f"case{seed:02d}.nii.gz"
        write_nifti(labels, folders["ref"] / name)
        write_nifti(labels.with_array(good), folders["good"] / name)
        write_nifti(labels.with_array(_worse(arr, seed)), folders["rough"] / name)
    return folders
