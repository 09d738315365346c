"""Registered model queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import page, where_equal
from spinecloud_shared.db.models import RegisteredModel
from spinecloud_shared.models.manifest import ModelState

__all__ = ["ModelFilter", "production_elsewhere", "search"]


@dataclass(frozen=True)
class ModelFilter:
    """Conditions a version must meet (None: any); ``project_ids`` None means every project."""

    project_ids: frozenset[str] | None
    name: str | None = None
    version: str | None = None
    state: ModelState | None = None
    backend: str | None = None


def search(
    session: Session, where: ModelFilter, *, limit: int, offset: int
) -> Sequence[RegisteredModel]:
    """Versions matching ``where``, by name then registration time."""
    query = select(RegisteredModel)
    if where.project_ids is not None:
        query = query.where(RegisteredModel.project_id.in_(where.project_ids))
    query = where_equal(
        query,
        (
            (RegisteredModel.name, where.name),
            (RegisteredModel.version, where.version),
            (RegisteredModel.state, where.state),
            (RegisteredModel.backend, where.backend),
        ),
    )
    query = query.order_by(
        RegisteredModel.name, RegisteredModel.created_at, RegisteredModel.version
    )
    return page(session, query, limit=limit, offset=offset)


def production_elsewhere(
    session: Session, name: str, project_ids: frozenset[str] | None
) -> RegisteredModel | None:
    """The production version of ``name`` when it lies outside ``project_ids`` (None: never)."""
    if project_ids is None:
        return None
    current = session.scalars(
        select(RegisteredModel).where(
            RegisteredModel.name == name, RegisteredModel.state == ModelState.PRODUCTION
        )
    ).one_or_none()
    if current is None or current.project_id in project_ids:
        return None
    return current
