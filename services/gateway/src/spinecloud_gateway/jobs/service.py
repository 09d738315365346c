"""Creating, cancelling and retrying inference jobs; the queue message is sent after commit.

The message carries only ``{"job_id": ...}``: the worker reads everything else from the row.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import get_or_create
from spinecloud_gateway.core.errors import ConflictError
from spinecloud_gateway.jobs import repository
from spinecloud_shared.db.models import FINISHED_STATUSES, InferenceJob, JobStatus, Series, Study
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.task_names import INFERENCE_QUEUE, SEGMENT_SERIES

__all__ = ["cancel", "ensure_job", "retry"]


def _enqueue(session: Session, job: InferenceJob, celery: Celery) -> None:
    enqueue_after_commit(session, SEGMENT_SERIES, {"job_id": job.id}, INFERENCE_QUEUE, app=celery)


def ensure_job(
    session: Session,
    *,
    study: Study,
    series: Series,
    model_name: str,
    model_version: str,
    priority: int,
    source: str,
    celery: Celery,
) -> tuple[InferenceJob, bool]:
    """The job for (series, model, version): the existing one, or a new queued one; (job, new).

    A new job is enqueued once the session commits.
    """
    job, created = get_or_create(
        session,
        lambda: repository.by_key(session, series.series_instance_uid, model_name, model_version),
        lambda: InferenceJob(
            series_id=series.id,
            series_instance_uid=series.series_instance_uid,
            study_instance_uid=study.study_instance_uid,
            project_id=study.project_id,
            model_name=model_name,
            model_version=model_version,
            priority=priority,
            source=source,
            status=JobStatus.QUEUED,
        ),
    )
    if created:
        _enqueue(session, job, celery)
    return job, created


def cancel(job: InferenceJob) -> InferenceJob:
    """Cancel a queued or running job (a worker that picks it up later skips it)."""
    if job.status in FINISHED_STATUSES:
        raise ConflictError(f"The job is already {job.status.value}; it cannot be cancelled.")
    job.mark(JobStatus.CANCELLED)
    return job


def retry(session: Session, job: InferenceJob, celery: Celery) -> InferenceJob:
    """Queue a failed or cancelled job again (same row, same outputs key)."""
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ConflictError(
            f"Only failed or cancelled jobs can be retried; this one is {job.status.value}."
        )
    job.mark(JobStatus.QUEUED)
    job.started_at = None
    job.finished_at = None
    job.celery_task_id = None
    _enqueue(session, job, celery)
    return job
