"""Starting, cancelling and retrying training jobs; messages are sent after the commit.

The rows and the queue message come from ``spinecloud_shared.db.training_jobs`` (the same
functions the CLI uses); the message carries only ``{"job_id": ...}`` and goes to the
``training`` queue by task name (``spinecloud.training.train``), sent with the gateway's
Celery application.

A job is keyed by the model version it produces: starting the same training again returns
the existing job, while another training for a taken version (or a version already in the
registry) is a conflict.
"""

from __future__ import annotations

from functools import partial

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.errors import ConflictError
from spinecloud_gateway.models.scoping import actor, site_path, site_roots, target_project
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.trainings import repository
from spinecloud_gateway.trainings.schemas import TrainingCreate
from spinecloud_shared.db import training_jobs
from spinecloud_shared.db.models import FINISHED_STATUSES, JobStatus, TrainingJob

__all__ = ["cancel", "retry", "start"]


def _same_request(job: TrainingJob, body: TrainingCreate, project_id: str | None) -> bool:
    return (
        job.backend == body.backend
        and job.preset == body.preset
        and job.dataset == body.dataset
        and job.params == body.params
        and job.project_id == project_id
    )


def _existing(
    existing: TrainingJob, principal: Principal, body: TrainingCreate, project_id: str | None
) -> TrainingJob:
    """``existing`` when it is this same request, seen by the caller; a conflict otherwise."""
    if principal.sees_project(existing.project_id) and _same_request(existing, body, project_id):
        return existing
    raise ConflictError(
        f"Model version {body.model_name}@{body.model_version} is already being trained or "
        "was trained; give another model_version.",
        model=f"{body.model_name}@{body.model_version}",
    )


def start(
    session: Session,
    settings: GatewaySettings,
    principal: Principal,
    body: TrainingCreate,
    celery: Celery,
) -> tuple[TrainingJob, bool]:
    """A queued job for ``body`` (enqueued once the session commits), or the existing one.

    The insert runs in a savepoint: when an identical request created the job a moment
    earlier, the unique model version makes this insert fail and that job is returned.
    """
    project_id = target_project(session, principal, body.project_id, settings)
    find = partial(repository.by_model_version, session, body.model_name, body.model_version)
    existing = find()
    if existing is not None:
        return _existing(existing, principal, body, project_id), False
    ref = f"{body.model_name}@{body.model_version}"
    if repository.model_version_registered(session, body.model_name, body.model_version):
        raise ConflictError(f"Model version {ref} is already registered.", model=ref)
    dataset = body.dataset
    if dataset.startswith("/"):  # a folder: only inside the site's storage (see datasets)
        dataset = str(site_path(dataset, site_roots(settings), "dataset folder"))
    try:
        with session.begin_nested():
            job = training_jobs.create_training_job(
                session,
                backend=body.backend,
                dataset=dataset,
                model_name=body.model_name,
                model_version=body.model_version,
                preset=body.preset,
                params=body.params,
                created_by=actor(principal),
                project_id=project_id,
                celery=celery,
            )
    except IntegrityError:
        existing = find()
        if existing is None:
            raise
        return _existing(existing, principal, body, project_id), False
    return job, True


def cancel(session: Session, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job now; a running one stops at its next iteration, after a checkpoint."""
    if job.status in FINISHED_STATUSES:
        raise ConflictError(f"The training is already {job.status.value}; it cannot be cancelled.")
    return training_jobs.request_cancel(session, job.id)


def retry(session: Session, job: TrainingJob, celery: Celery) -> TrainingJob:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ConflictError(
            f"Only failed or cancelled trainings can be retried; this one is {job.status.value}."
        )
    return training_jobs.requeue(session, job.id, celery=celery)
