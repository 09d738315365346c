"""Read a DICOM CT series into a Volume, and map between DICOM frames and our arrays.

Array convention (verified on the real TotalSegmentator example series against the NIfTI that
dcm2niix/TotalSegmentator wrote for it, ``example_seg_dicom.nii.gz``: same shape, affine equal
to 1e-3 mm; see ``tests/unit/test_real_ct_dicom.py``):

- ``array[i, j, k]`` with ``i`` = DICOM column index (along the row direction cosine,
  ImageOrientationPatient[0:3]), ``j`` = the DICOM row index **flipped** (``j = Rows - 1 -
  row``, so ``j`` runs against the column direction cosine ImageOrientationPatient[3:6]), and
  ``k`` = slice index with slices sorted by increasing position along the slice normal
  ``n = row_direction x column_direction`` (never by InstanceNumber).
- In LPS, the affine's columns are ``row_dir * PixelSpacing[1]``, ``-col_dir * PixelSpacing[0]``
  and ``n * slice_step``; its origin is the ImagePositionPatient of the first slice moved to
  its last row. It is converted to RAS once, by ``spinecloud_shared.geometry``. For an axial
  series (IOP 1,0,0,0,1,0) the result is LAS, as dcm2niix writes.
- Every grid read this way has a negative determinant (``a_k`` is parallel to
  ``-(a_i x a_j)``). A volume with a positive determinant (RAS, LPS, PIR...) written as DICOM
  and read back therefore comes back with its ``k`` axis reversed: the same voxels at the same
  world positions, on the grid dcm2niix would give. ``to_dicom_grid`` gives that grid.

Pixel values: stored values times RescaleSlope plus RescaleIntercept (slice by slice). The
array is ``int16`` when every slope and intercept is an integer and all values fit in int16
(exact), otherwise ``float32``.

Rejections (each names the problem and, where it applies, the file): unreadable or undecodable
files -> CorruptFileError; objects without image pixels (SR, SEG, KO, PR...) ->
NonImageObjectError; empty identifying UIDs -> MissingUidError; non-CT -> NotCtError (unless
``require_ct=False``); several series or differing image geometry -> MixedSeriesError; fewer
than 2 slices, duplicate positions, missing slices or uneven spacing -> SliceGeometryError;
positions that leave the slice normal (gantry tilt) -> GantryTiltError. Tilted series are
refused rather than resampled: the correct shear is scanner specific and a silent resampling
would move every label of the resulting segmentation. Tolerances are the module constants below.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, SegmentationStorage

from spinecloud_shared import geometry
from spinecloud_shared.dicom_uids import REQUIRED_UIDS
from spinecloud_shared.errors import (
    CorruptFileError,
    DicomInputError,
    GantryTiltError,
    GeometryMismatchError,
    MissingUidError,
    MixedSeriesError,
    NonImageObjectError,
    NotCtError,
    SliceGeometryError,
)
from spinecloud_shared.volume import Volume

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
SourceItem = str | Path | bytes | Dataset
Source = str | Path | Sequence[SourceItem]

#: Largest difference of a direction cosine between two files of one series.
ORIENTATION_TOLERANCE = 1e-4
#: Largest difference of PixelSpacing between two files of one series, in mm.
PIXEL_SPACING_TOLERANCE_MM = 1e-4
#: Two slices closer than this along the normal are duplicates, in mm.
DUPLICATE_TOLERANCE_MM = 1e-2
#: A step between slices may differ from the median step by max(absolute, relative * median).
SPACING_ABSOLUTE_TOLERANCE_MM = 1e-2
SPACING_RELATIVE_TOLERANCE = 1e-2
#: A slice may sit off the normal line through the first slice by this fraction of a pixel.
TILT_TOLERANCE_PIXELS = 0.05

#: Modalities whose objects are not images even when they carry pixel data.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "RTSTRUCT", "RTPLAN", "KO", "PR", "DOC", "REG", "FID", "RWV", "PLAN"}
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class PlaneGeometry:
    """The DICOM image plane attributes of each slice (frame) ``k`` of a Volume's grid.

    ``image_orientation_lps`` is ImageOrientationPatient (row direction, then column
    direction), ``pixel_spacing_mm`` is PixelSpacing (between rows, between columns),
    ``positions_lps[k]`` is the ImagePositionPatient of frame ``k``. ``slice_step_mm`` is the
    distance between consecutive frames along the normal: negative when ``k`` runs against the
    normal (a grid with a positive determinant), in which case a reader sorting by position
    reverses the frames.
    """

    rows: int
    columns: int
    image_orientation_lps: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]
    positions_lps: FloatArray
    slice_step_mm: float

    @property
    def normal_lps(self) -> FloatArray:
        """Unit slice normal, row direction x column direction (LPS)."""
        iop = np.asarray(self.image_orientation_lps, dtype=np.float64)
        return np.asarray(np.cross(iop[:3], iop[3:]), dtype=np.float64)


@dataclass(frozen=True)
class _Slice:
    """One validated instance with its position along the slice normal."""

    name: str
    dataset: Dataset
    position: FloatArray
    distance: float


# --------------------------------------------------------------------------- pure helpers


def frames_to_array(frames: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """DICOM frames ``(n_slices, rows, cols)`` as our array ``(cols, rows, n_slices)``.

    The row axis is flipped (``j = rows - 1 - row``).

    Frame ``k`` must be the ``k``-th slice of the grid (for a series read by this module: by
    position along the normal).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n_slices, rows, cols), got shape {frames.shape}")
    # One row at a time: a whole-array transposed copy walks memory with a large stride on
    # every element and took 1-2 s for 300 slices of 512 x 512 (bench/inference_e2e.py);
    # row by row is the same copy at about a third of the time.
    rows = frames.shape[1]
    array = np.empty((frames.shape[2], rows, frames.shape[0]), dtype=frames.dtype)
    for row in range(rows):
        array[:, rows - 1 - row, :] = frames[:, row, :].T
    return array


def array_to_frames(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Inverse of :func:`frames_to_array`: ``(cols, rows, n_slices)`` -> frames."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be (cols, rows, n_slices), got shape {array.shape}")
    rows = array.shape[1]
    frames = np.empty((array.shape[2], rows, array.shape[0]), dtype=array.dtype)
    for j in range(rows):  # row by row, as frames_to_array does
        frames[:, rows - 1 - j, :] = array[:, j, :].T
    return frames


def dicom_plane_geometry(volume: Volume) -> PlaneGeometry:
    """ImagePositionPatient/ImageOrientationPatient/PixelSpacing for each frame of ``volume``.

    Frames are those of :func:`array_to_frames`. Raises GeometryMismatchError when the ``i``
    and ``j`` axes are not orthogonal (DICOM cannot describe a sheared image plane).
    """
    affine_lps = geometry.ras_to_lps_affine(volume.affine_ras)
    a_i, a_j, a_k = (affine_lps[:3, c] for c in range(3))
    col_spacing, row_spacing = float(np.linalg.norm(a_i)), float(np.linalg.norm(a_j))
    row_dir, col_dir = a_i / col_spacing, -a_j / row_spacing
    if abs(float(row_dir @ col_dir)) > 1e-6:
        raise GeometryMismatchError(
            "The volume's i and j axes are not orthogonal; DICOM cannot describe its slices."
        )
    n_cols, n_rows, n_slices = volume.shape
    first = affine_lps[:3, 3] + (n_rows - 1) * a_j
    positions = first[None, :] + np.arange(n_slices, dtype=np.float64)[:, None] * a_k[None, :]
    normal = np.cross(row_dir, col_dir)
    iop = tuple(float(v) for v in (*row_dir, *col_dir))
    return PlaneGeometry(
        rows=n_rows,
        columns=n_cols,
        image_orientation_lps=(iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]),
        pixel_spacing_mm=(row_spacing, col_spacing),
        positions_lps=positions,
        slice_step_mm=float(a_k @ normal),
    )


def to_dicom_grid(volume: Volume) -> Volume:
    """The same voxels on the grid that a DICOM series of ``volume`` reads back to.

    ``k`` is reversed when it runs against the slice normal (a positive determinant), else the
    volume is returned unchanged. Exact: no interpolation, every voxel keeps its position.
    """
    if dicom_plane_geometry(volume).slice_step_mm >= 0:
        return volume
    n_slices = volume.shape[2]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, n_slices - 1
    array = np.ascontiguousarray(volume.array[:, :, ::-1])
    return Volume(array, volume.affine_ras @ flip, dict(volume.meta))


def affine_from_dicom(
    first_position_lps: npt.ArrayLike,
    image_orientation_lps: npt.ArrayLike,
    pixel_spacing_mm: npt.ArrayLike,
    slice_step_mm: float,
    rows: int,
) -> FloatArray:
    """The voxel->RAS affine of our array for a series whose first slice (along the normal)
    sits at ``first_position_lps``."""
    iop = np.asarray(image_orientation_lps, dtype=np.float64)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    row_spacing, col_spacing = (float(v) for v in np.asarray(pixel_spacing_mm).ravel())
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = -col_dir * row_spacing
    affine_lps[:3, 2] = np.cross(row_dir, col_dir) * slice_step_mm
    affine_lps[:3, 3] = np.asarray(first_position_lps, dtype=np.float64) + (
        (rows - 1) * row_spacing * col_dir
    )
    return geometry.lps_to_ras_affine(affine_lps)


# --------------------------------------------------------------------------- loading


def _read_one(data: str | Path | bytes, name: str) -> Dataset:
    """Parse one file or byte string; CorruptFileError naming it when that fails."""
    source: Any = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        return pydicom.dcmread(source)
    except InvalidDicomError:
        pass  # maybe a file without the 128-byte preamble: retry leniently below
    except Exception as exc:  # pydicom raises many unrelated types for damaged files
        raise CorruptFileError(f"{name}: not a readable DICOM file ({exc}).", file=name) from exc
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        dataset = pydicom.dcmread(source, force=True)
        if "SOPClassUID" in dataset and "Modality" in dataset:
            return dataset
    except Exception:  # reported just below as a corrupt file
        pass
    raise CorruptFileError(f"{name}: not a DICOM file.", file=name)


def _item_name(item: SourceItem, index: int) -> str:
    if isinstance(item, Dataset):
        filename = getattr(item, "filename", None)
        return Path(filename).name if isinstance(filename, str) else f"dataset #{index}"
    if isinstance(item, bytes | bytearray):
        return f"bytes #{index}"
    return Path(item).name


def _folder_files(folder: Path) -> list[Path]:
    """Regular files of ``folder`` (not recursive), DICOMDIR and hidden files left out."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def load_datasets(source: Source) -> list[tuple[str, Dataset]]:
    """``(name, dataset)`` for a folder, a file, or a sequence of paths, bytes or datasets."""
    items: Sequence[SourceItem]
    if isinstance(source, str | Path):
        path = Path(source)
        items = _folder_files(path) if path.is_dir() else [path]
    elif isinstance(source, bytes | bytearray | Dataset):
        items = [source]
    else:
        items = source
    loaded = []
    for index, item in enumerate(items):
        name = _item_name(item, index)
        dataset = item if isinstance(item, Dataset) else _read_one(item, name)
        loaded.append((name, dataset))
    return loaded


# --------------------------------------------------------------------------- validation


def _sop_class_name(dataset: Dataset) -> str:
    uid = str(dataset.get("SOPClassUID", "") or "")
    return UID(uid).name if uid else "no SOP class"


def _check_is_image(name: str, dataset: Dataset) -> None:
    modality = str(dataset.get("Modality", "") or "")
    what = f"{_sop_class_name(dataset)}, modality {modality or 'unknown'}"
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise NonImageObjectError(
            f"{name}: has no pixel data ({what}); it is not an image.", file=name
        )
    if modality in NON_IMAGE_MODALITIES or dataset.get("SOPClassUID") == SegmentationStorage:
        raise NonImageObjectError(f"{name}: is not an image but a {what} object.", file=name)


def _check_uids(loaded: list[tuple[str, Dataset]]) -> None:
    missing: dict[str, list[str]] = {}
    for name, dataset in loaded:
        for keyword in REQUIRED_UIDS:
            if not str(dataset.get(keyword, "") or "").strip():
                missing.setdefault(keyword, []).append(name)
    if missing:
        files = sorted({n for names in missing.values() for n in names})
        raise MissingUidError(
            f"{len(files)} of {len(loaded)} files lack {', '.join(missing)} "
            f"(first: {files[0]}); the instances cannot be identified or stored.",
            missing_uids=list(missing),
            files=files,
        )


def _check_modality(name: str, dataset: Dataset) -> None:
    modality = str(dataset.get("Modality", "") or "")
    if modality != "CT":
        raise NotCtError(
            f"{name}: modality is {modality or 'missing'}, not CT.", file=name, modality=modality
        )


def _check_single_frame(name: str, dataset: Dataset) -> None:
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames != 1:
        raise DicomInputError(
            f"{name}: a multi-frame image ({frames} frames); only single-frame series are read.",
            file=name,
        )
    if samples != 1:
        raise DicomInputError(f"{name}: a colour image ({samples} samples per pixel).", file=name)


def _required(name: str, dataset: Dataset, keyword: str, count: int) -> FloatArray:
    value = dataset.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.size != count or not np.all(np.isfinite(array)):
        raise SliceGeometryError(f"{name}: {keyword} is missing or malformed.", file=name)
    return array


def _orientation(name: str, dataset: Dataset) -> FloatArray:
    iop = _required(name, dataset, "ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    unit = abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
    if not unit or abs(float(row @ col)) > 1e-3:
        raise SliceGeometryError(
            f"{name}: ImageOrientationPatient is not two orthogonal unit vectors.", file=name
        )
    return iop


def _differs(first: Dataset, other: Dataset, names: tuple[str, str]) -> str | None:
    """What makes ``other`` a different series or image geometry than ``first``, if anything."""
    for keyword, label in (
        ("SeriesInstanceUID", "series"),
        ("StudyInstanceUID", "study"),
        ("FrameOfReferenceUID", "frame of reference"),
    ):
        if first.get(keyword) != other.get(keyword):
            return f"they belong to different {label} UIDs"
    if (first.Rows, first.Columns) != (other.Rows, other.Columns):
        return f"image size {first.Rows}x{first.Columns} vs {other.Rows}x{other.Columns}"
    if np.max(np.abs(_orientation(names[0], first) - _orientation(names[1], other))) > (
        ORIENTATION_TOLERANCE
    ):
        return "ImageOrientationPatient differs"
    spacing = (
        _required(n, d, "PixelSpacing", 2) for n, d in zip(names, (first, other), strict=True)
    )
    if np.max(np.abs(next(spacing) - next(spacing))) > PIXEL_SPACING_TOLERANCE_MM:
        return "PixelSpacing differs"
    return None


def _check_same_series(loaded: list[tuple[str, Dataset]]) -> None:
    first_name, first = loaded[0]
    for name, dataset in loaded[1:]:
        problem = _differs(first, dataset, (first_name, name))
        if problem:
            raise MixedSeriesError(
                f"{name} and {first_name} are not one series: {problem}.",
                files=[first_name, name],
            )


def validate_instances(loaded: list[tuple[str, Dataset]], *, require_ct: bool = True) -> None:
    """Raise the specific DicomInputError for the first problem with these instances."""
    for name, dataset in loaded:
        _check_is_image(name, dataset)
    if len(loaded) < 2:
        raise SliceGeometryError(
            f"A volume needs at least 2 slices; got {len(loaded)} image file(s)."
        )
    _check_uids(loaded)
    for name, dataset in loaded:
        if require_ct:
            _check_modality(name, dataset)
        _check_single_frame(name, dataset)
    _check_same_series(loaded)


# --------------------------------------------------------------------------- slice order


def _sorted_slices(loaded: list[tuple[str, Dataset]]) -> list[_Slice]:
    first_name, first = loaded[0]
    iop = _orientation(first_name, first)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    slices = []
    for name, dataset in loaded:
        position = _required(name, dataset, "ImagePositionPatient", 3)
        slices.append(_Slice(name, dataset, position, float(position @ normal)))
    return sorted(slices, key=lambda s: s.distance)


def _check_duplicates(slices: list[_Slice]) -> None:
    for a, b in itertools.pairwise(slices):
        if b.distance - a.distance < DUPLICATE_TOLERANCE_MM:
            same = a.dataset.get("SOPInstanceUID") == b.dataset.get("SOPInstanceUID")
            raise SliceGeometryError(
                f"{a.name} and {b.name} have the same position along the slice normal "
                f"(duplicate slice{'; same SOPInstanceUID' if same else ''}).",
                files=[a.name, b.name],
            )


def _check_tilt(slices: list[_Slice], normal: FloatArray, pixel_mm: float) -> None:
    origin = slices[0].position
    for current in slices[1:]:
        offset = current.position - origin
        in_plane = float(np.linalg.norm(offset - (offset @ normal) * normal))
        if in_plane > TILT_TOLERANCE_PIXELS * pixel_mm:
            along = current.distance - slices[0].distance
            angle = float(np.degrees(np.arctan2(in_plane, abs(along))))
            raise GantryTiltError(
                f"{current.name}: slice positions do not run along the slice normal "
                f"({in_plane:.2f} mm off over {abs(along):.2f} mm, a {angle:.1f} degree gantry "
                "tilt); tilted series are not supported.",
                file=current.name,
            )


def _check_spacing(slices: list[_Slice]) -> float:
    """The mean step between slices, after checking the steps are even; else raise."""
    distances = np.array([s.distance for s in slices])
    steps = np.diff(distances)
    median = float(np.median(steps))
    tolerance = max(SPACING_ABSOLUTE_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * median)
    for index, step in enumerate(steps):
        if abs(step - median) <= tolerance:
            continue
        a, b = slices[index].name, slices[index + 1].name
        ratio = step / median
        if ratio > 1.5 and abs(ratio - round(ratio)) * median <= tolerance:
            raise SliceGeometryError(
                f"{round(ratio) - 1} slice(s) missing between {a} and {b} (gap {step:.3f} mm, "
                f"spacing {median:.3f} mm).",
                files=[a, b],
            )
        raise SliceGeometryError(
            f"Inconsistent slice spacing between {a} and {b}: {step:.3f} mm where the series "
            f"has {median:.3f} mm (tolerance {tolerance:.3f} mm).",
            files=[a, b],
        )
    return float((distances[-1] - distances[0]) / (len(distances) - 1))


def sort_and_check_slices(
    loaded: list[tuple[str, Dataset]],
) -> tuple[list[tuple[str, Dataset]], float]:
    """The instances in ``k`` order (along the normal) and the step between them in mm."""
    slices = _sorted_slices(loaded)
    _check_duplicates(slices)
    iop = _orientation(slices[0].name, slices[0].dataset)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    pixel_mm = float(np.min(_required(slices[0].name, slices[0].dataset, "PixelSpacing", 2)))
    _check_tilt(slices, normal, pixel_mm)
    step = _check_spacing(slices)
    return [(s.name, s.dataset) for s in slices], step


# --------------------------------------------------------------------------- pixels


def _decode(name: str, dataset: Dataset) -> npt.NDArray[Any]:
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception as exc:  # every pixel handler raises its own types
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise CorruptFileError(
            f"{name}: pixel data cannot be decoded (transfer syntax {syntax}); the file is "
            f"damaged or truncated. Decoder: {str(exc).rstrip('.')}.",
            file=name,
        ) from exc
    if pixels.shape != (dataset.Rows, dataset.Columns):
        raise CorruptFileError(
            f"{name}: decoded pixels have shape {pixels.shape}, expected "
            f"{(dataset.Rows, dataset.Columns)}.",
            file=name,
        )
    return pixels


def _rescale(dataset: Dataset) -> tuple[float, float]:
    slope = dataset.get("RescaleSlope", 1.0)
    intercept = dataset.get("RescaleIntercept", 0.0)
    return float(1.0 if slope in (None, "") else slope), float(
        0.0 if intercept in (None, "") else intercept
    )


def _output_dtype(raw: list[npt.NDArray[Any]], rescale: list[tuple[float, float]]) -> type:
    """int16 when the rescaled values are exact integers that fit, else float32."""
    if not all(s.is_integer() and b.is_integer() for s, b in rescale):
        return np.float32
    info = np.iinfo(np.int16)
    for pixels, (slope, intercept) in zip(raw, rescale, strict=True):
        ends = (float(pixels.min()) * slope + intercept, float(pixels.max()) * slope + intercept)
        if min(ends) < info.min or max(ends) > info.max:
            return np.float32
    return np.int16


def hounsfield_frames(loaded: list[tuple[str, Dataset]]) -> npt.NDArray[Any]:
    """Decoded, rescaled frames ``(n_slices, rows, cols)`` in the given order."""
    raw = [_decode(name, dataset) for name, dataset in loaded]
    rescale = [_rescale(dataset) for _, dataset in loaded]
    dtype = _output_dtype(raw, rescale)
    frames = np.empty((len(raw), *raw[0].shape), dtype=dtype)
    for index, (pixels, (slope, intercept)) in enumerate(zip(raw, rescale, strict=True)):
        if dtype is np.int16:
            frames[index] = pixels.astype(np.int64) * int(slope) + int(intercept)
        else:
            frames[index] = pixels.astype(np.float64) * slope + intercept
    return frames


# --------------------------------------------------------------------------- public reader


def read_series_datasets(source: Source, *, require_ct: bool = True) -> tuple[list[Dataset], float]:
    """Load and validate a series; its datasets in ``k`` order and the slice step in mm.

    The datasets (with pixel data) are what a DICOM-SEG writer needs as source images.
    """
    loaded = load_datasets(source)
    validate_instances(loaded, require_ct=require_ct)
    ordered, step = sort_and_check_slices(loaded)
    return [dataset for _, dataset in ordered], step


def _provenance(datasets: list[Dataset], step: float) -> dict[str, Any]:
    first = datasets[0]
    return {
        "source": "dicom",
        "modality": str(first.get("Modality", "")),
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
        "sop_class_uid": str(first.SOPClassUID),
        "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in datasets],
        "patient_id": str(first.get("PatientID", "") or ""),  # never log this
        "slice_step_mm": step,
    }


def read_dicom_series(source: Source, *, require_ct: bool = True) -> Volume:
    """Read one DICOM CT series (folder, paths, bytes or datasets) as a Volume in HU.

    See the module docstring for the array convention, value types and rejections.
    ``meta`` holds the study, series and frame-of-reference UIDs, the modality, the SOP
    instance UIDs in ``k`` order and the patient id (provenance; never logged).
    """
    loaded = load_datasets(source)
    validate_instances(loaded, require_ct=require_ct)
    ordered, step = sort_and_check_slices(loaded)
    frames = hounsfield_frames(ordered)
    first_name, first = ordered[0]
    affine = affine_from_dicom(
        _required(first_name, first, "ImagePositionPatient", 3),
        _orientation(first_name, first),
        _required(first_name, first, "PixelSpacing", 2),
        step,
        int(first.Rows),
    )
    datasets = [dataset for _, dataset in ordered]
    volume = Volume(frames_to_array(frames), affine, _provenance(datasets, step))
    logger.debug(
        "read DICOM series: %d slices, shape %s, %s, dtype %s",
        len(datasets),
        volume.shape,
        volume.orientation,
        volume.array.dtype,
    )
    return volume
