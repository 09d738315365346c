"""Clinicians' corrected segmentations in Orthanc, turned into a training dataset.

**Which SEGs are corrections (the selection rule).** A DICOM-SEG instance in Orthanc is a
correction of a CT series when

1. its ``ReferencedSeriesSequence`` names exactly one series (the CT it was drawn on), and
2. it is not SpineCloud's own AI output: the inference worker writes every SEG with
   ``Manufacturer`` ``"SpineCloud"`` and ``ManufacturerModelName`` ``"spinecloud-inference"``
   (``spinecloud_inference.dicom_seg``; a unit test keeps the two in step). A viewer or 3D Slicer
   that saves an edited segmentation writes a new series under its own device identity, so
   the AI SEG and a correction never share a SeriesInstanceUID or a manufacturer.
3. When a CT series has several corrections, the newest wins: the latest ``ContentDate`` +
   ``ContentTime`` (else ``SeriesDate``/``SeriesTime``, else ``InstanceCreationDate``/``Time``),
   ties broken by SeriesInstanceUID so the choice is deterministic. The older ones are listed
   as superseded.

SEGs that are not corrections are *ignored* (listed with why); corrections that cannot be used
are *excluded* with the error's code and sentence, and the run goes on:

- the CT series it references is not in Orthanc (``not_found``), or is not a readable CT
  series (the ``dicom_*`` codes of ``spinecloud_shared.dicom_series``);
- it is not on the CT's grid: another frame of reference, frames of another size, or frames
  that reference instances the CT series does not hold (``geometry_mismatch``);
- a segment whose code is not a vertebra SpineCloud knows, overlapping segments, no vertebra,
  or a transitional vertebra (T13, L6) that the TotalSegmentator layout cannot hold
  (``invalid_labels``).

**Segment codes.** A segment becomes a canonical vertebra id through its SNOMED-CT
``SegmentedPropertyTypeCodeSequence`` (scheme ``SCT``, or the retired ``SRT``), with the codes
of ``spinecloud_shared.labels``. The generic "Vertebra" code (51282000), which T13 and L6 carry
and some tools write for every level, is resolved by the segment label (``L3``, ``T13``,
``vertebrae_L3``...). Anything else is refused rather than guessed. These reading rules are
``spinecloud_shared.dicom_seg_read``'s, shared with the inference service.

**The dataset.** Usable cases are written in the TotalSegmentator layout
(``spinecloud_shared.layouts.totalsegmentator``: ``sNNNN/ct.nii.gz`` and one mask per structure,
on the CT's own grid) with a ``meta.csv`` split. The split is deterministic: cases are ordered by
a seeded hash of their CT SeriesInstanceUID and the first ``val_fraction`` of them (at least one
when there are two or more cases) go to ``val``. ``corrections.json`` beside it lists each case,
the ignored SEGs and the excluded corrections with their reasons, identified only by truncated
SHA-256 digests of their UIDs: no patient name or id, no UID, leaves Orthanc.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from spinecloud_shared import labels
from spinecloud_shared.dicom_seg_read import SEG_MANUFACTURER, SEG_MODEL_NAME, read_dicom_seg
from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.errors import (
    DicomInputError,
    LabelError,
    NotFoundError,
    SpineCloudError,
    UpstreamError,
)
from spinecloud_shared.layouts import totalsegmentator
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.volume import Volume

__all__ = [
    "Correction",
    "CorrectionCase",
    "CorrectionDataset",
    "ExcludedCorrection",
    "IgnoredSeg",
    "SegCandidate",
    "assign_splits",
    "build_correction_dataset",
    "find_seg_candidates",
    "is_spinecloud_output",
    "read_correction_seg",
    "select_corrections",
    "uid_digest",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "corrections.json"

ProgressCallback = Callable[[str, int, int], None]


def uid_digest(uid: str) -> str:
    """A short, stable stand-in for a UID in logs and provenance (SHA-256, 16 hex digits)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- selection (pure)


@dataclass(frozen=True)
class SegCandidate:
    """A SEG instance in Orthanc, described by the header fields the selection rule reads."""

    orthanc_instance_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    referenced_series_uids: tuple[str, ...]
    manufacturer: str = ""
    manufacturer_model_name: str = ""
    #: Sortable ``YYYYMMDDHHMMSS.ffffff`` (empty when the header has no date).
    content_datetime: str = ""


@dataclass(frozen=True)
class Correction:
    """The correction chosen for one CT series, and the older ones it supersedes."""

    ct_series_uid: str
    seg: SegCandidate
    superseded: tuple[SegCandidate, ...] = ()


@dataclass(frozen=True)
class IgnoredSeg:
    """A SEG that is not used as a correction, and why (not an error)."""

    seg_series: str
    reason: str


def is_spinecloud_output(candidate: SegCandidate) -> bool:
    """True for SEGs written by SpineCloud's inference worker (its device identity)."""
    return (
        candidate.manufacturer.strip() == SEG_MANUFACTURER
        and candidate.manufacturer_model_name.strip() == SEG_MODEL_NAME
    )


def _newest_first(candidate: SegCandidate) -> tuple[str, str, str]:
    return (
        candidate.content_datetime,
        candidate.series_instance_uid,
        candidate.sop_instance_uid,
    )


def select_corrections(
    candidates: Iterable[SegCandidate],
) -> tuple[list[Correction], list[IgnoredSeg]]:
    """Apply the selection rule (module docstring): one correction per CT series, newest wins.

    Returns the corrections ordered by CT series UID, and the SEGs ignored with their reason.
    """
    ignored: list[IgnoredSeg] = []
    by_ct: dict[str, list[SegCandidate]] = {}
    for candidate in candidates:
        seg = uid_digest(candidate.series_instance_uid)
        if is_spinecloud_output(candidate):
            ignored.append(IgnoredSeg(seg, "SpineCloud's own AI segmentation, not a correction"))
        elif len(candidate.referenced_series_uids) != 1:
            count = len(candidate.referenced_series_uids)
            ignored.append(
                IgnoredSeg(seg, f"references {count} series; a correction is drawn on one CT")
            )
        else:
            by_ct.setdefault(candidate.referenced_series_uids[0], []).append(candidate)
    corrections = []
    for ct_uid in sorted(by_ct):
        ordered = sorted(by_ct[ct_uid], key=_newest_first, reverse=True)
        corrections.append(Correction(ct_uid, ordered[0], tuple(ordered[1:])))
        ignored += [
            IgnoredSeg(uid_digest(old.series_instance_uid), "superseded by a newer correction")
            for old in ordered[1:]
        ]
    return corrections, ignored


def assign_splits(keys: Sequence[str], *, val_fraction: float, seed: int = 0) -> dict[str, str]:
    """'train' or 'val' per key: the first ``val_fraction`` of the keys in seeded-hash order
    (at least one when there are two or more keys, never all of them)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_val = 0
    if len(order) >= 2 and val_fraction > 0:
        n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    return {key: ("val" if i < n_val else "train") for i, key in enumerate(order)}


# --------------------------------------------------------------------------- reading


def read_correction_seg(dataset: Dataset, ct: Volume) -> Volume:
    """A correction SEG as a canonical label map (uint8) on its CT's DICOM grid.

    ``ct`` is the CT series as ``read_dicom_series`` returns it (per-slice instance UIDs in
    ``meta``). The reading rules are ``spinecloud_shared.dicom_seg_read``'s; a correction must
    also hold at least one vertebra (LabelError otherwise).
    """
    label_map = read_dicom_seg(dataset, ct)
    if not np.any(label_map.array):
        raise LabelError("The segmentation holds no vertebra.")
    return label_map.with_array(label_map.array, source="correction-seg")


# --------------------------------------------------------------------------- Orthanc


def _find_seg_series(
    client: OrthancClient, study_uids: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Orthanc's expanded answers for every SEG series (of the given studies, if any)."""
    queries: list[dict[str, str]] = (
        [{"Modality": "SEG", "StudyInstanceUID": s} for s in study_uids]
        if study_uids
        else [{"Modality": "SEG"}]
    )
    found: list[dict[str, Any]] = []
    for query in queries:
        body = {"Level": "Series", "Query": query, "Expand": True}
        try:
            response = client.api.post_tools_find(body)
        except httpx.TransportError as exc:
            raise UpstreamError(f"Orthanc is unreachable ({type(exc).__name__}).") from exc
        if response.status_code >= 400:
            raise UpstreamError(f"Orthanc answered {response.status_code} to the SEG lookup.")
        found += response.json()
    return found


def _datetime(dataset: Dataset) -> str:
    """The newest-wins key of a SEG header (module docstring, rule 3)."""
    for date_tag, time_tag in (
        ("ContentDate", "ContentTime"),
        ("SeriesDate", "SeriesTime"),
        ("InstanceCreationDate", "InstanceCreationTime"),
    ):
        date = str(dataset.get(date_tag, "") or "").strip()
        if date:
            clock = str(dataset.get(time_tag, "") or "").strip()
            whole, _, fraction = clock.partition(".")
            return f"{date}{whole.ljust(6, '0')}.{fraction.ljust(6, '0')[:6]}"
    return ""


def candidate_from_header(orthanc_instance_id: str, dataset: Dataset) -> SegCandidate:
    """The selection fields of one SEG header."""
    referenced = tuple(
        str(item.SeriesInstanceUID)
        for item in dataset.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    )
    return SegCandidate(
        orthanc_instance_id=orthanc_instance_id,
        study_instance_uid=str(dataset.get("StudyInstanceUID", "")),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        referenced_series_uids=tuple(dict.fromkeys(referenced)),
        manufacturer=str(dataset.get("Manufacturer", "") or ""),
        manufacturer_model_name=str(dataset.get("ManufacturerModelName", "") or ""),
        content_datetime=_datetime(dataset),
    )


def find_seg_candidates(
    client: OrthancClient, *, study_uids: Sequence[str] | None = None
) -> tuple[list[SegCandidate], list[IgnoredSeg]]:
    """Every SEG instance in Orthanc (or in the given studies), read header only; SEG files
    that cannot be parsed are listed as ignored."""
    candidates: list[SegCandidate] = []
    ignored: list[IgnoredSeg] = []
    for series in _find_seg_series(client, study_uids):
        for instance_id in series.get("Instances", []):
            data = client.instance_file(instance_id)
            try:
                header = dcmread(BytesIO(data), stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                ignored.append(IgnoredSeg(uid_digest(instance_id), f"unreadable file ({exc})"))
                continue
            candidates.append(candidate_from_header(instance_id, header))
    return candidates, ignored


def load_correction(client: OrthancClient, correction: Correction) -> tuple[Volume, Volume]:
    """(CT, canonical label map on the CT's grid) of one correction, read from Orthanc."""
    try:
        ct_id = client.find_series(correction.ct_series_uid)
    except NotFoundError:  # re-raised without the UID, which must not reach logs
        raise NotFoundError(
            "the CT series this correction was drawn on is not in Orthanc."
        ) from None
    ct = read_dicom_series(client.series_files(ct_id))
    seg = dcmread(BytesIO(client.instance_file(correction.seg.orthanc_instance_id)))
    return ct, read_correction_seg(seg, ct)


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class CorrectionCase:
    """A case of the dataset: its layout id, split, and digests of where it came from."""

    case_id: str
    split: str
    ct_series: str
    seg_series: str
    study: str
    levels: tuple[str, ...]


@dataclass(frozen=True)
class ExcludedCorrection:
    """A correction left out, with the error's code and sentence."""

    ct_series: str
    seg_series: str
    code: str
    reason: str


@dataclass
class CorrectionDataset:
    """What :func:`build_correction_dataset` wrote and left out."""

    root: Path
    cases: list[CorrectionCase] = field(default_factory=list)
    excluded: list[ExcludedCorrection] = field(default_factory=list)
    ignored: list[IgnoredSeg] = field(default_factory=list)
    seed: int = 0
    val_fraction: float = 0.25

    @property
    def studies(self) -> list[str]:
        """Digests of the studies whose corrections are in the dataset, sorted."""
        return sorted({c.study for c in self.cases})

    def provenance(self) -> dict[str, Any]:
        """Counts and digests for a model's lineage (no patient identifiers, no raw UIDs)."""
        return {
            "source": "clinicians' corrected DICOM-SEGs in Orthanc",
            "cases": len(self.cases),
            "train_cases": sum(c.split == "train" for c in self.cases),
            "val_cases": sum(c.split == "val" for c in self.cases),
            "studies": len(self.studies),
            "study_sha256_16": self.studies,
            "excluded": len(self.excluded),
            "ignored_segs": len(self.ignored),
        }

    def to_dict(self) -> dict[str, Any]:
        """``corrections.json``: the rule, the cases, the excluded and ignored SEGs."""
        return {
            "layout": "totalsegmentator",
            "selection_rule": (
                "SEG referencing one CT series, not written by Manufacturer "
                f"{SEG_MANUFACTURER!r} / model {SEG_MODEL_NAME!r}; newest content date/time "
                "per CT series wins"
            ),
            "split": {"seed": self.seed, "val_fraction": self.val_fraction},
            "provenance": self.provenance(),
            "cases": [asdict(c) for c in self.cases],
            "excluded": [asdict(e) for e in self.excluded],
            "ignored": [asdict(i) for i in self.ignored],
        }


def _level_names(label_map: Volume) -> tuple[str, ...]:
    present = [int(v) for v in np.unique(label_map.array) if v]
    return tuple(labels.by_id(i).name for i in sorted(present, key=lambda i: labels.by_id(i).order))


def _write_meta(root: Path, cases: Sequence[CorrectionCase]) -> None:
    """``meta.csv`` with the final splits (replaces the layout writer's provisional one)."""
    path = root / totalsegmentator.META_FILE
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(totalsegmentator.META_COLUMNS), delimiter=";", restval=""
        )
        writer.writeheader()
        for case in sorted(cases, key=lambda c: c.case_id):
            writer.writerow(
                {"image_id": case.case_id, "study_type": "correction", "split": case.split}
            )


def _exclude(result: CorrectionDataset, excluded: ExcludedCorrection) -> None:
    logger.warning("correction %s excluded: %s", excluded.seg_series, excluded.reason)
    result.excluded.append(excluded)


def build_correction_dataset(
    client: OrthancClient,
    root: Path,
    *,
    study_uids: Sequence[str] | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> CorrectionDataset:
    """Find the corrections in Orthanc and write the usable ones as a TotalSegmentator-layout
    dataset in ``root`` (which must be empty or absent), with ``meta.csv`` and
    ``corrections.json``. Bad corrections are excluded with their reason, never raised;
    Orthanc being unreachable (UpstreamError) is raised.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; give a new folder for the dataset.")
    root.mkdir(parents=True, exist_ok=True)
    candidates, ignored = find_seg_candidates(client, study_uids=study_uids)
    corrections, skipped = select_corrections(candidates)
    result = CorrectionDataset(
        root, ignored=ignored + skipped, seed=seed, val_fraction=val_fraction
    )
    written: list[tuple[Correction, str, tuple[str, ...]]] = []
    for index, correction in enumerate(corrections):
        if progress is not None:
            progress("reading corrections", index, len(corrections))
        ct_digest = uid_digest(correction.ct_series_uid)
        seg_digest = uid_digest(correction.seg.series_instance_uid)
        try:
            ct, label_map = load_correction(client, correction)
            case_id = totalsegmentator.case_name(len(written))
            totalsegmentator.write_totalsegmentator(
                root, [(ct, label_map)], first_index=len(written)
            )
        except UpstreamError:
            raise
        except SpineCloudError as exc:
            _exclude(result, ExcludedCorrection(ct_digest, seg_digest, exc.code, exc.message))
            continue
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # A malformed SEG from another tool that pydicom or highdicom cannot take apart.
            error = DicomInputError(f"the segmentation cannot be read ({type(exc).__name__}).")
            _exclude(result, ExcludedCorrection(ct_digest, seg_digest, error.code, error.message))
            continue
        written.append((correction, case_id, _level_names(label_map)))
    splits = assign_splits(
        [c.ct_series_uid for c, _, _ in written], val_fraction=val_fraction, seed=seed
    )
    result.cases = [
        CorrectionCase(
            case_id=case_id,
            split=splits[c.ct_series_uid],
            ct_series=uid_digest(c.ct_series_uid),
            seg_series=uid_digest(c.seg.series_instance_uid),
            study=uid_digest(c.seg.study_instance_uid),
            levels=levels,
        )
        for c, case_id, levels in written
    ]
    _write_meta(root, result.cases)
    (root / MANIFEST_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if progress is not None:
        progress("reading corrections", len(corrections), len(corrections))
    return result
