"""Volumes, NIfTI I/O, reorientation, resampling and centroid files keep geometry exact."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spinecloud_shared import geometry
from spinecloud_shared.centroids import centroids_from_labels, read_ctd_json, write_ctd_json
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, NiftiInputError
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.resample import resample_like, resample_to_grid, resample_to_spacing
from spinecloud_shared.volume import Volume

ORIENTATIONS = ["RAS", "LPS", "PIR", "LAS", "ASL"]


def _volume(
    codes: str = "RAS", spacing: tuple[float, float, float] = (0.8, 1.1, 2.5), seed: int = 0
) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 2000, size=(9, 11, 7)).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-40.0, 12.5, 100.0)
    return Volume(array, affine).reoriented(codes)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_nifti_round_trip_keeps_voxels_and_affine(tmp_path: Path, codes: str) -> None:
    volume = _volume(codes)
    assert volume.orientation == codes
    back = read_nifti(write_nifti(volume, tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.affine_ras, volume.affine_ras, atol=1e-5)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_reorientation_keeps_every_voxel_in_place(codes: str) -> None:
    volume = _volume("RAS")
    moved = volume.reoriented(codes)
    ijk = np.argwhere(np.ones(volume.shape, dtype=bool))
    world = volume.world_coordinates(ijk)
    inverse = np.linalg.inv(moved.affine_ras)
    moved_ijk = np.rint(geometry.apply_affine(inverse, world)).astype(int)
    np.testing.assert_array_equal(moved.array[tuple(moved_ijk.T)], volume.array[tuple(ijk.T)])
    np.testing.assert_allclose(sorted(moved.spacing_mm), sorted(volume.spacing_mm))
    np.testing.assert_array_equal(moved.reoriented("RAS").array, volume.array)


def test_lps_ras_conversion_is_an_involution() -> None:
    points = np.array([[1.0, -2.0, 3.0], [0.0, 5.5, -7.0]])
    np.testing.assert_array_equal(geometry.lps_to_ras_points(points)[0], [-1.0, 2.0, 3.0])
    np.testing.assert_array_equal(
        geometry.ras_to_lps_points(geometry.lps_to_ras_points(points)), points
    )
    affine = _volume("PIR").affine_ras
    np.testing.assert_array_equal(
        geometry.ras_to_lps_affine(geometry.lps_to_ras_affine(affine)), affine
    )


def test_bad_nifti_files_are_named_in_the_error(tmp_path: Path) -> None:
    nan_path = tmp_path / "nan.nii.gz"
    data = np.zeros((3, 3, 3), dtype=np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan_path))
    with pytest.raises(NiftiInputError, match=r"nan\.nii\.gz.*NaN"):
        read_nifti(nan_path)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), str(empty))
    assert read_nifti(empty).shape == (3, 3, 3)
    with pytest.raises(NiftiInputError, match="every voxel is zero"):
        read_nifti(empty, allow_empty=False)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti")
    with pytest.raises(NiftiInputError, match=r"junk\.nii\.gz"):
        read_nifti(junk)
    with pytest.raises(NiftiInputError, match="no such file"):
        read_nifti(tmp_path / "absent.nii.gz")
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.uint8), np.eye(4)), str(four_d))
    with pytest.raises(NiftiInputError, match="3D"):
        read_nifti(four_d)


def test_volume_refuses_bad_geometry() -> None:
    with pytest.raises(GeometryMismatchError, match="3D"):
        Volume(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(GeometryMismatchError, match="singular"):
        Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    volume = _volume()
    with pytest.raises(GeometryMismatchError, match="does not fit"):
        volume.with_array(np.zeros((2, 2, 2)))
    with pytest.raises(GeometryMismatchError, match="not on the same grid"):
        volume.require_same_grid(volume.reoriented("LPS"), what="image and mask")


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_resampling_onto_own_grid_is_identity(codes: str) -> None:
    volume = _volume(codes)
    for method in ("nearest", "linear", "bspline"):
        np.testing.assert_array_equal(
            resample_like(volume, volume, interpolation=method).array, volume.array
        )


def test_nearest_resampling_of_labels_lands_on_the_same_world_positions() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[5:9, 6:12, 10:15] = 20
    labels[12:15, 2:4, 2:5] = 26
    volume = Volume(labels, np.diag([1.0, 1.0, 2.0, 1.0])).reoriented("LPS")
    target = Volume(np.zeros((40, 40, 40), np.uint8), np.diag([0.5, 0.5, 1.0, 1.0]))
    target = target.with_array(target.array)
    # A finer grid with the same voxel corners: every fine voxel inherits its coarse parent.
    shifted = target.affine_ras.copy()
    shifted[:3, 3] = [-0.25, -0.25, -0.5]
    fine = resample_to_grid(volume, shifted, (40, 40, 40), interpolation="nearest")
    assert set(np.unique(fine.array)) == {0, 20, 26}
    coarse_again = resample_like(fine, volume, interpolation="nearest")
    np.testing.assert_array_equal(coarse_again.array, volume.array)
    before = centroids_from_labels(volume)
    after = centroids_from_labels(fine)
    for label, centre in before.items():
        np.testing.assert_allclose(after[label], centre, atol=1e-6)


def test_resample_to_spacing_keeps_extent_and_orientation() -> None:
    volume = _volume("PIR", spacing=(0.8, 1.1, 2.5))
    out = resample_to_spacing(volume, (1.5, 1.5, 1.5), interpolation="linear")
    assert out.orientation == "PIR"
    np.testing.assert_allclose(out.spacing_mm, (1.5, 1.5, 1.5))
    extent_in = np.asarray(volume.spacing_mm) * volume.shape
    extent_out = np.asarray(out.spacing_mm) * out.shape
    np.testing.assert_allclose(extent_out, extent_in, atol=1.5)
    assert out.array.dtype == np.int16
    constant = volume.with_array(np.full(volume.shape, 300, dtype=np.int16))
    resampled = resample_to_spacing(constant, (0.5, 0.7, 1.3), interpolation="bspline")
    np.testing.assert_array_equal(resampled.array, 300)


@pytest.mark.parametrize("direction", [None, "LPS", "PIR", "ASL", "RAS"])
def test_ctd_json_round_trip(tmp_path: Path, direction: str | None) -> None:
    labels = np.zeros((12, 14, 16), dtype=np.uint8)
    labels[2:5, 3:8, 4:9] = 19
    labels[7:11, 6:12, 10:15] = 20
    grid = Volume(labels, np.diag([0.9, 1.2, 2.0, 1.0])).reoriented("LAS")
    centroids = centroids_from_labels(grid)
    path = write_ctd_json(centroids, grid, tmp_path / "sub-1_ctd.json", direction=direction)
    back = read_ctd_json(path, grid)
    assert back.keys() == centroids.keys()
    for label in centroids:
        np.testing.assert_allclose(back[label], centroids[label], atol=1e-3)


def test_ctd_json_coordinates_are_voxels_in_the_declared_direction(tmp_path: Path) -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2, 3, 4] = 20
    grid = Volume(labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    path = write_ctd_json(centroids_from_labels(grid), grid, tmp_path / "c.json", direction="LPS")
    text = path.read_text()
    head, entry = json.loads(text)
    assert head == {"direction": ["L", "P", "S"]}
    assert (entry["X"], entry["Y"], entry["Z"]) == (7.0, 6.0, 4.0)


def test_bad_ctd_json_is_refused(tmp_path: Path) -> None:
    grid = _volume()
    path = tmp_path / "bad.json"
    path.write_text('[{"direction": ["L", "P", "S"]}, {"label": 99, "X": 1, "Y": 2, "Z": 3}]')
    with pytest.raises(InvalidInputError, match=r"bad\.json"):
        read_ctd_json(path, grid)
