"""Write a Volume (CT in Hounsfield units) as a DICOM CT Image series, one file per slice.

The files carry the full Patient, General Study, General Series, Frame of Reference, General
Equipment, General Image, Image Plane, Image Pixel, CT Image, VOI LUT and SOP Common modules,
so that Orthanc stores them and ``dciodvfy`` finds no error. Frame ``k`` of the series is slice
``k`` of the volume, laid out by ``spinecloud_shared.dicom_series.array_to_frames``; reading the
files back with ``read_dicom_series`` gives exactly ``to_dicom_grid(volume)``: the same array and
affine when the grid's ``k`` runs along the slice normal (negative determinant, e.g. LAS, which
is what every DICOM read gives), and otherwise the same voxels with ``k`` reversed.

JPEG 2000 needs frames of at least 32 x 32 pixels (openjpeg encodes 6 wavelet levels).

Pixel values are rounded to whole HU and stored as int16 (slope 1, intercept 0) or as uint16
with RescaleIntercept -1024; a value that does not fit raises ValueError. Sheared grids (the
``k`` axis not perpendicular to the slices) are refused: they would be a gantry-tilted series.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import format_number_as_ds

from spinecloud_shared.dicom_series import PlaneGeometry, array_to_frames, dicom_plane_geometry
from spinecloud_shared.dicom_uids import derive_uid
from spinecloud_shared.errors import GeometryMismatchError
from spinecloud_shared.volume import Volume

PixelFormat = Literal["int16", "uint16"]
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: RescaleIntercept used with unsigned pixels: stored 0 is -1024 HU (air).
UINT16_INTERCEPT = -1024


@dataclass(frozen=True)
class SeriesIdentity:
    """The identifying UIDs and names shared by every slice of a written series."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str = "SPINECLOUD-PHANTOM"
    patient_name: str = "Phantom^SpineCloud"
    series_number: int = 1
    series_description: str = "SpineCloud CT"
    study_date: str = "20000101"
    #: An unpaired body part, so that Laterality is rightly absent.
    body_part_examined: str = "SPINE"

    @classmethod
    def from_key(cls, key: str, **overrides: Any) -> SeriesIdentity:
        """UIDs derived deterministically from ``key``; ``overrides`` replace any field."""
        derived = {
            "study_instance_uid": derive_uid(key, "study"),
            "series_instance_uid": derive_uid(key, "series"),
            "frame_of_reference_uid": derive_uid(key, "frame-of-reference"),
        }
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls(**{**derived, **given})


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS), as precise as that allows."""
    return format_number_as_ds(float(value))


def stored_frames(volume: Volume, pixel_format: PixelFormat) -> tuple[npt.NDArray[Any], int]:
    """The frames to store ``(n_slices, rows, cols)`` and their RescaleIntercept."""
    hu = np.asarray(volume.array)
    if not np.all(np.isfinite(hu)):
        raise ValueError("The volume holds NaN or infinite values; it cannot be written.")
    hu = np.rint(hu).astype(np.int64) if hu.dtype.kind == "f" else hu.astype(np.int64)
    intercept = UINT16_INTERCEPT if pixel_format == "uint16" else 0
    dtype = np.dtype(np.uint16 if pixel_format == "uint16" else np.int16)
    stored = hu - intercept
    info = np.iinfo(dtype)
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        raise ValueError(
            f"HU range [{hu.min()}, {hu.max()}] does not fit {pixel_format} pixels "
            f"with RescaleIntercept {intercept}."
        )
    return array_to_frames(stored.astype(dtype)), intercept


def _check_not_sheared(plane: PlaneGeometry, volume: Volume) -> None:
    positions = plane.positions_lps
    if len(positions) < 2:
        return
    step = positions[1] - positions[0]
    off_normal = step - (step @ plane.normal_lps) * plane.normal_lps
    if float(np.linalg.norm(off_normal)) > 1e-6 * max(1.0, float(np.linalg.norm(step))):
        raise GeometryMismatchError(
            f"The volume's slices are sheared (orientation {volume.orientation}); a CT series "
            "needs its slices stacked along their normal."
        )


def _file_meta(transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = (
        transfer_syntax if transfer_syntax in _UNCOMPRESSED else (ExplicitVRLittleEndian)
    )
    meta.ImplementationVersionName = "SPINECLOUD"
    return meta


def _patient_study_series(ds: Dataset, identity: SeriesIdentity) -> None:
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = "000000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SeriesNumber = identity.series_number
    ds.SeriesDescription = identity.series_description
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = identity.body_part_examined
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "SpineCloud"
    ds.ManufacturerModelName = "spinecloud_shared.dicom_write"


def _image(ds: Dataset, plane: PlaneGeometry, pixel_format: PixelFormat, intercept: int) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in plane.image_orientation_lps]
    ds.PixelSpacing = [_ds(v) for v in plane.pixel_spacing_mm]
    ds.SliceThickness = _ds(abs(plane.slice_step_mm))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = plane.rows
    ds.Columns = plane.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0 if pixel_format == "uint16" else 1
    ds.RescaleIntercept = str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"


def _series_template(
    identity: SeriesIdentity, plane: PlaneGeometry, pixel_format: PixelFormat, intercept: int
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    _patient_study_series(ds, identity)
    _image(ds, plane, pixel_format, intercept)
    return ds


def ct_series_datasets(
    volume: Volume,
    identity: SeriesIdentity,
    *,
    pixel_format: PixelFormat = "int16",
    transfer_syntax: str = ExplicitVRLittleEndian,
    reverse_instance_numbers: bool = False,
) -> list[Dataset]:
    """One CT Image dataset per slice ``k`` of ``volume`` (in memory), in ``k`` order.

    ``transfer_syntax`` may be Explicit/Implicit VR Little Endian or any syntax pydicom can
    encode losslessly here (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless).
    ``reverse_instance_numbers`` numbers the slices from ``n`` down to 1, to prove that readers
    sort by position.
    """
    plane = dicom_plane_geometry(volume)
    _check_not_sheared(plane, volume)
    frames, intercept = stored_frames(volume, pixel_format)
    template = _series_template(identity, plane, pixel_format, intercept)
    syntax, n_slices = UID(transfer_syntax), len(frames)
    datasets = []
    for k, frame in enumerate(frames):
        ds = copy.deepcopy(template)
        ds.file_meta = _file_meta(syntax)
        ds.SOPInstanceUID = derive_uid(identity.series_instance_uid, "ct-slice", str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n_slices - k if reverse_instance_numbers else k + 1
        position = plane.positions_lps[k]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ plane.normal_lps))
        ds.PixelData = frame.tobytes()
        if syntax not in _UNCOMPRESSED:
            ds.compress(syntax, generate_instance_uid=False)
        datasets.append(ds)
    return datasets


def encode_dataset(dataset: Dataset) -> bytes:
    """A dataset as the bytes of a DICOM Part 10 file (as stored in or sent to Orthanc)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def write_datasets(
    datasets: list[Dataset], folder: str | Path, *, prefix: str = "CT"
) -> list[Path]:
    """Save datasets as ``folder/{prefix}{k:04d}.dcm`` (Part 10 files); the paths in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, dataset in enumerate(datasets):
        path = folder / f"{prefix}{k:04d}.dcm"
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_series(
    volume: Volume,
    folder: str | Path,
    *,
    key: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    pixel_format: PixelFormat = "int16",
    transfer_syntax: str = ExplicitVRLittleEndian,
    reverse_instance_numbers: bool = False,
) -> list[Path]:
    """Write ``volume`` as a CT series into ``folder``; the file paths in ``k`` order.

    UIDs are the explicit ones given, the others derived from ``key`` (ValueError when a UID
    is neither given nor derivable).
    """
    explicit = (study_instance_uid, series_instance_uid, frame_of_reference_uid)
    if key is None and not all(explicit):
        raise ValueError("Give either a key or all three of the study, series and FoR UIDs.")
    identity = SeriesIdentity.from_key(
        key or str(series_instance_uid),
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid,
    )
    datasets = ct_series_datasets(
        volume,
        identity,
        pixel_format=pixel_format,
        transfer_syntax=transfer_syntax,
        reverse_instance_numbers=reverse_instance_numbers,
    )
    return write_datasets(datasets, folder)
