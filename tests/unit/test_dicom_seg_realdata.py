"""DICOM-SEG on the real TotalSegmentator example series (JPEG 2000, UIDs assigned in memory).

TotalSegmentator's own segmentation of the series (``example_seg_dicom.nii.gz``, written by
dcm2niix's grid) is converted to canonical ids and stored as a SEG: T11 and T12 must carry their
SNOMED-CT codes and exactly TotalSegmentator's voxels when read back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from spinecloud_inference.dicom_seg import read_dicom_seg, write_dicom_seg
from spinecloud_shared import labels
from spinecloud_shared.dicom_series import frames_to_array, read_dicom_series, read_series_datasets
from spinecloud_shared.dicom_uids import assign_missing_uids
from spinecloud_shared.dicom_write import write_datasets
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.volume import Volume

pytestmark = pytest.mark.realdata

MODEL = "totalsegmentator@2.0"


@dataclasses.dataclass(frozen=True)
class RealSeries:
    source: Volume
    datasets: list[Dataset]


@pytest.fixture(scope="module")
def real_series(totalseg_example: Path, tmp_path_factory: pytest.TempPathFactory) -> RealSeries:
    """The example series with UIDs assigned, saved under tmp_path and read back."""
    folder = tmp_path_factory.mktemp("ct_with_uids")
    paths = sorted((totalseg_example / "ct_dicom").iterdir())
    write_datasets(assign_missing_uids(paths, key="totalseg-example"), folder)
    datasets, _ = read_series_datasets(folder)
    return RealSeries(read_dicom_series(folder), datasets)


@pytest.fixture(scope="module")
def totalseg_labels(real_series: RealSeries, totalseg_example: Path) -> Volume:
    """TotalSegmentator's segmentation in canonical ids, on the series' own grid."""
    reference = read_nifti(totalseg_example / "example_seg_dicom.nii.gz")
    assert real_series.source.same_grid(reference)
    return real_series.source.with_array(labels.convert(reference.array, "totalseg_v2"))


def test_t11_and_t12_carry_their_codes_and_voxels(
    real_series: RealSeries, totalseg_labels: Volume, tmp_path: Path
) -> None:
    present = {int(v) for v in np.unique(totalseg_labels.array) if v}
    assert present == {18, 19}  # T11, T12
    path = write_dicom_seg(totalseg_labels, real_series.datasets, tmp_path / "seg.dcm", model=MODEL)
    seg = hd.seg.segread(path)
    uids = real_series.source.meta["sop_instance_uids"]
    expected_codes = {"T11": "12989004", "T12": "23215003"}
    assert [d.segment_label for d in seg.SegmentSequence] == ["T11", "T12"]
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        name = description.segment_label
        assert description.segmented_property_type.value == expected_codes[name]
        frames = seg.get_pixels_by_source_instance(
            uids, segment_numbers=[number], assert_missing_frames_are_empty=True
        )[..., 0]
        expected = totalseg_labels.array == labels.by_name(name).id
        assert expected.sum() > 1000
        np.testing.assert_array_equal(frames_to_array(frames) > 0, expected)
    back = read_dicom_seg(pydicom.dcmread(path), real_series.source)
    np.testing.assert_array_equal(back.array, totalseg_labels.array)


def test_round_trip_of_an_asymmetric_label_map_is_exact(
    real_series: RealSeries, tmp_path: Path
) -> None:
    """Bone voxels labelled by side and by slice: any flip of an axis would show."""
    ct = real_series.source.array
    i, _, k = np.indices(ct.shape)
    array = np.zeros(ct.shape, dtype=np.uint8)
    bone = ct > 250
    array[bone & (i < ct.shape[0] // 2)] = 20  # L1 on one side
    array[bone & (i >= ct.shape[0] // 2) & (k < 7)] = 21  # L2 on the other, first slices only
    label_map = real_series.source.with_array(array)
    path = write_dicom_seg(label_map, real_series.datasets, tmp_path / "seg.dcm", model=MODEL)
    back = read_dicom_seg(path, real_series.source)
    assert back.same_grid(real_series.source)
    np.testing.assert_array_equal(back.array, array)
