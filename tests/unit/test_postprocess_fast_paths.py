"""The faster post-processing equals the whole-volume computations it replaced.

``centroids``, ``outputs.voxel_counts``, ``clean_labels`` and the DICOM-SEG work inside the
label map's foreground box; ``resample`` copies arrays to and from SimpleITK plane by plane and
gives the target grid by its parameters. Each is compared with the plain computation on random
label maps, source spacings and orientations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from spinecloud_inference.backends import DEFAULT_MODEL, resolve_model_folder
from spinecloud_inference.outputs import voxel_counts
from spinecloud_inference.pipeline import OUTSIDE_HU, normalise, prepare, to_source_grid
from spinecloud_inference.postprocess import clean_labels, voxel_volume_ml
from spinecloud_shared import labels
from spinecloud_shared.centroids import centroids_from_labels, foreground_box
from spinecloud_shared.models.manifest import read_manifest
from spinecloud_shared.resample import _grid_parameters, grid_for_spacing, resample_to_grid
from spinecloud_shared.volume import Volume

ORIENTATIONS = ("LPS", "RAS", "PIR", "LAS", "ASL")
IDS = np.array([v.id for v in labels.VERTEBRAE], dtype=np.uint8)


AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def _source_grid(
    orientation: str, spacing: tuple[float, float, float], shape: tuple[int, int, int]
) -> Volume:
    """An empty int16 CT of ``shape`` with axes along ``orientation`` at ``spacing``."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for column, (code, step) in enumerate(zip(orientation, spacing, strict=True)):
        row, sign = AXES[code]
        affine[row, column] = sign * step
    affine[:3, 3] = (-40.3, 25.1, 12.7)
    return Volume(np.zeros(shape, dtype=np.int16), affine)


def _blobs(shape: tuple[int, ...], seed: int, count: int) -> npt.NDArray[np.uint8]:
    """Random boxes of random canonical ids (some touching the edges), later ones on top."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=np.uint8)
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        stop = [min(s + int(rng.integers(1, 8)), n) for s, n in zip(start, shape, strict=True)]
        out[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = rng.choice(IDS)
    return out


def _model_grid(ct: Volume, spacing: float) -> Volume:
    oriented = ct.reoriented("RAS")
    affine, shape = grid_for_spacing(oriented, (spacing, spacing, spacing))
    return Volume(np.zeros(shape, dtype=np.float32), affine)


def _plain_sitk(
    volume: Volume, affine: npt.NDArray[np.float64], shape: tuple[int, int, int], method: str
) -> npt.NDArray[Any]:
    """Reference: SimpleITK with a reference image and whole-array transposed copies."""
    source = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    reference = sitk.Image(list(shape), source.GetPixelID())
    for image, grid in ((source, volume.affine_ras), (reference, affine)):
        origin, spacing, direction = _grid_parameters(grid)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
    if method != "nearest" and volume.array.dtype.kind in "iu":
        source = sitk.Cast(source, sitk.sitkFloat32)
    interpolator = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear}[method]
    out = sitk.Resample(source, reference, sitk.Transform(), interpolator, -1024.0)
    array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    if array.dtype != volume.array.dtype:
        info = np.iinfo(volume.array.dtype)
        array = np.clip(np.rint(array), info.min, info.max).astype(volume.array.dtype)
    return np.ascontiguousarray(array)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    orientation=st.sampled_from(ORIENTATIONS),
    spacing=st.sampled_from([(0.8, 0.8, 1.0), (0.7, 0.9, 1.5), (0.75, 0.75, 3.0)]),
    model_spacing=st.sampled_from([2.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_resampling_equals_plain_simpleitk(
    orientation: str, spacing: tuple[float, float, float], model_spacing: float, seed: int
) -> None:
    """Labels back onto the source grid, and CT onto the model grid, bit for bit.

    0.8 mm source voxels put their centres exactly on 3 mm model voxel faces (rounding ties),
    where any change in the arithmetic could flip a voxel: the faster copies change none.
    """
    ct = _source_grid(orientation, spacing, (61, 47, 33))
    model = _model_grid(ct, model_spacing)
    channels = _blobs(model.shape, seed, 6)
    table = np.arange(256, dtype=np.uint8)  # channel = canonical id here
    expected = _plain_sitk(model.with_array(channels), ct.affine_ras, ct.shape, "nearest")
    got = to_source_grid(channels, table, model, ct)
    assert got.array.dtype == np.uint8 and got.array.flags.c_contiguous
    assert np.array_equal(got.array, expected)
    hu = np.random.default_rng(seed).integers(-1000, 2000, ct.shape).astype(np.int16)
    for image in (ct.with_array(hu), ct.with_array(hu.astype(np.float32))):
        expected = _plain_sitk(image, model.affine_ras, model.shape, "linear")
        resampled = resample_to_grid(
            image, model.affine_ras, model.shape, interpolation="linear", fill_value=-1024.0
        )
        assert resampled.array.dtype == image.array.dtype
        assert np.array_equal(resampled.array, expected)


@pytest.mark.parametrize("seed", range(4))
def test_box_helpers_equal_whole_volume_computations(seed: int) -> None:
    ct = _source_grid(ORIENTATIONS[seed], (0.8, 0.8, 1.0), (70, 50, 40))
    label_map = ct.with_array(_blobs(ct.shape, seed, 5))
    array = label_map.array
    box = foreground_box(array)
    nonzero = np.argwhere(array)
    if nonzero.size:
        assert box == tuple(
            slice(int(a), int(b) + 1)
            for a, b in zip(nonzero.min(axis=0), nonzero.max(axis=0), strict=True)
        )
    counts = np.bincount(array.ravel(), minlength=labels.MAX_ID + 1)
    present = [int(i) for i in np.flatnonzero(counts[1:]) + 1]
    by_level = sorted(present, key=lambda i: labels.by_id(i).order)
    assert voxel_counts(label_map) == {i: int(counts[i]) for i in by_level}
    expected = ndimage.center_of_mass(np.ones_like(array), array, present)
    centroids = centroids_from_labels(label_map)
    assert sorted(centroids) == present
    for label, centre in zip(present, expected, strict=True):
        assert np.allclose(centroids[label], label_map.world_coordinates(np.asarray(centre)))
    cleaned = clean_labels(label_map, min_fragment_ml=0.0)
    assert cleaned.labels.array is not array  # the input is left alone
    for label in present:
        mask = array == label
        components, _count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(components.ravel())[1:]
        keep = components == int(np.argmax(sizes)) + 1
        assert np.array_equal(cleaned.labels.array == label, keep)
        voxel_ml = voxel_volume_ml(label_map)
        assert cleaned.components[label].sizes_ml == tuple(
            sorted((float(s) * voxel_ml for s in sizes), reverse=True)
        )


def test_empty_map_has_no_box_and_no_labels() -> None:
    ct = _source_grid("LPS", (0.8, 0.8, 1.0), (20, 20, 10))
    model = _model_grid(ct, 3.0)
    channels = np.zeros(model.shape, dtype=np.uint8)
    assert foreground_box(channels) is None
    result = to_source_grid(channels, np.arange(256, dtype=np.uint8), model, ct)
    assert not result.array.any()
    assert voxel_counts(result) == {}
    assert centroids_from_labels(result) == {}


@pytest.mark.parametrize("orientation", ["LPS", "PIR"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64])
def test_prepare_equals_a_reoriented_float32_copy(orientation: str, dtype: type) -> None:
    """The model input is the same whether the CT is cast and reoriented first or not."""
    manifest = read_manifest(resolve_model_folder(DEFAULT_MODEL), verify=False)
    ct = _source_grid(orientation, (0.8, 0.9, 1.5), (61, 47, 33))
    hu: npt.NDArray[Any] = np.random.default_rng(1).integers(-1000, 2000, ct.shape).astype(dtype)
    oriented = Volume(hu.astype(np.float32), ct.affine_ras).reoriented(manifest.orientation)
    expected = resample_to_grid(
        oriented,
        *grid_for_spacing(oriented, manifest.target_spacing_mm),
        interpolation="linear",
        fill_value=OUTSIDE_HU,
    )
    got = prepare(ct.with_array(hu), manifest)
    assert got.array.dtype == np.float32
    assert np.array_equal(got.affine_ras, expected.affine_ras)
    assert np.array_equal(got.array, normalise(expected.array, manifest.intensity))
