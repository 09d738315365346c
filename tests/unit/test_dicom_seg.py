"""DICOM-SEG round trips on phantom CT series: written, saved, read back voxel for voxel.

Each case writes a phantom CT as a DICOM series, reads it with our reader, writes the phantom's
exact label map (moved onto the DICOM grid) as a SEG file, and reads the file back with pydicom
and highdicom. Orientations with a positive determinant (RAS, LPS, PIR) have their slice axis
reversed by the DICOM grid; reversed InstanceNumbers and anisotropic voxels prove that nothing
relies on file order or cubic voxels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from spinecloud_inference.dicom_seg import (
    SEG_SERIES_NUMBER,
    ModelRef,
    build_dicom_seg,
    read_dicom_seg,
    seg_uids,
    write_dicom_seg,
)
from spinecloud_shared import labels
from spinecloud_shared.dicom_series import read_dicom_series, read_series_datasets, to_dicom_grid
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, LabelError
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

MODEL = ModelRef("segresnet", "1.2.0")


@dataclasses.dataclass(frozen=True)
class Case:
    """A phantom CT series on disk, read back, with its labels on the series' DICOM grid."""

    source: Volume
    datasets: list[Dataset]
    labels: Volume
    folder: Path


def make_case(
    folder: Path,
    *,
    orientation: str,
    spacing_mm: tuple[float, float, float] = (2.5, 2.5, 2.5),
    reverse_instance_numbers: bool = False,
    levels: tuple[str, str] = ("T12", "L3"),
) -> Case:
    spec = PhantomSpec(seed=7, levels=levels, spacing_mm=spacing_mm, orientation=orientation)
    phantom = generate_phantom(spec)
    ct_dir = folder / "ct"
    write_ct_series(
        phantom.ct,
        ct_dir,
        key=f"seg-test:{orientation}:{spacing_mm}",
        reverse_instance_numbers=reverse_instance_numbers,
    )
    source = read_dicom_series(ct_dir)
    on_grid = to_dicom_grid(phantom.labels)
    assert source.same_grid(on_grid)
    datasets, _ = read_series_datasets(ct_dir)
    return Case(source, datasets, on_grid, folder)


CASES: dict[str, dict[str, Any]] = {
    "RAS": {"orientation": "RAS"},
    "LPS-anisotropic": {"orientation": "LPS", "spacing_mm": (2.0, 3.0, 2.5)},
    "PIR-reversed-numbers": {
        "orientation": "PIR",
        "spacing_mm": (3.0, 2.0, 2.5),
        "reverse_instance_numbers": True,
    },
    "LAS-reversed-numbers": {"orientation": "LAS", "reverse_instance_numbers": True},
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp(request.param), **CASES[request.param])


@pytest.fixture(scope="module")
def seg_file(case: Case) -> Path:
    # Source files in reverse order: the writer must sort them along the normal itself.
    return write_dicom_seg(
        case.labels, case.datasets[::-1], case.folder / "seg.dcm", model=MODEL.ref
    )


def test_label_map_read_back_is_identical(case: Case, seg_file: Path) -> None:
    back = read_dicom_seg(pydicom.dcmread(seg_file), case.source)
    assert back.same_grid(case.labels)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, case.labels.array)
    assert back.meta["seg_sop_instance_uid"] == pydicom.dcmread(seg_file).SOPInstanceUID
    # A highdicom object and a path are accepted as well.
    np.testing.assert_array_equal(read_dicom_seg(seg_file, case.source).array, back.array)


def test_each_segment_holds_exactly_its_vertebra(case: Case, seg_file: Path) -> None:
    """Per segment, straight from highdicom: the mask of frame k is the labels of slice k."""
    seg = hd.seg.segread(seg_file)
    uids = case.source.meta["sop_instance_uids"]
    for number in seg.segment_numbers:
        vertebra = labels.by_name(seg.get_segment_description(number).segment_label)
        mask = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], assert_missing_frames_are_empty=True
        )[..., 0]
        expected = case.labels.array == vertebra.id
        # Frame k, row r, column c is voxel (c, rows - 1 - r, k) of our grid.
        np.testing.assert_array_equal(mask.transpose(2, 1, 0)[:, ::-1, :] > 0, expected)


def test_segments_carry_names_codes_colours_and_algorithm(case: Case, seg_file: Path) -> None:
    seg = hd.seg.segread(seg_file)
    present = [int(v) for v in np.unique(case.labels.array) if v]
    expected = sorted(present, key=lambda i: labels.by_id(i).order)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.number_of_segments == len(expected)
    for number, label_id in zip(seg.segment_numbers, expected, strict=True):
        vertebra = labels.by_id(label_id)
        description = seg.get_segment_description(number)
        assert description.segment_label == vertebra.name
        category = description.segmented_property_category
        assert (category.value, category.scheme_designator) == ("123037004", "SCT")
        assert category.meaning == "Anatomical Structure"
        code = description.segmented_property_type
        assert (code.value, code.scheme_designator) == (vertebra.snomed_code, "SCT")
        assert code.meaning == vertebra.snomed_meaning
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification
        assert algorithm is not None
        assert (algorithm[0].AlgorithmName, algorithm[0].AlgorithmVersion) == ("segresnet", "1.2.0")
        assert algorithm[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
        assert np.allclose(lab.to_rgb(), vertebra.color_rgb, atol=2)


def test_seg_references_the_source_series(case: Case, seg_file: Path) -> None:
    ds = pydicom.dcmread(seg_file)
    meta = case.source.meta
    assert ds.Modality == "SEG"
    assert ds.StudyInstanceUID == meta["study_instance_uid"]
    assert ds.FrameOfReferenceUID == meta["frame_of_reference_uid"]
    assert ds.SeriesNumber == SEG_SERIES_NUMBER
    assert ds.SeriesDescription == "SpineCloud vertebrae (segresnet@1.2.0)"
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == meta["series_instance_uid"]
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced == set(meta["sop_instance_uids"])
    # Every frame names the source slice it was derived from.
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID in referenced


def test_rerun_gives_the_same_uids(case: Case, seg_file: Path, tmp_path: Path) -> None:
    again = pydicom.dcmread(
        write_dicom_seg(case.labels, case.datasets, tmp_path / "again.dcm", model=MODEL)
    )
    first = pydicom.dcmread(seg_file)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        first.SeriesInstanceUID,
        first.SOPInstanceUID,
    )
    expected = seg_uids(case.source.meta["series_instance_uid"], MODEL)
    assert first.SeriesInstanceUID == expected.series_instance_uid
    assert first.SOPInstanceUID == expected.sop_instance_uid
    assert first.SeriesInstanceUID != case.source.meta["series_instance_uid"]


def test_uids_depend_on_every_part_of_the_job_key() -> None:
    base = seg_uids("1.2.3", "segresnet@1.2.0")
    others = [
        seg_uids("1.2.4", "segresnet@1.2.0"),
        seg_uids("1.2.3", "nnunet@1.2.0"),
        seg_uids("1.2.3", "segresnet@1.2.1"),
    ]
    uids = {base.series_instance_uid, base.sop_instance_uid}
    for other in others:
        uids |= {other.series_instance_uid, other.sop_instance_uid}
    assert len(uids) == 8
    assert all(len(uid) <= 64 for uid in uids)


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def ras_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(tmp_path_factory.mktemp("refusals"), orientation="RAS", levels=("L1", "L2"))


def test_unknown_label_id_raises_label_error(ras_case: Case) -> None:
    array = ras_case.labels.array.copy()
    array[array == 20] = 99
    with pytest.raises(LabelError, match="99"):
        build_dicom_seg(ras_case.labels.with_array(array), ras_case.datasets, model=MODEL)


def test_empty_label_map_raises_label_error(ras_case: Case) -> None:
    empty = ras_case.labels.with_array(np.zeros(ras_case.labels.shape, dtype=np.uint8))
    with pytest.raises(LabelError, match="no vertebra"):
        build_dicom_seg(empty, ras_case.datasets, model=MODEL)


def test_label_map_off_the_dicom_grid_is_refused(ras_case: Case) -> None:
    """The phantom's own RAS grid has k reversed with respect to the series: refused."""
    flipped = ras_case.labels.reoriented("RAS")
    assert not flipped.same_grid(ras_case.labels)
    with pytest.raises(GeometryMismatchError, match="to_dicom_grid"):
        build_dicom_seg(flipped, ras_case.datasets, model=MODEL)


def test_model_reference_needs_a_version(ras_case: Case) -> None:
    with pytest.raises(InvalidInputError, match="version"):
        build_dicom_seg(ras_case.labels, ras_case.datasets, model="segresnet")


def test_seg_of_another_series_is_refused(ras_case: Case, tmp_path: Path) -> None:
    seg = build_dicom_seg(ras_case.labels, ras_case.datasets, model=MODEL)
    other = make_case(tmp_path, orientation="LAS", levels=("L1", "L2"))
    with pytest.raises(GeometryMismatchError):
        read_dicom_seg(seg, other.source)


def test_transitional_vertebra_round_trips_through_its_label(ras_case: Case) -> None:
    """T13 has the generic code 'Vertebra': the segment label tells it apart from L6."""
    array = ras_case.labels.array.copy()
    array[array == 20] = 28  # L1 becomes T13
    array[array == 21] = 25  # L2 becomes L6
    transitional = ras_case.labels.with_array(array)
    seg = build_dicom_seg(transitional, ras_case.datasets, model=MODEL)
    types = {d.segment_label: d.segmented_property_type.value for d in seg.SegmentSequence}
    assert types["T13"] == types["L6"] == labels.GENERIC_VERTEBRA_CODE[0]
    back = read_dicom_seg(seg, ras_case.source)
    np.testing.assert_array_equal(back.array, array)


def _description(number: int, name: str) -> hd.seg.SegmentDescription:
    vertebra = labels.by_name(name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=hd.sr.CodedConcept(*labels.CATEGORY_CODE),
        segmented_property_type=hd.sr.CodedConcept(
            vertebra.snomed_code, "SCT", vertebra.snomed_meaning
        ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def _manual_seg(case: Case, masks: np.ndarray, names: list[str]) -> hd.seg.Segmentation:
    """A SEG such as a viewer stores, segments in the given order (not ours)."""
    return hd.seg.Segmentation(
        source_images=case.datasets,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(n, name) for n, name in enumerate(names, start=1)],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )


def _frames(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array[:, ::-1, :].transpose(2, 1, 0))


def test_segments_map_back_by_code_not_by_number(ras_case: Case) -> None:
    """A correction whose segment 1 is L2 and segment 2 is L1 still gives canonical ids."""
    arr = ras_case.labels.array
    masks = np.stack([_frames(arr == 21), _frames(arr == 20)], axis=-1).astype(np.uint8)
    seg = _manual_seg(ras_case, masks, ["L2", "L1"])
    back = read_dicom_seg(seg, ras_case.source)
    expected = np.where(np.isin(arr, (20, 21)), arr, 0)
    np.testing.assert_array_equal(back.array, expected)


def test_overlapping_segments_raise_label_error(ras_case: Case) -> None:
    arr = ras_case.labels.array
    l1 = arr == 20
    both = l1 | (arr == 21)
    masks = np.stack([_frames(l1), _frames(both)], axis=-1).astype(np.uint8)
    seg = _manual_seg(ras_case, masks, ["L1", "L2"])
    with pytest.raises(LabelError, match="overlap"):
        read_dicom_seg(seg, ras_case.source)
