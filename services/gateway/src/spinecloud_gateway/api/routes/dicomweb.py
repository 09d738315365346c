"""``/dicom-web``: QIDO-RS, WADO-RS and STOW-RS proxied to Orthanc, scoped and audited.

A study outside the caller's projects answers 404 and nothing else, exactly like a study that
does not exist. Searches by a project-scoped caller are filtered to its studies. Every read and
store is written to the audit log. Not in the OpenAPI schema: the DICOMweb standard (PS3.18)
is the contract.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from spinecloud_gateway.api.deps import Client, ReaderPrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.errors import BadRequestError, UnsupportedMediaTypeError
from spinecloud_gateway.core.patterns import UID_PATTERN
from spinecloud_gateway.dicomweb import scope
from spinecloud_gateway.dicomweb.upstream import (
    RetrievalClient,
    open_upstream,
    raise_for_retrieval,
    raise_for_upstream,
    retrieval_response,
    streaming_response,
)
from spinecloud_gateway.studies import repository
from spinecloud_shared.db.models import Study
from spinecloud_shared.errors import NotFoundError, UpstreamError


@asynccontextmanager
async def _retrieval_client(app: FastAPI) -> AsyncIterator[None]:
    """Open the WADO-RS client with the application (merged into the app's lifespan)."""
    state: GatewayState = app.state.gateway
    app.state.dicomweb_retrieval = RetrievalClient.from_settings(state.settings)
    try:
        yield
    finally:
        await app.state.dicomweb_retrieval.aclose()
        app.state.dicomweb_retrieval = None


router = APIRouter(
    prefix="/dicom-web", tags=["dicomweb"], include_in_schema=False, lifespan=_retrieval_client
)
DICOM_JSON = "application/dicom+json"
StudyUid = Annotated[str, Path(min_length=1, max_length=64, pattern=UID_PATTERN)]


def _client(state: GatewayState) -> Any:
    if state.dicomweb is None:
        raise UpstreamError("The DICOMweb proxy is not started.")
    return state.dicomweb


def _retrieval(request: Request) -> RetrievalClient:
    client: RetrievalClient | None = getattr(request.app.state, "dicomweb_retrieval", None)
    if client is None:
        raise UpstreamError("The DICOMweb proxy is not started.")
    return client


def visible_study(
    study_uid: StudyUid,
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
    request: Request,
) -> Study:
    """The requested study if the caller may see it; else audited 404."""
    study = repository.study_by_uid(session, study_uid)
    if study is None or not principal.sees_project(study.project_id):
        state.audit.record(
            principal=principal,
            client=client,
            action=f"dicomweb.{request.method.lower()}",
            resource_type="study",
            study_instance_uid=study_uid,
            outcome="not_found",
            status_code=404,
        )
        raise NotFoundError("No such study.")
    return study


VisibleStudy = Annotated[Study, Depends(visible_study)]


def _resource(study_uid: str, rest: str) -> tuple[str, str]:
    """(resource type, resource id) named by a study-relative path."""
    parts = [p for p in rest.split("/") if p]
    kind, ident = "study", study_uid
    for key, name in (("series", "series"), ("instances", "instance"), ("frames", "frames")):
        if key in parts and parts.index(key) + 1 < len(parts):
            kind, ident = name, parts[parts.index(key) + 1]
    return kind, ident


async def _audit(
    state: GatewayState,
    principal: Principal,
    client: ClientInfo,
    *,
    action: str,
    kind: str,
    ident: str | None,
    study: Study | None,
    status: int,
) -> None:
    outcome = "success" if status < 400 else ("not_found" if status == 404 else "error")
    await run_in_threadpool(
        state.audit.record,
        principal=principal,
        client=client,
        action=action,
        resource_type=kind,
        resource_id=ident,
        outcome=outcome,
        status_code=status,
        study_instance_uid=study.study_instance_uid if study else None,
        project_id=study.project_id if study else None,
    )


async def _search(
    level: str, request: Request, state: GatewayState, principal: Principal, client: ClientInfo
) -> Response:
    """QIDO-RS at ``level``: streamed for unscoped callers, filtered for project-scoped ones."""
    scoped = principal.project_ids is not None
    headers = {"accept": DICOM_JSON} if scoped else None
    upstream = await open_upstream(_client(state), request, f"/{level}", headers=headers)
    await _audit(
        state,
        principal,
        client,
        action="dicomweb.search",
        kind=level,
        ident=None,
        study=None,
        status=upstream.status_code,
    )
    await raise_for_upstream(upstream)
    if not scoped:
        return streaming_response(upstream)
    try:
        raw = await upstream.aread()
    finally:
        await upstream.aclose()
    items = json.loads(raw) if raw.strip() else []
    if not isinstance(items, list):
        raise UpstreamError("Orthanc answered a search with something that is not a list.")
    visible = await run_in_threadpool(_filter, state, principal, items)
    return JSONResponse(visible, media_type=DICOM_JSON)


def _filter(state: GatewayState, principal: Principal, items: list[Any]) -> list[Any]:
    with state.sessions() as session:
        return scope.filter_by_study(session, principal, items)


@router.get("/studies")
async def search_studies(
    request: Request, state: StateDep, principal: ReaderPrincipal, client: Client
) -> Response:
    """QIDO-RS: search for studies."""
    return await _search("studies", request, state, principal, client)


@router.get("/series")
async def search_series(
    request: Request, state: StateDep, principal: ReaderPrincipal, client: Client
) -> Response:
    """QIDO-RS: search for series in all studies."""
    return await _search("series", request, state, principal, client)


@router.get("/instances")
async def search_instances(
    request: Request, state: StateDep, principal: ReaderPrincipal, client: Client
) -> Response:
    """QIDO-RS: search for instances in all studies."""
    return await _search("instances", request, state, principal, client)


async def _retrieve(
    study: Study,
    rest: str,
    request: Request,
    state: GatewayState,
    principal: Principal,
    client: ClientInfo,
) -> Response:
    path = f"/studies/{study.study_instance_uid}" + (f"/{rest}" if rest else "")
    upstream = await _retrieval(request).open(request, path)
    kind, ident = _resource(study.study_instance_uid, rest)
    await _audit(
        state,
        principal,
        client,
        action="dicomweb.retrieve",
        kind=kind,
        ident=ident,
        study=study,
        status=upstream.status,
    )
    raise_for_retrieval(upstream)
    return retrieval_response(upstream)


@router.get("/studies/{study_uid}")
async def retrieve_study(
    study: VisibleStudy,
    request: Request,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> Response:
    """WADO-RS: a whole study (multipart, streamed)."""
    return await _retrieve(study, "", request, state, principal, client)


@router.get("/studies/{study_uid}/{rest:path}")
async def retrieve_in_study(
    study: VisibleStudy,
    rest: str,
    request: Request,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> Response:
    """WADO-RS / QIDO-RS inside a study: series, instances, metadata, frames, rendered."""
    if ".." in rest.split("/"):
        raise BadRequestError("Invalid DICOMweb path.")
    return await _retrieve(study, rest, request, state, principal, client)


async def _store(
    path: str,
    study: Study | None,
    request: Request,
    state: GatewayState,
    principal: Principal,
    client: ClientInfo,
) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMediaTypeError(
            'STOW-RS takes multipart/related; type="application/dicom".'
        )
    upstream = await open_upstream(
        _client(state), request, path, body=request.stream(), headers={"accept": DICOM_JSON}
    )
    try:
        raw = await upstream.aread()
    finally:
        await upstream.aclose()
    await _audit(
        state,
        principal,
        client,
        action="dicomweb.store",
        kind="study",
        ident=study.study_instance_uid if study else None,
        study=study,
        status=upstream.status_code,
    )
    await raise_for_upstream(upstream)
    answer = json.loads(raw) if raw.strip() else {}
    if isinstance(answer, dict):
        await run_in_threadpool(_record_stored, state, principal, answer)
    return Response(raw, status_code=upstream.status_code, media_type=DICOM_JSON)


def _record_stored(state: GatewayState, principal: Principal, answer: dict[str, Any]) -> None:
    with state.sessions() as session, session.begin():
        scope.record_stored_studies(session, principal, answer)


@router.post("/studies")
async def store_instances(
    request: Request, state: StateDep, principal: ReaderPrincipal, client: Client
) -> Response:
    """STOW-RS: store instances (streamed to Orthanc)."""
    return await _store("/studies", None, request, state, principal, client)


@router.post("/studies/{study_uid}")
async def store_in_study(
    study: VisibleStudy,
    request: Request,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> Response:
    """STOW-RS: store instances into a study the caller may see."""
    return await _store(
        f"/studies/{study.study_instance_uid}", study, request, state, principal, client
    )
