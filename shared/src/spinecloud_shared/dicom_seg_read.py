"""Reading a DICOM-SEG back as a canonical label map on its source CT's grid.

Two services read SEGs: inference checks what it stored, training reads clinicians'
corrections made in a viewer. Both need the same rules, so they live here: segments are
identified by their SNOMED-CT property type code (the generic "Vertebra" code by its label),
frames are placed through the source instances they reference (never by position), and a SEG
made on other images, in another frame of reference or with overlapping segments is refused
with a specific error rather than guessed at.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinecloud_shared import labels
from spinecloud_shared.dicom_series import frames_to_array
from spinecloud_shared.errors import DicomInputError, GeometryMismatchError, LabelError
from spinecloud_shared.volume import Volume

__all__ = [
    "SEG_MANUFACTURER",
    "SEG_MODEL_NAME",
    "SNOMED_SCHEMES",
    "as_segmentation",
    "read_dicom_seg",
    "segment_canonical_id",
]

#: Device identity (Manufacturer, ManufacturerModelName) of the SEGs SpineCloud's inference
#: service writes: how the training service and the gateway tell them from clinicians'.
SEG_MANUFACTURER = "SpineCloud"
SEG_MODEL_NAME = "spinecloud-inference"

#: Coding schemes accepted for SNOMED-CT codes (SRT is the retired designator).
SNOMED_SCHEMES = frozenset({"SCT", "SRT"})
_BY_SNOMED: dict[str, int] = {
    v.snomed_code: v.id
    for v in labels.VERTEBRAE
    if v.snomed_code != labels.GENERIC_VERTEBRA_CODE[0]
}
#: TotalSegmentator's structure names (``vertebrae_L3``) are accepted as segment labels.
_STRUCTURE_PREFIX = "vertebrae_"


def segment_canonical_id(code_value: str, scheme: str, segment_label: str) -> int:
    """Canonical vertebra id of a segment from its SNOMED-CT property type code.

    The generic "Vertebra" code is resolved by the label (``'T13'``, ``'L3'``,
    ``'vertebrae_L3'``). LabelError for other schemes, unknown codes and unresolvable labels.
    """
    if scheme.strip().upper() not in SNOMED_SCHEMES:
        raise LabelError(
            f"Segment {segment_label!r} is coded in {scheme}, not SNOMED-CT.", code=code_value
        )
    value = code_value.strip()
    if value in _BY_SNOMED:
        return _BY_SNOMED[value]
    if value == labels.GENERIC_VERTEBRA_CODE[0]:
        name = segment_label.strip()
        if name.lower().startswith(_STRUCTURE_PREFIX):
            name = name[len(_STRUCTURE_PREFIX) :]
        try:
            return labels.by_name(name).id
        except LabelError:
            raise LabelError(
                f"Segment {segment_label!r} has the generic code 'Vertebra' and a label that "
                "names no level.",
                code=value,
            ) from None
    raise LabelError(
        f"Segment {segment_label!r} has type code {value}, which is not a vertebra SpineCloud "
        "knows.",
        code=value,
    )


def _segment_lookup(seg: hd.seg.Segmentation) -> npt.NDArray[np.uint8]:
    """Segment number -> canonical id, as a table indexed by segment number."""
    numbers = [int(n) for n in seg.segment_numbers]
    table = np.zeros(max(numbers) + 1, dtype=np.uint8)
    for number in numbers:
        description = seg.get_segment_description(number)
        code = description.segmented_property_type
        table[number] = segment_canonical_id(
            str(code.value), str(code.scheme_designator), str(description.segment_label)
        )
    return table


def as_segmentation(seg: hd.seg.Segmentation | Dataset | str | Path) -> hd.seg.Segmentation:
    """A highdicom Segmentation from a dataset or file; DicomInputError if it is not a SEG."""
    if isinstance(seg, hd.seg.Segmentation):
        return seg
    try:
        if isinstance(seg, Dataset):
            return hd.seg.Segmentation.from_dataset(seg)
        return hd.seg.segread(seg)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DicomInputError(f"This is not a readable DICOM-SEG ({exc}).") from exc


def _source_uids(seg: hd.seg.Segmentation, source: Volume) -> list[str]:
    """The source's instance UIDs in ``k`` order, after checking the SEG lies on its grid."""
    uids = [str(u) for u in source.meta.get("sop_instance_uids", None) or ()]
    if len(uids) != source.shape[2]:
        raise GeometryMismatchError(
            "The source volume carries no SOP instance UIDs per slice; read it with "
            "dicom_series.read_dicom_series."
        )
    source_for = str(source.meta.get("frame_of_reference_uid", "") or "")
    seg_for = str(seg.get("FrameOfReferenceUID", "") or "")
    if source_for and seg_for and source_for != seg_for:
        raise GeometryMismatchError(
            "The segmentation lies in another frame of reference than its source series."
        )
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    foreign = referenced - set(uids)
    if not referenced or foreign:
        raise GeometryMismatchError(
            f"The segmentation references {len(foreign)} instance(s) that are not slices of "
            f"its source series (of {len(referenced)}); it was made on other images."
        )
    n_cols, n_rows, _ = source.shape
    if (int(seg.Rows), int(seg.Columns)) != (n_rows, n_cols):
        raise GeometryMismatchError(
            f"The segmentation's frames are {seg.Rows}x{seg.Columns}, the source images "
            f"{n_rows}x{n_cols}."
        )
    return uids


def read_dicom_seg(
    seg_dataset: hd.seg.Segmentation | Dataset | str | Path, source_volume: Volume
) -> Volume:
    """A DICOM-SEG as a canonical label map (uint8) on the source series' DICOM grid.

    ``source_volume`` is the source series as ``read_dicom_series`` returns it (its ``meta``
    gives the SOP instance UIDs in ``k`` order). Raises DicomInputError when the object is not a
    SEG, GeometryMismatchError when it references other images or another frame of reference,
    and LabelError when a segment is not a known vertebra or segments overlap (a voxel cannot
    belong to two vertebrae).
    """
    seg = as_segmentation(seg_dataset)
    uids = _source_uids(seg, source_volume)
    lookup = _segment_lookup(seg)
    try:
        numbers = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
            dtype=np.uint16,
        )
    except RuntimeError as exc:
        raise LabelError(
            f"The segmentation's segments overlap; a voxel cannot be two vertebrae ({exc})."
        ) from exc
    except (KeyError, ValueError) as exc:
        raise GeometryMismatchError(
            f"The segmentation's frames cannot be placed on the source slices ({exc})."
        ) from exc
    return source_volume.with_array(
        frames_to_array(lookup[numbers]),
        source="dicom-seg",
        seg_series_instance_uid=str(seg.SeriesInstanceUID),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
    )
