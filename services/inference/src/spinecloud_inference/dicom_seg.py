"""DICOM Segmentation (DICOM-SEG) of a canonical vertebra label map: writer and reader.

The label map must lie on the source CT's DICOM grid (``spinecloud_shared.dicom_series``: what
``read_dicom_series`` returns, or ``to_dicom_grid`` of any volume), so that slice ``k`` is the
``k``-th source instance along the slice normal. The writer checks this against the source
datasets' plane geometry and refuses anything else, since a label map on another grid would
land on the wrong voxels in the viewer.

Written with highdicom: a BINARY segmentation (the flavour every viewer opens) with one segment
per canonical class present, head to feet. Each segment carries the vertebra's name as label,
SNOMED-CT category 123037004 "Anatomical Structure" and the vertebra's SNOMED-CT type code,
its display colour in CIELab, algorithm type AUTOMATIC and the model's name and version.

Identity: a job is keyed by (source SeriesInstanceUID, model name, model version); the SEG's
SeriesInstanceUID and SOPInstanceUID are derived from that key with ``derive_uid``, so a retried
job writes the same UIDs and overwrites instead of duplicating.

An empty label map (no vertebra at all) raises LabelError: DICOM-SEG cannot hold zero segments,
and "no vertebra found" is a job failure the caller reports, not an empty object to store.

The reader (``read_dicom_seg``, re-exported here) lives in ``spinecloud_shared.dicom_seg_read``
because training reads clinicians' corrections with the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spinecloud_shared import labels
from spinecloud_shared.centroids import canonical_in_box
from spinecloud_shared.dicom_seg_read import SEG_MANUFACTURER, SEG_MODEL_NAME, read_dicom_seg
from spinecloud_shared.dicom_series import (
    array_to_frames,
    dicom_plane_geometry,
    read_series_datasets,
)
from spinecloud_shared.dicom_uids import derive_uid
from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, LabelError
from spinecloud_shared.models.manifest import parse_model_ref
from spinecloud_shared.volume import Volume

__all__ = [
    "SEG_SERIES_NUMBER",
    "ModelRef",
    "SegUids",
    "build_dicom_seg",
    "read_dicom_seg",
    "seg_uids",
    "write_dicom_seg",
]

#: SeriesNumber of the SEG series (clear of the scanner's usual 1-999 numbering).
SEG_SERIES_NUMBER = 9001


def _software_version() -> str:
    try:
        return metadata.version("spinecloud-inference")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


#: SoftwareVersions of the SEG: the installed spinecloud-inference package's version.
SOFTWARE_VERSION = _software_version()
DEVICE_SERIAL_NUMBER = "spinecloud"
#: CS value (upper case, at most 16 characters).
CONTENT_LABEL = "VERTEBRAE"
#: A frame position may differ from the label map's grid by this much (mm).
POSITION_TOLERANCE_MM = 1e-2
#: Coding schemes accepted for SNOMED-CT codes (SRT is the retired designator).
_SNOMED_SCHEMES = frozenset({"SCT", "SRT"})


@dataclass(frozen=True)
class ModelRef:
    """The model that produced a label map: its name and version."""

    name: str
    version: str

    @classmethod
    def parse(cls, value: ModelRef | str) -> ModelRef:
        """A ModelRef from itself or from ``'name@version'`` (the version is required)."""
        if isinstance(value, ModelRef):
            return value
        name, version = parse_model_ref(value)
        if not version:
            raise InvalidInputError(f"Model reference {value!r} needs a version (NAME@VERSION).")
        return cls(name, version)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class SegUids:
    """The UIDs of the SEG produced for one job key."""

    series_instance_uid: str
    sop_instance_uid: str


def seg_uids(source_series_instance_uid: str, model: ModelRef | str) -> SegUids:
    """SEG series and instance UIDs derived from the job key (source series, model, version)."""
    ref = ModelRef.parse(model)
    key = ("dicom-seg", source_series_instance_uid, ref.name, ref.version)
    return SegUids(
        series_instance_uid=derive_uid(*key, "series"),
        sop_instance_uid=derive_uid(*key, "instance"),
    )


# --------------------------------------------------------------------------- writing


def _present_ids(label_map: npt.NDArray[np.uint8]) -> list[int]:
    """Canonical ids present, head to feet; LabelError when there is none."""
    present = [int(v) for v in np.flatnonzero(np.bincount(label_map.ravel())) if v != 0]
    if not present:
        raise LabelError(
            "The label map holds no vertebra; there is nothing to store as a segmentation."
        )
    return sorted(present, key=lambda i: labels.by_id(i).order)


def _segment_description(
    number: int, label_id: int, model: ModelRef, uids: SegUids
) -> hd.seg.SegmentDescription:
    """Segment ``number`` for one canonical class; its tracking UID derives from the SEG's."""
    vertebra = labels.by_id(label_id)
    category_code, scheme, category_meaning = labels.CATEGORY_CODE
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=vertebra.name,
        segmented_property_category=hd.sr.CodedConcept(category_code, scheme, category_meaning),
        segmented_property_type=hd.sr.CodedConcept(
            vertebra.snomed_code, labels.CODING_SCHEME, vertebra.snomed_meaning
        ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=model.version,
            source=SEG_MANUFACTURER,
        ),
        tracking_id=vertebra.name,
        tracking_uid=derive_uid(uids.sop_instance_uid, "segment", vertebra.name),
        display_color=hd.color.CIELabColor.from_rgb(*vertebra.color_rgb),
    )


def _check_on_source_grid(label_map: Volume, datasets: Sequence[Dataset]) -> None:
    """GeometryMismatchError unless slice ``k`` of the label map is source instance ``k``."""
    plane = dicom_plane_geometry(label_map)
    first = datasets[0]
    size_ok = (plane.rows, plane.columns, len(plane.positions_lps)) == (
        int(first.Rows),
        int(first.Columns),
        len(datasets),
    )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    spacing = np.array([float(v) for v in first.PixelSpacing])
    if not (
        size_ok
        and np.allclose(orientation, plane.image_orientation_lps, atol=1e-4)
        and np.allclose(spacing, plane.pixel_spacing_mm, atol=1e-4)
        and np.allclose(positions, plane.positions_lps, atol=POSITION_TOLERANCE_MM)
    ):
        raise GeometryMismatchError(
            f"The label map (shape {label_map.shape}, {label_map.orientation}) is not on the "
            f"DICOM grid of its source series ({len(datasets)} slices of {first.Rows}x"
            f"{first.Columns}); move it there with dicom_series.to_dicom_grid or resample it."
        )


def build_dicom_seg(
    label_map: Volume,
    source_datasets: Sequence[Dataset],
    *,
    model: ModelRef | str,
) -> hd.seg.Segmentation:
    """The DICOM-SEG (in memory) of a canonical label map on the source series' DICOM grid.

    ``source_datasets`` are the source series' instances in any order (pixel data not needed);
    they are validated and sorted along the slice normal as ``read_series_datasets`` does.
    Raises LabelError for ids that are not canonical or an empty label map, and
    GeometryMismatchError when the label map is not on the source grid.
    """
    ref = ModelRef.parse(model)
    # Validated, counted and relabelled inside the foreground box only: the rest is background.
    array, box = canonical_in_box(label_map.array)
    present = _present_ids(array[box] if box is not None else array[:0])
    datasets, _ = read_series_datasets(list(source_datasets), require_ct=False)
    _check_on_source_grid(label_map, datasets)
    to_segment = np.zeros(labels.MAX_ID + 1, dtype=np.uint8)
    for number, label_id in enumerate(present, start=1):
        to_segment[label_id] = number
    segments = np.zeros(array.shape, dtype=np.uint8)
    if box is not None:
        segments[box] = to_segment[array[box]]
    uids = seg_uids(str(datasets[0].SeriesInstanceUID), ref)
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=array_to_frames(segments),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment_description(n, i, ref, uids) for n, i in enumerate(present, start=1)
        ],
        series_instance_uid=uids.series_instance_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name=SEG_MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        series_description=f"SpineCloud vertebrae ({ref.ref})"[:64],
        content_label=CONTENT_LABEL,
        content_description=f"Vertebrae segmented by {ref.ref}"[:64],
    )


def write_dicom_seg(
    label_map: Volume,
    source_datasets: Sequence[Dataset],
    path: str | Path,
    *,
    model: ModelRef | str,
) -> Path:
    """Build the DICOM-SEG (see :func:`build_dicom_seg`) and save it as a Part 10 file."""
    seg = build_dicom_seg(label_map, source_datasets, model=model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)
    return path
