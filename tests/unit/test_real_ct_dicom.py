"""The real JPEG 2000 CT series of the TotalSegmentator example, read in place.

It was published with empty SOP class/instance, study and series UIDs: the raw files must be
refused, and once given UIDs (in memory, saved under tmp_path, never into the shared folder)
the volume must land on exactly the grid TotalSegmentator (dcm2niix) wrote its output on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.dicom_uids import assign_missing_uids
from spinecloud_shared.dicom_write import write_datasets
from spinecloud_shared.errors import MissingUidError
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.volume import Volume

pytestmark = pytest.mark.realdata

#: TotalSegmentator v2 "total" ids of the vertebrae in example_seg_dicom.nii.gz (T12, T11).
VERTEBRA_IDS = (32, 33)


@pytest.fixture(scope="module")
def ct_dicom(totalseg_example: Path) -> Path:
    return totalseg_example / "ct_dicom"


@pytest.fixture(scope="module")
def repaired_volume(ct_dicom: Path, tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """The series with UIDs assigned, written to a temporary folder and read back from it."""
    folder = tmp_path_factory.mktemp("ct_dicom_with_uids")
    datasets = assign_missing_uids(sorted(ct_dicom.iterdir()), key="totalseg-example")
    write_datasets(datasets, folder)
    return read_dicom_series(folder)


def test_raw_files_are_refused_naming_the_missing_uids(ct_dicom: Path) -> None:
    with pytest.raises(MissingUidError) as caught:
        read_dicom_series(ct_dicom)
    message = caught.value.message
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert keyword in message
    assert "20 of 20 files" in message


def test_repaired_series_keeps_jpeg2000_and_meta_uids(ct_dicom: Path) -> None:
    paths = sorted(ct_dicom.iterdir())
    datasets = assign_missing_uids(paths, key="totalseg-example")
    for path, ds in zip(paths, datasets, strict=True):
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert (
            ds.SOPInstanceUID
            == pydicom.dcmread(path, stop_before_pixels=True)
            .file_meta["MediaStorageSOPInstanceUID"]
            .value
        )
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_volume_lands_on_the_totalsegmentator_grid(
    repaired_volume: Volume, totalseg_example: Path
) -> None:
    reference = read_nifti(totalseg_example / "example_seg_dicom.nii.gz")
    assert repaired_volume.shape == reference.shape == (512, 512, 20)
    np.testing.assert_allclose(repaired_volume.affine_ras, reference.affine_ras, atol=1e-3, rtol=0)
    assert repaired_volume.orientation == "LAS"


def test_segmentation_overlays_bone(repaired_volume: Volume, totalseg_example: Path) -> None:
    """Same voxels, not just the same affine: vertebra labels sit on bone-density voxels.

    A flipped row, column or slice order puts the labels on soft tissue or air instead.
    """
    labels = read_nifti(totalseg_example / "example_seg_dicom.nii.gz").array
    vertebrae = np.isin(labels, VERTEBRA_IDS)
    assert vertebrae.sum() > 1000
    assert np.median(repaired_volume.array[vertebrae]) > 100
    assert np.median(repaired_volume.array[labels == 0]) < -900


def test_jpeg2000_pixels_decode_to_plausible_hu(repaired_volume: Volume) -> None:
    hu = repaired_volume.array
    assert hu.dtype == np.int16
    assert int(hu.min()) >= -1124 and int(hu.max()) <= 3100
    assert np.mean(hu < -900) > 0.2  # air around the patient
    assert np.mean((hu > 0) & (hu < 100)) > 0.05  # soft tissue
    assert np.sum(hu > 300) > 1000  # bone
    assert repaired_volume.meta["modality"] == "CT"
    assert len(repaired_volume.meta["sop_instance_uids"]) == 20
