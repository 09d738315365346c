"""The training worker's Celery task: train one model version, register it, evaluate it.

The gateway (or ``spinecloud_shared.db.training_jobs.create_training_job``) creates a
``TrainingJob`` row and enqueues ``spinecloud.training.train`` (queue ``training``) with
``{"job_id": ...}`` after the commit. The work is ``worker_job.run_training_job``; this module
wires it to the shared job machinery (``spinecloud_shared.jobs``): a SpineCloudError marks the
job failed with its code and sentence, transient errors are retried with backoff, anything
else is an ``internal_error``, and the worker lives on. Acks late and prefetch 1 come from the
shared Celery app, so a worker killed mid-run loses nothing: the message is delivered again and
the job resumes from its last checkpoint. Run one training worker per GPU (concurrency 1).

A fine-tune job (``params["kind"] == "finetune"``) runs ``finetune_job.run_finetune_job``
instead. ``spinecloud.training.check_corrections`` (``correction_check``) counts clinicians'
unused corrections and creates that job at the threshold; it is not a job itself: an error
(Orthanc unreachable) is logged and the next stable study with a correction sends it again.
"""

from __future__ import annotations

import logging
from typing import Any

from spinecloud_shared.db.job_status import row_recorder
from spinecloud_shared.db.models import TrainingJob
from spinecloud_shared.errors import SpineCloudError
from spinecloud_shared.jobs import RetryPolicy, job_task
from spinecloud_shared.queue import celery_app
from spinecloud_shared.task_names import CHECK_CORRECTIONS, TRAIN
from spinecloud_training.correction_check import check_corrections
from spinecloud_training.finetune_job import is_finetune_job, run_finetune_job
from spinecloud_training.worker_job import run_training_job

__all__ = ["check_corrections_task", "record_training", "train"]

logger = logging.getLogger(__name__)

record_training = row_recorder(TrainingJob, "Training job")


@job_task(celery_app, TRAIN, record=record_training, policy=RetryPolicy(max_retries=3))
def train(job_id: str) -> dict[str, Any]:
    """Celery task ``TRAIN`` (queue ``training``): see the module doc."""
    if is_finetune_job(job_id):
        return run_finetune_job(job_id)
    return run_training_job(job_id)


@celery_app.task(name=CHECK_CORRECTIONS)
def check_corrections_task(**_reason: Any) -> list[dict[str, Any]]:
    """Celery task ``CHECK_CORRECTIONS`` (queue ``training``): one outcome per production model.

    Keyword arguments (the gateway sends the study that triggered it) are only logged context.
    """
    try:
        return [outcome.as_dict() for outcome in check_corrections()]
    except SpineCloudError as exc:
        logger.warning("correction check failed: %s (%s)", exc.code, exc.message)
        return []
