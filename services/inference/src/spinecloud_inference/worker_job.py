"""One inference job's I/O: Orthanc series in, outputs on disk, DICOM-SEG back into Orthanc.

:func:`run_segment_job` is what the Celery task (``tasks.py``) runs, with its collaborators
passed in (a session factory, an Orthanc client) so that tests can call it directly. Stages
are timed (``fetch_s``, ``decode_s``, ``load_s``, ``preprocess_s``, ``forward_s``,
``postprocess_s``, ``encode_s``, ``write_s`` for the output files, ``store_s``) and recorded on
the job with the findings and output locations (``summary.json`` gets the timings up to the
write).

Bad input fails fast: the series is decoded (``dicom_*`` codes) and the image checked
(``image_too_small``, ``image_all_air``, ``image_all_metal``) before the model is loaded, and a
model whose channels do not map to vertebrae is refused when it is loaded
(``model_labels_unmapped``). Orthanc down or answering 5xx raises ``UpstreamError``
(transient): the task retries the whole job with backoff.

Order matters for failures: the DICOM-SEG is stored into Orthanc last, after every other step
succeeded, so a failed job leaves no partial SEG behind. Its UIDs derive from the job key
(``dicom_seg.seg_uids``): a retried or redelivered job produces the same SOPInstanceUID.
Orthanc 1.10 keeps an existing instance with the same SOPInstanceUID and ignores the new one
unless ``"OverwriteInstances": true`` is configured, so deployments set it (the rerun then
replaces the SEG; without it the first SEG stays, still exactly one instance).

Logs carry the job id and stage names only, never patient identifiers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from spinecloud_inference.backends import load_model
from spinecloud_inference.dicom_seg import build_dicom_seg
from spinecloud_inference.outputs import write_outputs
from spinecloud_inference.pipeline import SegmentationResult, check_input, segment_volume
from spinecloud_shared.db.models import InferenceJob, JobStatus, Series
from spinecloud_shared.dicom_series import read_dicom_series, read_series_datasets
from spinecloud_shared.errors import NotFoundError
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.settings import get_settings

__all__ = ["JobSpec", "SessionFactory", "Timer", "dicomweb_path", "run_segment_job"]

logger = logging.getLogger(__name__)

#: Opens a session that commits on success (``spinecloud_shared.db.session.session_scope``).
SessionFactory = Callable[[], AbstractContextManager[Any]]

#: Statuses a (redelivered) job is not run again in.
_DONE = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)
#: Pipeline stages whose timings come from the SegmentationResult.
_PIPELINE_STAGES = ("preprocess", "forward", "postprocess")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the worker needs from the job row, read in one short transaction."""

    job_id: str
    status: JobStatus
    orthanc_series_id: str | None
    series_instance_uid: str
    study_instance_uid: str
    model_ref: str


class Timer:
    """Collects seconds per stage as ``<stage>_s`` keys."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"{name}_s"] = round(time.perf_counter() - start, 4)

    def add_pipeline(self, result: SegmentationResult) -> None:
        """Copy the pipeline's own stage timings (preprocess, forward, postprocess)."""
        for name in _PIPELINE_STAGES:
            if name in result.timings_s:
                self.seconds[f"{name}_s"] = round(float(result.timings_s[name]), 4)


def dicomweb_path(study_uid: str, series_uid: str, instance_uid: str) -> str:
    """The DICOMweb (WADO-RS) path of an instance, relative to the DICOMweb root."""
    return f"/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}"


def load_spec(job_id: str, session_factory: SessionFactory) -> JobSpec:
    """Read the job and its series; NotFoundError when the job is gone."""
    with session_factory() as session:
        job = session.get(InferenceJob, job_id)
        if job is None:
            raise NotFoundError(f"Inference job {job_id} does not exist.")
        series = session.get(Series, job.series_id)
        return JobSpec(
            job_id=job_id,
            status=job.status,
            orthanc_series_id=series.orthanc_id if series is not None else None,
            series_instance_uid=job.series_instance_uid,
            study_instance_uid=job.study_instance_uid,
            model_ref=f"{job.model_name}@{job.model_version}",
        )


def _orthanc_series_id(spec: JobSpec, orthanc: OrthancClient) -> str:
    """The series' Orthanc id: from the row, else looked up by SeriesInstanceUID."""
    return spec.orthanc_series_id or orthanc.find_series(spec.series_instance_uid)


def _decode(files: list[bytes]) -> tuple[list[Dataset], Any]:
    """Validated, sorted datasets (SEG sources) and the CT volume in HU."""
    datasets, _ = read_series_datasets(list(files))
    return datasets, read_dicom_series(datasets)


def _encode(result: SegmentationResult, datasets: list[Dataset], model_ref: str) -> bytes:
    """The DICOM-SEG as Part 10 bytes."""
    seg = build_dicom_seg(result.labels, datasets, model=model_ref)
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _record_success(
    job_id: str,
    session_factory: SessionFactory,
    *,
    timings: dict[str, float],
    findings: dict[str, Any],
    outputs: dict[str, Any],
) -> None:
    """Store timings, findings and outputs on the job (the status is recorded by run_job)."""
    with session_factory() as session:
        job = session.get(InferenceJob, job_id)
        if job is None:
            raise NotFoundError(f"Inference job {job_id} does not exist.")
        job.timings = timings
        job.findings = findings
        job.outputs = outputs


def _findings(result: SegmentationResult) -> dict[str, Any]:
    """JSON-ready findings: plausibility findings and per-vertebra levels."""
    return {
        "plausibility": [finding.to_dict() for finding in result.findings],
        "levels": [
            {
                "label": level.label,
                "name": level.name,
                "volume_ml": level.volume_ml,
                "centroid_ras": list(level.centroid_ras),
            }
            for level in result.levels
        ],
    }


def run_segment_job(
    job_id: str,
    *,
    session_factory: SessionFactory,
    orthanc: OrthancClient,
    models_dir: Path | None = None,
    artifact_dir: Path | None = None,
) -> dict[str, Any]:
    """Segment the job's series, write its outputs, store its SEG; returns the outputs.

    A job already succeeded or cancelled is skipped (``{"skipped": <status>}``). Errors
    propagate (SpineCloudError subclasses carry the failure code; transient ones are retried
    by the caller).
    """
    spec = load_spec(job_id, session_factory)
    if spec.status in _DONE:
        logger.info("inference job %s already %s; skipped", job_id, spec.status.value)
        return {"skipped": spec.status.value}
    timer = Timer()
    with timer.stage("fetch"):
        files = orthanc.series_files(_orthanc_series_id(spec, orthanc))
    with timer.stage("decode"):
        datasets, ct = _decode(files)
    check_input(ct)
    with timer.stage("load"):
        model = load_model(spec.model_ref, models_dir=models_dir)
    result = segment_volume(ct, model)
    timer.add_pipeline(result)
    with timer.stage("encode"):
        seg_bytes = _encode(result, datasets, result.model_ref)
    out_dir = (artifact_dir or get_settings().resolved_artifact_dir) / "jobs" / job_id
    with timer.stage("write"):
        paths = write_outputs(
            ct,
            result.labels,
            out_dir,
            model_ref=result.model_ref,
            findings=result.findings,
            timings=dict(timer.seconds),
        )
    with timer.stage("store"):
        stored = orthanc.store(seg_bytes)
    outputs = _outputs(spec, seg_bytes, stored, {k: str(v) for k, v in paths.items()})
    _record_success(
        job_id, session_factory, timings=timer.seconds, findings=_findings(result), outputs=outputs
    )
    logger.info("inference job %s succeeded: %s", job_id, timer.seconds)
    return outputs


def _outputs(
    spec: JobSpec, seg_bytes: bytes, stored: dict[str, Any], paths: dict[str, str]
) -> dict[str, Any]:
    """The job's ``outputs``: SEG UIDs, its Orthanc id and DICOMweb path, the file paths."""
    seg = dcmread(BytesIO(seg_bytes), stop_before_pixels=True)
    series_uid, instance_uid = str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)
    return {
        "seg_series_instance_uid": series_uid,
        "seg_sop_instance_uid": instance_uid,
        "seg_orthanc_id": stored.get("ID"),
        "seg_dicomweb_path": dicomweb_path(spec.study_instance_uid, series_uid, instance_uid),
        "paths": paths,
    }
