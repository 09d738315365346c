"""The training worker's Celery task: train one model version, register it, evaluate it.

The gateway (or ``spinecloud_shared.db.training_jobs.create_training_job``) creates a
``TrainingJob`` row and enqueues ``spinecloud.training.train`` (queue ``training``) with
``{"job_id": ...}`` after the commit. The work is ``worker_job.run_training_job``; this module
wires it to the shared job machinery (``spinecloud_shared.jobs``): a SpineCloudError marks the
job failed with its code and sentence, transient errors are retried with backoff, anything
else is an ``internal_error``, and the worker lives on. Acks late and prefetch 1 come from the
shared Celery app, so a worker killed mid-run loses nothing: the message is delivered again and
the job resumes from its last checkpoint. Run one training worker per GPU (concurrency 1).
"""

from __future__ import annotations

from typing import Any

from spinecloud_shared.db.models import JobStatus, TrainingJob
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.errors import NotFoundError
from spinecloud_shared.jobs import JobFailure, RetryPolicy, job_task
from spinecloud_shared.queue import celery_app
from spinecloud_shared.task_names import TRAIN
from spinecloud_training.worker_job import run_training_job

__all__ = ["record_training", "train"]

#: A job in one of these states keeps it: a redelivered message does not reopen it.
_KEPT = (JobStatus.SUCCEEDED, JobStatus.CANCELLED)


def record_training(job_id: str, status: JobStatus, failure: JobFailure | None) -> None:
    """Status recorder: RUNNING counts an attempt; succeeded/cancelled jobs stay as they are."""
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise NotFoundError(f"Training job {job_id} does not exist.")
        if job.status in _KEPT:
            return
        if status is JobStatus.RUNNING:
            job.attempts = (job.attempts or 0) + 1
        job.mark(
            status,
            error_code=failure.code if failure else None,
            error_message=failure.message if failure else None,
        )


@job_task(celery_app, TRAIN, record=record_training, policy=RetryPolicy(max_retries=3))
def train(job_id: str) -> dict[str, Any]:
    """Celery task ``TRAIN`` (queue ``training``): see the module doc."""
    return run_training_job(job_id)
