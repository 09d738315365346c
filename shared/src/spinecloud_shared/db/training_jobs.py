"""Creating, cancelling and re-queueing training jobs (the gateway's and the CLI's side).

The training worker (``spinecloud_training.tasks``) does the work; these functions only touch
the ``training_jobs`` row and enqueue ``spinecloud.training.train`` after the commit. They
flush; the caller commits (``session_scope``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_shared.db.models import JobStatus, TrainingJob
from spinecloud_shared.errors import InvalidInputError, NotFoundError
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.task_names import TRAIN

__all__ = ["BACKENDS", "create_training_job", "request_cancel", "requeue"]

#: Training backends the worker knows.
BACKENDS = ("segresnet", "nnunet")


def create_training_job(
    session: Session,
    *,
    backend: str,
    dataset: str,
    model_name: str,
    model_version: str,
    preset: str = "demo",
    params: dict[str, Any] | None = None,
    created_by: str | None = None,
    enqueue: bool = True,
    project_id: str | None = None,
    celery: Celery | None = None,
) -> TrainingJob:
    """A queued training job, enqueued on the ``training`` queue once the session commits.

    ``project_id`` scopes it (None: unassigned); ``celery`` is the application that sends the
    message (default: the one configured from the environment).
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"Unknown training backend {backend!r}; choose one of {BACKENDS}.")
    job = TrainingJob(
        backend=backend,
        dataset=dataset,
        model_name=model_name,
        model_version=model_version,
        preset=preset,
        params=dict(params or {}),
        created_by=created_by,
        project_id=project_id,
    )
    session.add(job)
    session.flush()
    if enqueue:
        enqueue_after_commit(session, TRAIN, {"job_id": job.id}, app=celery)
    return job


def _get(session: Session, job_id: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"Training job {job_id} does not exist.")
    return job


def request_cancel(session: Session, job_id: str) -> TrainingJob:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next
    iteration (after a checkpoint); a finished job is left as it is."""
    job = _get(session, job_id)
    if job.status is JobStatus.QUEUED:
        job.mark(JobStatus.CANCELLED)
    elif job.status is JobStatus.RUNNING:
        job.cancel_requested = True
    session.flush()
    return job


def requeue(
    session: Session, job_id: str, *, enqueue: bool = True, celery: Celery | None = None
) -> TrainingJob:
    """Queue a cancelled or failed job again; it resumes from its last checkpoint.

    ``celery`` is the application that sends the message (default: the environment's).
    """
    job = _get(session, job_id)
    if job.status not in (JobStatus.CANCELLED, JobStatus.FAILED):
        raise InvalidInputError(
            f"Training job {job_id} is {job.status.value}; only cancelled or failed jobs are "
            "queued again."
        )
    job.mark(JobStatus.QUEUED)
    job.cancel_requested = False
    session.flush()
    if enqueue:
        enqueue_after_commit(session, TRAIN, {"job_id": job.id}, app=celery)
    return job
