"""Deterministic UIDs and the repair of instances with empty UIDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import UID, CTImageStorage

from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.dicom_uids import UID_PREFIX, assign_missing_uids, derive_uid
from spinecloud_shared.dicom_write import SeriesIdentity, ct_series_datasets, write_datasets
from spinecloud_shared.errors import CorruptFileError
from spinecloud_shared.volume import Volume


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4))
def test_derive_uid_is_valid_and_deterministic(parts: list[str]) -> None:
    uid = derive_uid(*parts)
    assert uid == derive_uid(*parts)
    assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith(UID_PREFIX)


def test_derive_uid_separates_parts() -> None:
    assert derive_uid("a", "study") != derive_uid("a", "series")
    assert derive_uid("key-1", "study") != derive_uid("key-2", "study")
    with pytest.raises(ValueError):
        derive_uid()


def _anonymised_series(tmp_path: Path) -> list[Path]:
    """A written CT series whose UIDs and patient identifiers were then emptied."""
    volume = Volume(np.zeros((8, 6, 3), np.int16), np.diag([-1.0, 1.0, 2.0, 1.0]))
    datasets = ct_series_datasets(volume, SeriesIdentity.from_key("anon"))
    for ds in datasets:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, "")
        ds.PatientID, ds.PatientName = "", ""
    paths = []
    for k, ds in enumerate(datasets):
        path = tmp_path / f"slice{k}.dcm"
        meta_uid = ds.file_meta.MediaStorageSOPInstanceUID
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == meta_uid
        paths.append(path)
    return paths


def test_assign_missing_uids_fills_deterministically(tmp_path: Path) -> None:
    paths = _anonymised_series(tmp_path)
    first = assign_missing_uids(paths, key="case-7")
    second = assign_missing_uids(paths, key="case-7")
    other = assign_missing_uids(paths, key="case-8")
    for ds, path in zip(first, paths, strict=True):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.SOPInstanceUID == pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.PatientID and str(ds.PatientName)
    assert [d.StudyInstanceUID for d in first] == [d.StudyInstanceUID for d in second]
    assert first[0].SeriesInstanceUID != other[0].SeriesInstanceUID
    assert first[0].PatientID == second[0].PatientID != other[0].PatientID
    volume = read_dicom_series(write_datasets(first, tmp_path / "out"))
    assert volume.shape == (8, 6, 3)


def test_assign_missing_uids_keeps_given_values_and_inputs() -> None:
    volume = Volume(np.zeros((8, 6, 2), np.int16), np.diag([-1.0, 1.0, 2.0, 1.0]))
    datasets = ct_series_datasets(volume, SeriesIdentity.from_key("kept"))
    datasets[0].SeriesInstanceUID = ""
    repaired = assign_missing_uids(datasets, key="k")
    assert datasets[0].SeriesInstanceUID == ""  # the caller's dataset is untouched
    assert repaired[0].SeriesInstanceUID == derive_uid("k", "series")
    assert repaired[1].SeriesInstanceUID == datasets[1].SeriesInstanceUID


def test_assign_missing_uids_refuses_non_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"nothing here")
    with pytest.raises(CorruptFileError, match=r"x\.dcm"):
        assign_missing_uids([path], key="k")
