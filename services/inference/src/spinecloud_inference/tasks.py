"""The inference worker's Celery task: segment one series, store its DICOM-SEG.

The gateway creates an ``InferenceJob`` row and enqueues ``spinecloud.inference.segment_series``
(queue ``inference``) with ``{"job_id": ...}`` after the commit. The work itself is
``worker_job.run_segment_job``; this module wires it to the shared job machinery
(``spinecloud_shared.jobs``): SpineCloudError -> job failed with its code and sentence,
transient errors (Orthanc down or 5xx) -> Celery retry with backoff, the worker lives on.
Acks late and prefetch 1 come from the shared Celery app. The model stays loaded between
jobs (``backends.load_model``'s cache).

Worker settings (``worker_settings``) apply when this module is imported, i.e. when the worker
starts: the retry policy (``SPINECLOUD_INFERENCE_RETRY_*``) and nnU-Net's process count
(``SPINECLOUD_INFERENCE_NNUNET_PROCESSES`` -> ``nnUNet_def_n_proc``, default 1), which must be
in the environment before nnunetv2 is first imported.
"""

from __future__ import annotations

from typing import Any

from spinecloud_inference.worker_job import run_segment_job
from spinecloud_inference.worker_settings import configure_nnunet_environment, get_worker_settings
from spinecloud_shared.db.job_status import row_recorder
from spinecloud_shared.db.models import InferenceJob
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.jobs import job_task
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.queue import celery_app
from spinecloud_shared.task_names import SEGMENT_SERIES

__all__ = ["record_inference", "segment_series"]

configure_nnunet_environment()

record_inference = row_recorder(InferenceJob, "Inference job")

_POLICY = get_worker_settings().retry_policy()


# job_task gives Celery the policy's retry limit too (see its docstring).
@job_task(celery_app, SEGMENT_SERIES, record=record_inference, policy=_POLICY)
def segment_series(job_id: str) -> dict[str, Any]:
    """Celery task ``SEGMENT_SERIES`` (queue ``inference``): see the module doc."""
    return run_segment_job(
        job_id, session_factory=session_scope, orthanc=OrthancClient.from_settings()
    )
