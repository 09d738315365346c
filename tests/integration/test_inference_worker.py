"""The inference task on a real Celery worker, Orthanc, PostgreSQL and Redis.

A phantom CT series goes into Orthanc; Study/Series/InferenceJob rows are created as the
gateway would; the job is enqueued on the ``inference`` queue. The worker stores exactly one
DICOM-SEG (same voxels as the job's NIfTI output), a rerun overwrites it (Orthanc configured
with ``OverwriteInstances``), and a non-CT series fails with its code while the worker lives on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from celery import Celery

from spinecloud_inference.dicom_seg import read_dicom_seg
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import InferenceJob, JobStatus, Series, Study
from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import NotCtError
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.queue import enqueue
from spinecloud_shared.task_names import INFERENCE_QUEUE, SEGMENT_SERIES
from tests.fixtures.services import CeleryWorker, StartWorker, wait_for
from tests.unit.test_inference_pipeline import lumbar_phantom, write_tiny_bundle

pytestmark = pytest.mark.integration

TIMEOUT_S = 90.0
MODEL = ("tiny", "0.0.1")
TIMED_STAGES = ("fetch", "decode", "preprocess", "forward", "postprocess", "encode", "store")


@pytest.fixture()
def worker_env(private_orthanc: LocalOrthanc, tmp_path: Path) -> Mapping[str, str]:
    """Environment of an inference worker that finds the tiny model under its data folder."""
    data_dir = tmp_path / "data"
    write_tiny_bundle(data_dir / "models" / MODEL[0] / MODEL[1], name=MODEL[0], version=MODEL[1])
    return {
        "SPINECLOUD_DATA_DIR": str(data_dir),
        "SPINECLOUD_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "SPINECLOUD_ORTHANC_URL": private_orthanc.url,
        "SPINECLOUD_ORTHANC_USERNAME": private_orthanc.username,
        "SPINECLOUD_ORTHANC_PASSWORD": private_orthanc.password,
    }


def _start(
    start: StartWorker, url: str, env: Mapping[str, str], visibility_s: int | None = None
) -> CeleryWorker:
    return start(
        (INFERENCE_QUEUE,),
        database_url=url,
        task_modules=("spinecloud_inference.tasks",),
        env=env,
        visibility_timeout_s=visibility_s,
        ready_timeout_s=60.0,
    )


@pytest.fixture()
def worker(
    celery_worker_process: StartWorker, postgres_url: str, worker_env: Mapping[str, str]
) -> CeleryWorker:
    """A running inference worker."""
    return _start(celery_worker_process, postgres_url, worker_env)


def _push_series(
    client: OrthancClient, folder: Path, key: str, modality: str = "CT", spacing_mm: float = 3.0
) -> Path:
    """Write the phantom CT as a series (optionally relabelled), store it; returns the folder."""
    phantom = lumbar_phantom(spacing_mm=(spacing_mm,) * 3)
    paths = write_ct_series(phantom.ct, folder, key=key)
    for path in paths:
        if modality != "CT":
            dataset = pydicom.dcmread(path)
            dataset.Modality = modality
            dataset.save_as(path)
    client.store_many(path.read_bytes() for path in paths)
    return folder


def _create_job(url: str, client: OrthancClient, folder: Path) -> str:
    """Study, Series and InferenceJob rows as the gateway creates them."""
    first = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    with session_scope(url) as session:
        study = Study(study_instance_uid=study_uid)
        session.add(study)
        session.flush()
        series = Series(
            series_instance_uid=series_uid,
            orthanc_id=client.find_series(series_uid),
            study_id=study.id,
            modality=str(first.Modality),
        )
        session.add(series)
        session.flush()
        job = InferenceJob(
            series_id=series.id,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            model_name=MODEL[0],
            model_version=MODEL[1],
        )
        session.add(job)
        session.flush()
        return str(job.id)


def _finished(url: str, job_id: str) -> InferenceJob | None:
    with session_scope(url) as session:
        job = session.get_one(InferenceJob, job_id)
        return job if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None


def _run(url: str, app: Celery, job_id: str) -> InferenceJob:
    enqueue(SEGMENT_SERIES, {"job_id": job_id}, queue=INFERENCE_QUEUE, app=app)
    job: InferenceJob = wait_for(lambda: _finished(url, job_id), timeout_s=TIMEOUT_S)
    return job


def _seg_instances(client: OrthancClient, study_uid: str) -> list[str]:
    query: dict[str, Any] = {
        "Level": "Instance",
        "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"},
    }
    return list(client.api.post_tools_find(query).json())


def _requeue(url: str, job_id: str) -> None:
    with session_scope(url) as session:
        session.get_one(InferenceJob, job_id).mark(JobStatus.QUEUED)


def test_worker_segments_stores_one_seg_and_survives_bad_input(
    worker: CeleryWorker,
    celery_client: Celery,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    bad = _create_job(
        postgres_url,
        private_client,
        _push_series(private_client, tmp_path / "mr", "worker-mr", modality="MR"),
    )
    failed = _run(postgres_url, celery_client, bad)
    assert failed.status is JobStatus.FAILED and failed.error_code == NotCtError.code

    folder = _push_series(private_client, tmp_path / "ct", "worker-ct")
    job_id = _create_job(postgres_url, private_client, folder)
    done = _run(postgres_url, celery_client, job_id)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert {f"{s}_s" for s in TIMED_STAGES} <= set(done.timings)
    assert done.attempts == 1 and done.findings["levels"]
    seg_ids = _seg_instances(private_client, done.study_instance_uid)
    assert len(seg_ids) == 1
    assert done.outputs["seg_orthanc_id"] == seg_ids[0]

    source = read_dicom_series(folder)
    seg = pydicom.dcmread(BytesIO(private_client.instance_file(seg_ids[0])))
    from_seg = read_dicom_seg(seg, source)
    nifti = read_nifti(done.outputs["paths"]["labels_nifti"])
    assert np.array_equal(from_seg.array, nifti.array) and from_seg.same_grid(nifti)

    _requeue(postgres_url, job_id)
    again = _run(postgres_url, celery_client, job_id)
    assert again.status is JobStatus.SUCCEEDED and again.attempts == 2
    assert _seg_instances(private_client, done.study_instance_uid) == seg_ids

    # A redelivered message for a succeeded job is skipped, the job left as it is.
    task_id = enqueue(SEGMENT_SERIES, {"job_id": job_id}, queue=INFERENCE_QUEUE, app=celery_client)
    assert celery_client.AsyncResult(task_id).get(timeout=TIMEOUT_S) == {"skipped": "succeeded"}
    assert _finished(postgres_url, job_id) is not None
    with session_scope(postgres_url) as session:
        assert session.get_one(InferenceJob, job_id).attempts == 2


def _status(url: str, job_id: str) -> JobStatus:
    with session_scope(url) as session:
        return session.get_one(InferenceJob, job_id).status


def test_killed_worker_job_completes_on_restart(
    celery_worker_process: StartWorker,
    celery_client: Celery,
    private_client: OrthancClient,
    postgres_url: str,
    worker_env: Mapping[str, str],
    tmp_path: Path,
) -> None:
    """SIGKILL mid-job: the late-acked message is restored and a new worker finishes it."""
    visibility_s = 3
    first = _start(celery_worker_process, postgres_url, worker_env, visibility_s)
    folder = _push_series(private_client, tmp_path / "big", "worker-kill", spacing_mm=1.5)
    job_id = _create_job(postgres_url, private_client, folder)
    enqueue(SEGMENT_SERIES, {"job_id": job_id}, queue=INFERENCE_QUEUE, app=celery_client)
    wait_for(lambda: _status(postgres_url, job_id) is JobStatus.RUNNING, interval_s=0.02)
    delivered_at = time.monotonic()
    first.kill()
    assert _status(postgres_url, job_id) is JobStatus.RUNNING, "job ended before the kill"
    # A worker starting after the visibility timeout restores the unacknowledged message.
    time.sleep(max(0.0, delivered_at + visibility_s + 0.5 - time.monotonic()))

    _start(celery_worker_process, postgres_url, worker_env, visibility_s)
    done: InferenceJob = wait_for(lambda: _finished(postgres_url, job_id), timeout_s=TIMEOUT_S)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert done.attempts >= 2
    assert len(_seg_instances(private_client, done.study_instance_uid)) == 1
