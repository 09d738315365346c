"""``/api/v1/evaluations``: start evaluations, read them, their tables (JSON, CSV) and report.

Researchers and admins only, scoped to their projects. Per-case tables name the cases of a
dataset, so every read of an evaluation or its results is written to the audit log.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from spinecloud_gateway.api.deps import Client, ResearcherPrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.evaluations import repository
from spinecloud_gateway.evaluations import service as evaluations
from spinecloud_gateway.evaluations.schemas import (
    EvaluationCreate,
    EvaluationPage,
    EvaluationRead,
    EvaluationTables,
    TableName,
)
from spinecloud_gateway.models.scoping import audit
from spinecloud_shared.db.models import Evaluation, JobStatus
from spinecloud_shared.errors import NotFoundError

router = APIRouter(prefix="/api/v1/evaluations", tags=["evaluations"])
EvaluationId = Annotated[str, Path(min_length=36, max_length=36, pattern=r"^[0-9a-f-]{36}$")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such evaluation in the caller's projects (problem+json)"}
}
_RESULTS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"description": "The evaluation has not succeeded (problem+json)"},
}


_audit = functools.partial(audit, resource_type="evaluation")


def _visible(
    session: Session,
    evaluation_id: str,
    principal: Principal,
    state: GatewayState,
    client: ClientInfo,
    action: str,
) -> Evaluation:
    """The evaluation if the caller sees it (own project or its model's); else audited 404."""
    evaluation = repository.visible(session, evaluation_id, principal.project_ids)
    if evaluation is None:
        _audit(state, principal, client, action, None, "not_found", resource_id=evaluation_id)
        raise NotFoundError("No such evaluation.")
    return evaluation


@router.post(
    "",
    summary="Start an evaluation (idempotent for the same request)",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": EvaluationRead, "description": "The same evaluation already exists"},
        404: {"description": "No such model version or project (problem+json)"},
        422: {"description": "Folders outside the site's storage (problem+json)"},
    },
)
def start_evaluation(
    body: EvaluationCreate,
    response: Response,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> EvaluationRead:
    """Record a queued evaluation and send ``spinecloud.metrics.evaluate`` once committed."""
    evaluation, created = evaluations.start(session, state.settings, principal, body, state.celery)
    _audit(state, principal, client, "evaluation.start", evaluation)
    if not created:
        response.status_code = status.HTTP_200_OK
    return evaluations.read(evaluation)


@router.get("", summary="List evaluations in the caller's projects")
def list_evaluations(
    session: SessionDep,
    principal: ResearcherPrincipal,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    model_ref: Annotated[
        str | None, Query(max_length=200, pattern=r"^[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9._+-]+)?$")
    ] = None,
    split: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> EvaluationPage:
    """Evaluations matching the filters, newest first."""
    where = repository.EvaluationFilter(
        project_ids=principal.project_ids, status=job_status, model_ref=model_ref, split=split
    )
    rows = repository.search(session, where, limit=limit, offset=offset)
    return EvaluationPage(items=[evaluations.read(e) for e in rows], limit=limit, offset=offset)


@router.get("/{evaluation_id}", summary="An evaluation with its summary", responses=_NOT_FOUND)
def get_evaluation(
    evaluation_id: EvaluationId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> EvaluationRead:
    """The evaluation; its read is audited."""
    evaluation = _visible(session, evaluation_id, principal, state, client, "evaluation.read")
    _audit(state, principal, client, "evaluation.read", evaluation)
    return evaluations.read(evaluation)


@router.get(
    "/{evaluation_id}/tables",
    summary="The benchmark tables as JSON",
    responses=_RESULTS,
)
def get_tables(
    evaluation_id: EvaluationId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
    table: Annotated[TableName | None, Query(description="Only this table")] = None,
) -> EvaluationTables:
    """Every stored table (or one), rows in the metrics service's order."""
    evaluation = _visible(session, evaluation_id, principal, state, client, "evaluation.tables")
    evaluations.require_results(evaluation)
    _audit(state, principal, client, "evaluation.tables", evaluation)
    return EvaluationTables(
        evaluation_id=evaluation.id, tables=repository.rows(session, evaluation.id, table)
    )


@router.get(
    "/{evaluation_id}/tables/{table}.csv",
    summary="One benchmark table as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The table"}, **_RESULTS},
)
def get_table_csv(
    evaluation_id: EvaluationId,
    table: TableName,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> Response:
    """A CSV download of one stored table (header row first)."""
    evaluation = _visible(session, evaluation_id, principal, state, client, "evaluation.csv")
    evaluations.require_results(evaluation)
    body = evaluations.table_csv(session, evaluation, table)
    _audit(state, principal, client, "evaluation.csv", evaluation)
    filename = f"evaluation-{evaluation.id}-{table}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{evaluation_id}/report",
    summary="The HTML report the metrics service wrote",
    response_class=FileResponse,
    responses={
        200: {"content": {"text/html": {}}, "description": "The report"},
        **_RESULTS,
    },
)
def get_report(
    evaluation_id: EvaluationId,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> FileResponse:
    """The stored ``report.html``; 404 when the evaluation was run without report files."""
    evaluation = _visible(session, evaluation_id, principal, state, client, "evaluation.report")
    evaluations.require_results(evaluation)
    path = evaluations.report_path(evaluation)
    if path is None:
        raise NotFoundError("This evaluation has no HTML report.")
    _audit(state, principal, client, "evaluation.report", evaluation)
    return FileResponse(path, media_type="text/html; charset=utf-8")
