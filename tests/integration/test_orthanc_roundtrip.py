"""Phantom CT series stored in a real Orthanc come back identical through its REST API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from spinecloud_shared.dicom_series import read_dicom_series, to_dicom_grid
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import InvalidInputError, NotFoundError
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

pytestmark = pytest.mark.integration


def _phantom_ct(orientation: str, seed: int) -> Volume:
    spec = PhantomSpec(
        seed=seed, levels=("L3", "sacrum"), spacing_mm=(2.0, 2.0, 3.0), orientation=orientation
    )
    return generate_phantom(spec).ct


def _assert_same(volume: Volume, original: Volume) -> None:
    expected = to_dicom_grid(original)  # same voxels and world positions, dcm2niix's grid
    assert volume.same_grid(expected, atol_mm=1e-4)
    np.testing.assert_array_equal(volume.array, expected.array)


@pytest.mark.parametrize("orientation", ["RAS", "PIR"])
def test_rest_upload_and_download_is_lossless(
    tmp_path: Path, orthanc_client: OrthancClient, orientation: str
) -> None:
    original = _phantom_ct(orientation, seed=3)
    files = write_ct_series(original, tmp_path, key=f"orthanc-rest-{orientation}")
    answers = orthanc_client.store_many(path.read_bytes() for path in files)
    assert {a["Status"] for a in answers} == {"Success"}
    series_id = answers[0]["ParentSeries"]
    assert orthanc_client.find_series(original_series_uid(files)) == series_id
    volume = read_dicom_series(orthanc_client.series_files(series_id))
    _assert_same(volume, original)


def test_storescu_push_is_lossless(
    tmp_path: Path, orthanc: LocalOrthanc, orthanc_client: OrthancClient, storescu: str
) -> None:
    original = _phantom_ct("LPS", seed=4)
    files = write_ct_series(original, tmp_path, key="orthanc-storescu")
    subprocess.run(
        [
            storescu,
            "-aec",
            orthanc.aet,
            "127.0.0.1",
            str(orthanc.dicom_port),
            *[str(p) for p in files],
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    series_id = orthanc_client.find_series(original_series_uid(files))
    assert len(orthanc_client.series_instances(series_id)) == len(files)
    _assert_same(read_dicom_series(orthanc_client.series_files(series_id)), original)


def test_orthanc_errors_are_specific(orthanc_client: OrthancClient) -> None:
    with pytest.raises(NotFoundError, match="no series"):
        orthanc_client.series_instances("0000-not-a-series")
    with pytest.raises(InvalidInputError, match="refused"):
        orthanc_client.store(b"this is not DICOM")


def original_series_uid(files: list[Path]) -> str:
    """SeriesInstanceUID of written files (read from the first one)."""
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
