"""``/api/v1/models``: the model registry (list, read, register, promote, retire; project-scoped).

Clinicians read; researchers and admins register, promote and retire. State rules are the
registry's (``spinecloud_shared.db.registry``): a refused change is a 409 problem with code
``registry_conflict``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status

from spinecloud_gateway.api.deps import (
    Client,
    ReaderPrincipal,
    ResearcherPrincipal,
    SessionDep,
    StateDep,
)
from spinecloud_gateway.core.patterns import MODEL_NAME_PATTERN
from spinecloud_gateway.models import repository
from spinecloud_gateway.models import service as models
from spinecloud_gateway.models.schemas import (
    ModelDetail,
    ModelPage,
    ModelPromote,
    ModelRead,
    ModelRegister,
    ModelRetire,
)
from spinecloud_gateway.models.scoping import audit, visible_row
from spinecloud_shared.db import registry
from spinecloud_shared.db.models import RegisteredModel
from spinecloud_shared.models.manifest import ModelState

router = APIRouter(prefix="/api/v1/models", tags=["models"])
ModelId = Annotated[str, Path(min_length=36, max_length=36, pattern=r"^[0-9a-f-]{36}$")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such model version in the caller's projects (problem+json)"}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The registry's rules refuse it (problem+json, code registry_conflict)"}
}
_audit = functools.partial(audit, resource_type="model")


@router.get("", summary="List registered model versions in the caller's projects")
def list_models(
    session: SessionDep,
    principal: ReaderPrincipal,
    name: Annotated[str | None, Query(max_length=100, pattern=MODEL_NAME_PATTERN)] = None,
    version: Annotated[
        str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    ] = None,
    state: Annotated[ModelState | None, Query()] = None,
    backend: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ModelPage:
    """Versions matching the filters, by name then registration time."""
    where = repository.ModelFilter(
        project_ids=principal.project_ids, name=name, version=version, state=state, backend=backend
    )
    rows = repository.search(session, where, limit=limit, offset=offset)
    return ModelPage(items=[ModelRead.model_validate(m) for m in rows], limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    summary="A model version with its metrics, lineage and state history",
    responses=_NOT_FOUND,
)
def get_model(model_id: ModelId, session: SessionDep, principal: ReaderPrincipal) -> ModelDetail:
    """The version; a finished evaluation's summary is copied into its metrics first."""
    model = visible_row(session, RegisteredModel, model_id, principal, "model version")
    registry.refresh_evaluation(session, model)
    return ModelDetail.model_validate(model)


@router.post(
    "",
    summary="Register a model artefact folder as a draft version (idempotent)",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ModelDetail, "description": "This artefact was already registered"},
        422: {"description": "Not an artefact in the site's storage, or corrupt (problem+json)"},
        **_CONFLICT,
    },
)
def register_model(
    body: ModelRegister,
    response: Response,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> ModelDetail:
    """Verify the manifest and weights, record a draft: 201 when new, 200 when known."""
    model, created = models.register(session, state.settings, principal, body)
    if created:
        _audit(state, principal, client, "model.register", model)
    else:
        response.status_code = status.HTTP_200_OK
    return ModelDetail.model_validate(model)


@router.post(
    "/{model_id}/promote",
    summary="Promote a version to validated or production",
    responses={**_NOT_FOUND, **_CONFLICT},
)
def promote_model(
    model_id: ModelId,
    body: ModelPromote,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> ModelDetail:
    """Needs metrics (or a succeeded evaluation) and intact weights; demotes the old one."""
    model = visible_row(session, RegisteredModel, model_id, principal, "model version")
    models.promote(session, principal, model, body)
    _audit(state, principal, client, f"model.promote.{body.to.value}", model)
    return ModelDetail.model_validate(model)


@router.post(
    "/{model_id}/retire",
    summary="Retire a version for good",
    responses={**_NOT_FOUND, **_CONFLICT},
)
def retire_model(
    model_id: ModelId,
    body: ModelRetire,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> ModelDetail:
    """A retired version is never served again; retiring twice changes nothing."""
    model = visible_row(session, RegisteredModel, model_id, principal, "model version")
    models.retire(session, principal, model, body.reason)
    _audit(state, principal, client, "model.retire", model)
    return ModelDetail.model_validate(model)
