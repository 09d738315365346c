"""``/api/v1/jobs``: request, list, read, cancel and retry inference jobs (project-scoped)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy.orm import Session

from spinecloud_gateway.api.deps import Client, ReaderPrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.patterns import MODEL_NAME_PATTERN, UID_PATTERN
from spinecloud_gateway.jobs import repository
from spinecloud_gateway.jobs import service as jobs
from spinecloud_gateway.jobs.schemas import JobCreate, JobCreated, JobPage, JobRead
from spinecloud_gateway.studies import repository as studies
from spinecloud_shared.db.models import InferenceJob, JobStatus, Series, Study
from spinecloud_shared.errors import InvalidInputError, NotFoundError

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(min_length=36, max_length=36, pattern=r"^[0-9a-f-]{36}$")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job in the caller's projects (problem+json)"}
}


def _read(job: InferenceJob, request: Request) -> JobRead:
    """The API view of a job, with the SEG's DICOMweb URL when there is one."""
    answer = JobRead.model_validate(job)
    seg_uid = job.outputs.get("seg_series_instance_uid")
    if seg_uid:
        base = str(request.base_url).rstrip("/")
        answer.seg_dicomweb_url = (
            f"{base}/dicom-web/studies/{job.study_instance_uid}/series/{seg_uid}"
        )
    return answer


def _audit(
    state: GatewayState,
    principal: Principal,
    client: ClientInfo,
    action: str,
    job: InferenceJob | None,
    outcome: str,
    resource_id: str | None = None,
) -> None:
    state.audit.record(
        principal=principal,
        client=client,
        action=action,
        resource_type="job",
        resource_id=job.id if job else resource_id,
        outcome=outcome,
        study_instance_uid=job.study_instance_uid if job else None,
        project_id=job.project_id if job else None,
    )


def _visible_job(
    session: Session,
    job_id: str,
    principal: Principal,
    state: GatewayState,
    client: ClientInfo,
    action: str,
) -> InferenceJob:
    """The job if the caller's projects include it; else audited and 404."""
    job = session.get(InferenceJob, job_id)
    if job is None or not principal.sees_project(job.project_id):
        _audit(state, principal, client, action, None, "not_found", resource_id=job_id)
        raise NotFoundError("No such job.")
    return job


def _targets(session: Session, body: JobCreate, principal: Principal) -> tuple[Study, list[Series]]:
    """The study and series a creation request names, checked against the caller's projects."""
    if body.series_instance_uid is not None:
        series = studies.series_by_uid(session, body.series_instance_uid)
        study = session.get(Study, series.study_id) if series else None
        if series is None or study is None or not principal.sees_project(study.project_id):
            raise NotFoundError("No such series.")
        return study, [series]
    study = studies.study_by_uid(session, str(body.study_instance_uid))
    if study is None or not principal.sees_project(study.project_id):
        raise NotFoundError("No such study.")
    ct = [s for s in studies.series_of_study(session, study.id) if (s.modality or "") == "CT"]
    if not ct:
        raise InvalidInputError("The study has no CT series to segment.")
    return study, ct


@router.post(
    "",
    summary="Segment a series or a study's CT series (idempotent)",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": JobCreated, "description": "Every job already existed"},
        **_NOT_FOUND,
    },
)
def create_jobs(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> JobCreated:
    """One job per series for this model version: 201 if any is new, 200 if all existed."""
    study, series_list = _targets(session, body, principal)
    created = 0
    items = []
    for series in series_list:
        job, new = jobs.ensure_job(
            session,
            study=study,
            series=series,
            model_name=body.model_name,
            model_version=body.model_version,
            priority=body.priority,
            source="api",
            celery=state.celery,
        )
        created += int(new)
        items.append(job)
        _audit(state, principal, client, "job.create", job, "success")
    if not created:
        response.status_code = status.HTTP_200_OK
    session.flush()
    return JobCreated(items=[_read(j, request) for j in items], created=created)


@router.get("", summary="List jobs in the caller's projects")
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: ReaderPrincipal,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    study_instance_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    series_instance_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    model_name: Annotated[str | None, Query(max_length=100, pattern=MODEL_NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobPage:
    """Jobs matching the filters, newest first."""
    where = repository.JobFilter(
        project_ids=principal.project_ids,
        status=job_status,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        model_name=model_name,
    )
    rows = repository.search(session, where, limit=limit, offset=offset)
    return JobPage(items=[_read(j, request) for j in rows], limit=limit, offset=offset)


@router.get("/{job_id}", summary="A job with timings, findings and outputs", responses=_NOT_FOUND)
def get_job(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> JobRead:
    """The job; its read is audited."""
    job = _visible_job(session, job_id, principal, state, client, "job.read")
    _audit(state, principal, client, "job.read", job, "success")
    return _read(job, request)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a queued or running job",
    responses={**_NOT_FOUND, 409: {"description": "Already finished"}},
)
def cancel_job(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> JobRead:
    """Mark the job cancelled; a worker that reaches it skips it."""
    job = jobs.cancel(_visible_job(session, job_id, principal, state, client, "job.cancel"))
    _audit(state, principal, client, "job.cancel", job, "success")
    return _read(job, request)


@router.post(
    "/{job_id}/retry",
    summary="Queue a failed or cancelled job again",
    responses={**_NOT_FOUND, 409: {"description": "Not failed or cancelled"}},
)
def retry_job(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> JobRead:
    """Reset the job to queued and enqueue it after commit."""
    job = _visible_job(session, job_id, principal, state, client, "job.retry")
    jobs.retry(session, job, state.celery)
    _audit(state, principal, client, "job.retry", job, "success")
    return _read(job, request)
