"""DICOM CT series: write -> read round trips in every orientation, and every refusal."""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
from pathlib import Path

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SegmentationStorage,
)
from scipy.spatial.transform import Rotation

from spinecloud_shared.dicom_series import (
    array_to_frames,
    dicom_plane_geometry,
    frames_to_array,
    read_dicom_series,
    read_series_datasets,
    to_dicom_grid,
)
from spinecloud_shared.dicom_write import (
    PixelFormat,
    SeriesIdentity,
    ct_series_datasets,
    encode_dataset,
    write_ct_series,
    write_datasets,
)
from spinecloud_shared.errors import (
    CorruptFileError,
    GantryTiltError,
    GeometryMismatchError,
    MissingUidError,
    MixedSeriesError,
    NonImageObjectError,
    NotCtError,
    SliceGeometryError,
)
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.volume import Volume

SHAPE = (24, 20, 12)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (12.5, -31.25, 40.0)


def axis_affine(
    codes: str, spacing: tuple[float, float, float] = SPACING
) -> npt.NDArray[np.float64]:
    """A voxel->RAS affine whose axes run along ``codes`` (e.g. 'PIR'), with ``spacing``."""
    affine = np.eye(4)
    for axis, (world, flip) in enumerate(nio.axcodes2ornt(tuple(codes))):
        affine[:3, axis] = 0.0
        affine[int(world), axis] = flip * spacing[axis]
    affine[:3, 3] = ORIGIN
    return affine


def oblique_affine(*, flip_k: bool) -> npt.NDArray[np.float64]:
    """An oblique grid (rotated 20/-35/50 degrees), right- or left-handed."""
    rotation = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    if flip_k:
        affine[:3, 2] *= -1.0
    affine[:3, 3] = ORIGIN
    return affine


def ct_volume(affine: npt.NDArray[np.float64], shape: tuple[int, int, int] = SHAPE) -> Volume:
    """A small HU volume: air, a soft-tissue block and a bone block, plus noise (no symmetry)."""
    rng = np.random.default_rng(sum(shape))
    array = np.full(shape, -1000, dtype=np.int16)
    array[2:-3, 3:-2, 1:-1] = 40
    array[5:9, 4:12, 2:7] = 900
    array += rng.integers(-20, 20, size=shape, dtype=np.int16)
    return Volume(array, affine)


def identity(key: str = "test-series") -> SeriesIdentity:
    return SeriesIdentity.from_key(key)


def series(volume: Volume, transfer_syntax: str = ExplicitVRLittleEndian) -> list[Dataset]:
    """The volume as in-memory CT datasets."""
    return ct_series_datasets(volume, identity(), transfer_syntax=transfer_syntax)


def assert_same_volume(actual: Volume, expected: Volume) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.affine_ras, expected.affine_ras, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(actual.array, expected.array)


# --------------------------------------------------------------------------- round trips

ORIENTATIONS = {
    "LAS": axis_affine("LAS"),
    "RAS": axis_affine("RAS"),
    "LPS": axis_affine("LPS"),
    "PIR": axis_affine("PIR"),
    "ASL": axis_affine("ASL"),
    "oblique-left-handed": oblique_affine(flip_k=True),
    "oblique-right-handed": oblique_affine(flip_k=False),
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_round_trip_any_orientation(name: str, tmp_path: Path) -> None:
    volume = ct_volume(ORIENTATIONS[name])
    write_ct_series(volume, tmp_path, key=name)
    back = read_dicom_series(tmp_path)
    assert back.array.dtype == np.int16
    assert_same_volume(back, to_dicom_grid(volume))
    # Every read grid is left-handed: k along -(i x j); right-handed inputs come back k-flipped.
    assert np.linalg.det(back.affine_ras[:3, :3]) < 0
    if np.linalg.det(volume.affine_ras[:3, :3]) < 0:
        assert_same_volume(back, volume)
    else:
        assert_same_volume(back.reoriented(volume.orientation), volume)


def test_reversed_instance_numbers_are_ignored(tmp_path: Path) -> None:
    volume = ct_volume(axis_affine("LAS"))
    paths = write_ct_series(volume, tmp_path, key="rev", reverse_instance_numbers=True)
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert numbers == sorted(numbers, reverse=True)
    assert_same_volume(read_dicom_series(tmp_path), volume)


def test_slices_stored_against_the_normal_are_sorted_along_it(tmp_path: Path) -> None:
    volume = ct_volume(axis_affine("LAI"))  # k runs inferior: against the axial normal
    write_ct_series(volume, tmp_path, key="lai")
    back = read_dicom_series(list(reversed(sorted(tmp_path.iterdir()))))
    assert back.orientation == "LAS"
    assert_same_volume(back, volume.reoriented("LAS"))


def test_anisotropic_spacing_survives(tmp_path: Path) -> None:
    spacing = (0.5, 0.7, 3.0)
    volume = ct_volume(axis_affine("LAS", spacing))
    write_ct_series(volume, tmp_path, key="aniso")
    back = read_dicom_series(tmp_path)
    np.testing.assert_allclose(back.spacing_mm, spacing, atol=1e-6)
    assert_same_volume(back, volume)


def test_bytes_and_dataset_inputs_in_any_order() -> None:
    volume = ct_volume(oblique_affine(flip_k=True))
    datasets = series(volume)
    blobs = [encode_dataset(ds) for ds in datasets]
    rng = np.random.default_rng(3)
    shuffled = [blobs[i] for i in rng.permutation(len(blobs))]
    assert_same_volume(read_dicom_series(shuffled), volume)
    assert_same_volume(read_dicom_series(datasets[::-1]), volume)


def test_unsigned_pixels_with_intercept(tmp_path: Path) -> None:
    volume = ct_volume(axis_affine("LAS"))
    paths = write_ct_series(volume, tmp_path, key="u16", pixel_format="uint16")
    first = pydicom.dcmread(paths[0])
    assert first.PixelRepresentation == 0 and float(first.RescaleIntercept) == -1024
    back = read_dicom_series(tmp_path)
    assert back.array.dtype == np.int16
    assert_same_volume(back, volume)


def test_float_rescale_gives_float32() -> None:
    datasets = series(ct_volume(axis_affine("LAS")))
    for ds in datasets:
        ds.RescaleSlope = "0.5"
    back = read_dicom_series(datasets)
    assert back.array.dtype == np.float32
    expected = ct_volume(axis_affine("LAS")).array.astype(np.float32) * 0.5
    np.testing.assert_array_equal(back.array, expected)


@pytest.mark.parametrize(
    ("syntax", "shape"),
    [(RLELossless, SHAPE), (JPEGLSLossless, SHAPE), (JPEG2000Lossless, (40, 36, 4))],
    ids=["rle", "jpeg-ls", "jpeg2000"],
)
def test_compressed_round_trip(syntax: str, shape: tuple[int, int, int], tmp_path: Path) -> None:
    if not get_encoder(syntax).is_available:  # JPEG-LS encoding needs pyjpegls (tests only)
        pytest.skip(f"no encoder installed for {syntax}")
    volume = ct_volume(axis_affine("PIR"), shape)
    paths = write_ct_series(volume, tmp_path, key=f"c-{syntax}", transfer_syntax=syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    assert_same_volume(read_dicom_series(tmp_path), to_dicom_grid(volume))


def test_uids_are_deterministic_and_kept_through_compression() -> None:
    volume = ct_volume(axis_affine("LAS"))
    plain = series(volume)
    again = series(volume, transfer_syntax=RLELossless)
    assert [d.SOPInstanceUID for d in plain] == [d.SOPInstanceUID for d in again]
    assert len({d.SOPInstanceUID for d in plain}) == len(plain)


def test_meta_has_provenance_and_no_identifier_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    volume = ct_volume(axis_affine("LAS"))
    datasets = series(volume)
    with caplog.at_level(logging.DEBUG, logger="spinecloud_shared"):
        back = read_dicom_series(datasets[::-1])
    meta = back.meta
    ident = identity()
    assert meta["study_instance_uid"] == ident.study_instance_uid
    assert meta["series_instance_uid"] == ident.series_instance_uid
    assert meta["frame_of_reference_uid"] == ident.frame_of_reference_uid
    assert meta["modality"] == "CT"
    assert meta["sop_instance_uids"] == [d.SOPInstanceUID for d in datasets]
    assert meta["patient_id"] == ident.patient_id
    assert ident.patient_id not in caplog.text and ident.series_instance_uid not in caplog.text


def test_read_series_datasets_gives_k_order() -> None:
    datasets = series(ct_volume(axis_affine("LAS")))
    ordered, step = read_series_datasets(datasets[::-1])
    assert [d.SOPInstanceUID for d in ordered] == [d.SOPInstanceUID for d in datasets]
    assert step == pytest.approx(SPACING[2])


# --------------------------------------------------------------------------- pure helpers


@given(arrays(np.int16, st.tuples(*(st.integers(1, 5),) * 3)))
def test_frames_to_array_and_back_are_inverse(frames: npt.NDArray[np.int16]) -> None:
    array = frames_to_array(frames)
    assert array.shape == (frames.shape[2], frames.shape[1], frames.shape[0])
    np.testing.assert_array_equal(array_to_frames(array), frames)


def test_frames_to_array_flips_rows() -> None:
    frames = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (slices, rows, cols)
    array = frames_to_array(frames)
    assert array[0, 2, 0] == frames[0, 0, 0]  # first row, first column -> j = rows - 1
    assert array[3, 0, 1] == frames[1, 2, 3]


def test_plane_geometry_matches_the_files() -> None:
    volume = ct_volume(oblique_affine(flip_k=True))
    datasets = series(volume)
    plane = dicom_plane_geometry(read_dicom_series(datasets))
    for k, ds in enumerate(datasets):
        np.testing.assert_allclose(
            plane.positions_lps[k], [float(v) for v in ds.ImagePositionPatient], atol=1e-6
        )
    np.testing.assert_allclose(
        plane.image_orientation_lps,
        [float(v) for v in datasets[0].ImageOrientationPatient],
        atol=1e-9,
    )
    np.testing.assert_allclose(plane.pixel_spacing_mm, [SPACING[1], SPACING[0]], atol=1e-9)
    assert plane.slice_step_mm == pytest.approx(SPACING[2])


# --------------------------------------------------------------------------- writer refusals


def test_writer_refuses_sheared_grid(tmp_path: Path) -> None:
    affine = axis_affine("LAS")
    affine[1, 2] = 0.5  # slices shifted in-plane as k grows: a tilted stack
    with pytest.raises(GeometryMismatchError, match="sheared"):
        write_ct_series(ct_volume(affine), tmp_path, key="shear")


def test_writer_refuses_values_that_do_not_fit(tmp_path: Path) -> None:
    volume = ct_volume(axis_affine("LAS"))
    low = volume.with_array(np.full(SHAPE, -2000, dtype=np.int16))
    with pytest.raises(ValueError, match="uint16"):
        write_ct_series(low, tmp_path, key="low", pixel_format="uint16")
    with pytest.raises(ValueError, match="key"):
        write_ct_series(volume, tmp_path)


def test_writer_uses_explicit_uids(tmp_path: Path) -> None:
    uids = ("1.2.3.4", "1.2.3.5", "1.2.3.6")
    write_ct_series(
        ct_volume(axis_affine("LAS")),
        tmp_path,
        study_instance_uid=uids[0],
        series_instance_uid=uids[1],
        frame_of_reference_uid=uids[2],
    )
    meta = read_dicom_series(tmp_path).meta
    assert (meta["study_instance_uid"], meta["series_instance_uid"]) == uids[:2]
    assert meta["frame_of_reference_uid"] == uids[2]


# --------------------------------------------------------------------------- reader refusals


@pytest.fixture()
def ct_datasets() -> list[Dataset]:
    """A valid 12-slice axial series, in memory, to be damaged by each test."""
    return series(ct_volume(axis_affine("LAS")))


def test_refuses_non_dicom_file(tmp_path: Path, ct_datasets: list[Dataset]) -> None:
    write_datasets(ct_datasets, tmp_path)
    (tmp_path / "notes.txt").write_text("not a DICOM file at all\n")
    with pytest.raises(CorruptFileError, match=r"notes\.txt: not a DICOM file"):
        read_dicom_series(tmp_path)


def test_refuses_truncated_pixels(ct_datasets: list[Dataset]) -> None:
    blobs = [encode_dataset(ds) for ds in ct_datasets]
    blobs[4] = blobs[4][:-200]
    with pytest.raises(CorruptFileError, match=r"bytes #4: pixel data cannot be decoded"):
        read_dicom_series(blobs)


def test_refuses_undecodable_compressed_pixels() -> None:
    datasets = series(ct_volume(axis_affine("LAS")), transfer_syntax=RLELossless)
    datasets[2].PixelData = pydicom.encaps.encapsulate([b"\x00garbage" * 8])
    with pytest.raises(
        CorruptFileError, match=r"cannot be decoded \(transfer syntax 1\.2\.840\.10008\.1\.2\.5\)"
    ):
        read_dicom_series(datasets)


def test_refuses_missing_uids_naming_them(ct_datasets: list[Dataset]) -> None:
    del ct_datasets[3].SeriesInstanceUID
    ct_datasets[5].StudyInstanceUID = ""
    with pytest.raises(MissingUidError) as caught:
        read_dicom_series(ct_datasets)
    message = caught.value.message
    assert "StudyInstanceUID" in message and "SeriesInstanceUID" in message
    assert "SOPInstanceUID" not in message and "2 of 12 files" in message
    assert set(caught.value.details["missing_uids"]) == {"StudyInstanceUID", "SeriesInstanceUID"}


def test_refuses_two_series(ct_datasets: list[Dataset]) -> None:
    other = series(ct_volume(axis_affine("LAS")).with_array(np.zeros(SHAPE, np.int16)))
    for ds in other:
        ds.SeriesInstanceUID = "1.2.3.999"
    with pytest.raises(MixedSeriesError, match="different series UIDs"):
        read_dicom_series([*ct_datasets, *other[:2]])


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("Rows", 21, "image size"),
        ("PixelSpacing", ["1.1", "0.9"], "PixelSpacing differs"),
        (
            "ImageOrientationPatient",
            ["1", "0", "0", "0", "0", "-1"],
            "ImageOrientationPatient differs",
        ),
    ],
)
def test_refuses_mixed_geometry(
    ct_datasets: list[Dataset], keyword: str, value: object, expected: str
) -> None:
    setattr(ct_datasets[6], keyword, value)
    with pytest.raises(MixedSeriesError, match=expected):
        read_dicom_series(ct_datasets)


def test_refuses_the_same_file_twice(ct_datasets: list[Dataset]) -> None:
    with pytest.raises(SliceGeometryError, match="duplicate slice; same SOPInstanceUID"):
        read_dicom_series([*ct_datasets, copy.deepcopy(ct_datasets[4])])


def test_refuses_two_slices_at_one_position(ct_datasets: list[Dataset]) -> None:
    twin = copy.deepcopy(ct_datasets[4])
    twin.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(
        SliceGeometryError, match=r"same position along the slice normal \(duplicate slice\)"
    ):
        read_dicom_series([*ct_datasets, twin])


def test_refuses_missing_slice(ct_datasets: list[Dataset]) -> None:
    del ct_datasets[5]
    with pytest.raises(
        SliceGeometryError, match=r"1 slice\(s\) missing .*gap 5\.000 mm, spacing 2\.500"
    ):
        read_dicom_series(ct_datasets)


def test_refuses_uneven_spacing(ct_datasets: list[Dataset]) -> None:
    position = [float(v) for v in ct_datasets[5].ImagePositionPatient]
    ct_datasets[5].ImagePositionPatient = [position[0], position[1], position[2] + 1.0]
    with pytest.raises(SliceGeometryError, match="Inconsistent slice spacing"):
        read_dicom_series(ct_datasets)


def test_refuses_gantry_tilt(ct_datasets: list[Dataset]) -> None:
    shift = np.tan(np.radians(15.0)) * SPACING[2]
    for k, ds in enumerate(ct_datasets):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * shift, z]
    with pytest.raises(GantryTiltError, match=r"15\.0 degree gantry tilt"):
        read_dicom_series(ct_datasets)


def test_refuses_non_ct_unless_allowed(ct_datasets: list[Dataset]) -> None:
    for ds in ct_datasets:
        ds.Modality = "MR"
    with pytest.raises(NotCtError, match="modality is MR, not CT"):
        read_dicom_series(ct_datasets)
    assert read_dicom_series(ct_datasets, require_ct=False).meta["modality"] == "MR"


def _non_image(modality: str, sop_class: str) -> Dataset:
    ds = copy.deepcopy(series(ct_volume(axis_affine("LAS")))[0])
    ds.Modality, ds.SOPClassUID = modality, sop_class
    if modality == "SR":
        del ds.PixelData
    return ds


@pytest.mark.parametrize(
    ("modality", "sop_class", "expected"),
    [
        ("SR", ComprehensiveSRStorage, "has no pixel data"),
        ("SEG", SegmentationStorage, "is not an image but a Segmentation Storage"),
    ],
)
def test_refuses_non_image_objects(
    ct_datasets: list[Dataset], modality: str, sop_class: str, expected: str
) -> None:
    with pytest.raises(NonImageObjectError, match=expected):
        read_dicom_series([*ct_datasets, _non_image(modality, sop_class)])


def test_refuses_a_single_slice_or_an_empty_folder(
    ct_datasets: list[Dataset], tmp_path: Path
) -> None:
    with pytest.raises(SliceGeometryError, match="at least 2 slices; got 1"):
        read_dicom_series(ct_datasets[:1])
    with pytest.raises(SliceGeometryError, match="at least 2 slices; got 0"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------- dciodvfy


@pytest.mark.integration
@pytest.mark.parametrize(
    ("pixel_format", "syntax", "affine"),
    [
        ("int16", ExplicitVRLittleEndian, axis_affine("LAS")),
        ("uint16", ExplicitVRLittleEndian, oblique_affine(flip_k=False)),
        ("int16", RLELossless, axis_affine("PIR")),
    ],
    ids=["int16-axial", "uint16-oblique", "rle-sagittal"],
)
def test_written_files_pass_dciodvfy(
    pixel_format: PixelFormat, syntax: str, affine: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    paths = write_ct_series(
        ct_volume(affine),
        tmp_path,
        key="dciodvfy",
        pixel_format=pixel_format,
        transfer_syntax=syntax,
    )
    result = subprocess.run([dciodvfy, str(paths[0])], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "CTImage" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


# --------------------------------------------------------------------------- Orthanc


@pytest.mark.integration
@pytest.mark.slow
def test_orthanc_stores_and_returns_the_written_series(tmp_path: Path) -> None:
    """Orthanc accepts the files (plain and JPEG 2000) and gives back the same volume."""
    if shutil.which("Orthanc") is None and shutil.which("Orthanc", path="/usr/sbin") is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    volume = ct_volume(oblique_affine(flip_k=True), (40, 36, 4))
    with LocalOrthanc(tmp_path / "orthanc") as server:
        client = OrthancClient(server.url, server.username, server.password)
        for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless):
            datasets = ct_series_datasets(
                volume, identity(f"orthanc-{syntax}"), transfer_syntax=syntax
            )
            stored = client.store_many(encode_dataset(ds) for ds in datasets)
            assert all(item["Status"] == "Success" for item in stored)
            back = read_dicom_series(client.series_files(stored[0]["ParentSeries"]))
            assert_same_volume(back, volume)
