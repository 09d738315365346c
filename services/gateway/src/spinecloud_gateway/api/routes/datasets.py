"""``/api/v1/datasets``: register datasets and read their summaries and splits (project-scoped).

Researchers and admins only. Registering creates the row and sends the scan
(``spinecloud.training.register_dataset``) to the training worker after the commit; the
dataset is ``queued``, then ``running``, then ``succeeded`` (ready to train on with
``"dataset": "dataset:<name>"``) or ``failed`` with a code and a sentence. The summary lists
every excluded case with its reason. A dataset of another project answers 404. Every
registration and read is written to the audit log.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from sqlalchemy.orm import Session

from spinecloud_gateway.api.deps import Client, ResearcherPrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.datasets import repository
from spinecloud_gateway.datasets import service as datasets
from spinecloud_gateway.datasets.schemas import (
    DatasetCreate,
    DatasetPage,
    DatasetRead,
    DatasetSplits,
)
from spinecloud_gateway.models.scoping import audit
from spinecloud_shared.db.datasets import NAME_PATTERN
from spinecloud_shared.db.models import Dataset
from spinecloud_shared.errors import NotFoundError

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
DatasetRef = Annotated[str, Path(min_length=1, max_length=100, pattern=NAME_PATTERN)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset in the caller's projects (problem+json)"}
}


_audit = functools.partial(audit, resource_type="dataset")


def _visible(
    session: Session,
    ref: str,
    principal: Principal,
    state: GatewayState,
    client: ClientInfo,
    action: str,
) -> Dataset:
    """The dataset (by id or name) if the caller's projects include it; else audited 404."""
    dataset = repository.visible(session, principal, ref)
    if dataset is None:
        _audit(state, principal, client, action, None, "not_found", resource_id=ref)
        raise NotFoundError("No such dataset.")
    return dataset


@router.post(
    "",
    summary="Register a dataset; the training worker scans it",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "The name is taken (problem+json)"}, **_NOT_FOUND},
)
def register_dataset(
    body: DatasetCreate,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> DatasetRead:
    """Record a queued dataset and send its scan once the row is committed."""
    dataset = datasets.register(session, state.settings, principal, body, state.celery)
    _audit(state, principal, client, "dataset.register", dataset)
    return DatasetRead.model_validate(dataset)


@router.get("", summary="List datasets in the caller's projects")
def list_datasets(
    session: SessionDep,
    principal: ResearcherPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> DatasetPage:
    """Datasets, newest first, with their status and summary."""
    rows = repository.search(session, principal, limit=limit, offset=offset)
    return DatasetPage(
        items=[DatasetRead.model_validate(d) for d in rows], limit=limit, offset=offset
    )


@router.get("/{ref}", summary="A dataset (by id or name) with its summary", responses=_NOT_FOUND)
def get_dataset(
    ref: DatasetRef,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> DatasetRead:
    """The dataset; its read is audited."""
    dataset = _visible(session, ref, principal, state, client, "dataset.read")
    _audit(state, principal, client, "dataset.read", dataset)
    return DatasetRead.model_validate(dataset)


@router.get("/{ref}/splits", summary="A dataset's stored splits", responses=_NOT_FOUND)
def get_splits(
    ref: DatasetRef,
    session: SessionDep,
    state: StateDep,
    principal: ResearcherPrincipal,
    client: Client,
) -> DatasetSplits:
    """Case id -> train, val or test (empty until the scan has succeeded)."""
    dataset = _visible(session, ref, principal, state, client, "dataset.splits")
    _audit(state, principal, client, "dataset.splits", dataset)
    return DatasetSplits(
        id=dataset.id, name=dataset.name, status=dataset.status, splits=dict(dataset.splits)
    )
