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

from spinecloud_shared.db.job_status import row_recorder
from spinecloud_shared.db.models import TrainingJob
from spinecloud_shared.jobs import RetryPolicy, job_task
from spinecloud_shared.queue import celery_app
from spinecloud_shared.task_names import TRAIN
from spinecloud_training.worker_job import run_training_job

__all__ = ["record_training", "train"]

record_training = row_recorder(TrainingJob, "Training job")


@job_task(celery_app, TRAIN, record=record_training, policy=RetryPolicy(max_retries=3))
def train(job_id: str) -> dict[str, Any]:
    """Celery task ``TRAIN`` (queue ``training``): see the module doc."""
    return run_training_job(job_id)
