"""Deterministic DICOM UIDs, and repair of instances whose identifying UIDs are empty.

SpineCloud derives every UID it creates from a key (a job key, a series UID, a case name) so
that redoing the same work gives the same UIDs: a retried job overwrites its DICOM-SEG instead
of duplicating it. ``derive_uid`` hashes the key with pydicom's ``generate_uid`` under one
prefix, :data:`UID_PREFIX`, and a fixed namespace string so that our UIDs cannot collide with
those of another program that hashes the same text under the same prefix.

``assign_missing_uids`` fills the empty SOP class, SOP instance, study and series UIDs (and the
empty patient name and id) of an anonymised series such as the TotalSegmentator example, in
memory: files on disk are never modified.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_ROOT_UID, CTImageStorage, generate_uid

from spinecloud_shared.errors import CorruptFileError

#: The root under which SpineCloud's UIDs are made (pydicom's root, free for its users).
UID_PREFIX = PYDICOM_ROOT_UID
#: Mixed into every hash so that the same key gives different UIDs in another program.
UID_NAMESPACE = "spinecloud"

#: The UIDs, in DICOM keywords, without which an instance cannot be stored or referenced.
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def derive_uid(*parts: str) -> str:
    """A valid DICOM UID (at most 64 characters) that depends only on ``parts``.

    The same parts always give the same UID; different parts give different UIDs (SHA-512
    based, see ``pydicom.uid.generate_uid``).
    """
    if not parts or not all(parts):
        raise ValueError("derive_uid needs at least one non-empty part")
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[UID_NAMESPACE, *parts]))


def pseudonym(key: str) -> str:
    """A short stable token derived from ``key`` (for PatientID/PatientName placeholders)."""
    return hashlib.sha256(f"{UID_NAMESPACE}:{key}".encode()).hexdigest()[:12].upper()


def _load(item: str | Path | Dataset) -> Dataset:
    """The dataset itself (copied, so the caller's object is never changed), or the file read."""
    if isinstance(item, Dataset):
        return copy.deepcopy(item)
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise CorruptFileError(f"{Path(item).name}: not a readable DICOM file ({exc}).") from exc


def _is_empty(ds: Dataset, keyword: str) -> bool:
    return not str(ds.get(keyword, "") or "").strip()


def _instance_uid(ds: Dataset, key: str) -> str:
    """The file meta header's SOP instance UID when present, else one derived from the slice."""
    meta = getattr(ds, "file_meta", None)
    from_meta = str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta else ""
    if from_meta.strip():
        return from_meta.strip()
    position = "\\".join(str(v) for v in ds.get("ImagePositionPatient", []) or [])
    number = str(ds.get("InstanceNumber", "") or "")
    return derive_uid(key, "instance", number, position or "no-position")


def _fill(ds: Dataset, key: str) -> Dataset:
    """Fill the empty identifying attributes of one dataset in place and return it."""
    if _is_empty(ds, "SOPClassUID"):
        ds.SOPClassUID = CTImageStorage
    if _is_empty(ds, "SOPInstanceUID"):
        ds.SOPInstanceUID = _instance_uid(ds, key)
    if _is_empty(ds, "StudyInstanceUID"):
        ds.StudyInstanceUID = derive_uid(key, "study")
    if _is_empty(ds, "SeriesInstanceUID"):
        ds.SeriesInstanceUID = derive_uid(key, "series")
    if _is_empty(ds, "PatientID"):
        ds.PatientID = f"SC-{pseudonym(key)}"
    if _is_empty(ds, "PatientName"):
        ds.PatientName = f"Anonymous^{pseudonym(key)}"
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def assign_missing_uids(
    paths_or_datasets: Iterable[str | Path | Dataset] | Sequence[str | Path | Dataset],
    *,
    key: str,
) -> list[Dataset]:
    """Datasets (in memory, in the given order) with their empty UIDs filled deterministically.

    - SOPClassUID: CT Image Storage (this repairs CT series only).
    - SOPInstanceUID: the file meta header's (0002,0003) when present, else derived from
      ``key``, the InstanceNumber and the ImagePositionPatient.
    - StudyInstanceUID, SeriesInstanceUID: derived from ``key`` (one study and one series per
      key: call once per series).
    - PatientID, PatientName: a pseudonym derived from ``key``.

    Attributes that already hold a value are kept. Nothing is written to disk; the caller
    saves the datasets where it wants (never into read-only shared data).
    """
    if not key:
        raise ValueError("assign_missing_uids needs a non-empty key")
    return [_fill(_load(item), key) for item in paths_or_datasets]
