"""``/api/v1/trainings``: start, list, follow, cancel and retry training jobs (project-scoped).

Researchers and admins only: a training reads a dataset, which may be patient data, so every
start, read, cancel and retry is written to the audit log. Progress (phase, iteration, loss,
validation Dice, ETA) is what the training worker last stored on the job.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy.orm import Session

from spinecloud_gateway.api.deps import Client, ResearcherPrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.patterns import MODEL_NAME_PATTERN
from spinecloud_gateway.models.scoping import audit, visible_row
from spinecloud_gateway.trainings import repository
from spinecloud_gateway.trainings import service as trainings
from spinecloud_gateway.trainings.schemas import TrainingCreate, TrainingPage, TrainingRead
from spinecloud_shared.db.models import JobStatus, TrainingJob
from spinecloud_shared.errors import NotFoundError

router = APIRouter(prefix="/api/v1/trainings", tags=["trainings"])
TrainingId = Annotated[str, Path(min_length=36, max_length=36, pattern=r"^[0-9a-f-]{36}$")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such training in the caller's projects (problem+json)"}
}


def _visible(
    session: Session,
    training_id: str,
    principal: Principal,
    state: GatewayState,
    client: ClientInfo,
    action: str,
) -> TrainingJob:
    """The job if the caller's projects include it; else audited and 404."""
    try:
        return visible_row(session, TrainingJob, training_id, principal, "training")
    except NotFoundError:
        _audit(state, principal, client, action, None, "not_found", resource_id=training_id)
        raise


_audit = functools.partial(audit, resource_type="training")


@router.post(
    "",
    summary="Start a training (idempotent for the same request)",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": TrainingRead, "description": "The same training already exists"},
        409: {"description": "The model version is taken (problem+json)"},
    },
)
def start_training(
    body: TrainingCreate,
    response: Response,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> TrainingRead:
    """Record a queued job and send ``spinecloud.training.train`` once it is committed."""
    job, created = trainings.start(session, state.settings, principal, body, state.celery)
    _audit(state, principal, client, "training.start", job)
    if not created:
        response.status_code = status.HTTP_200_OK
    return TrainingRead.model_validate(job)


@router.get("", summary="List trainings in the caller's projects")
def list_trainings(
    session: SessionDep,
    principal: ResearcherPrincipal,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    model_name: Annotated[str | None, Query(max_length=100, pattern=MODEL_NAME_PATTERN)] = None,
    backend: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TrainingPage:
    """Trainings matching the filters, newest first."""
    where = repository.TrainingFilter(
        project_ids=principal.project_ids, status=job_status, model_name=model_name, backend=backend
    )
    rows = repository.search(session, where, limit=limit, offset=offset)
    return TrainingPage(
        items=[TrainingRead.model_validate(j) for j in rows], limit=limit, offset=offset
    )


@router.get("/{training_id}", summary="A training with its progress", responses=_NOT_FOUND)
def get_training(
    training_id: TrainingId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> TrainingRead:
    """The job as the worker last stored it; its read is audited."""
    job = _visible(session, training_id, principal, state, client, "training.read")
    _audit(state, principal, client, "training.read", job)
    return TrainingRead.model_validate(job)


@router.post(
    "/{training_id}/cancel",
    summary="Cancel a queued or running training",
    responses={**_NOT_FOUND, 409: {"description": "Already finished (problem+json)"}},
)
def cancel_training(
    training_id: TrainingId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> TrainingRead:
    """A queued job is cancelled at once; a running one checkpoints and stops
    (``cancel_requested`` until the worker marks it cancelled)."""
    job = _visible(session, training_id, principal, state, client, "training.cancel")
    trainings.cancel(session, job)
    _audit(state, principal, client, "training.cancel", job)
    return TrainingRead.model_validate(job)


@router.post(
    "/{training_id}/retry",
    summary="Queue a failed or cancelled training again",
    responses={**_NOT_FOUND, 409: {"description": "Not failed or cancelled (problem+json)"}},
)
def retry_training(
    training_id: TrainingId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> TrainingRead:
    """Back to queued, enqueued after commit; it resumes from its last checkpoint."""
    job = _visible(session, training_id, principal, state, client, "training.retry")
    trainings.retry(session, job, state.celery)
    _audit(state, principal, client, "training.retry", job)
    return TrainingRead.model_validate(job)
