"""Training job queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import page, where_equal
from spinecloud_shared.db.models import JobStatus, RegisteredModel, TrainingJob

__all__ = ["TrainingFilter", "by_model_version", "model_version_registered", "search"]


@dataclass(frozen=True)
class TrainingFilter:
    """Conditions a job must meet (None: any); ``project_ids`` None means every project."""

    project_ids: frozenset[str] | None
    status: JobStatus | None = None
    model_name: str | None = None
    backend: str | None = None


def search(
    session: Session, where: TrainingFilter, *, limit: int, offset: int
) -> Sequence[TrainingJob]:
    """Jobs matching ``where``, newest first."""
    query = select(TrainingJob)
    if where.project_ids is not None:
        query = query.where(TrainingJob.project_id.in_(where.project_ids))
    query = where_equal(
        query,
        (
            (TrainingJob.status, where.status),
            (TrainingJob.model_name, where.model_name),
            (TrainingJob.backend, where.backend),
        ),
    )
    query = query.order_by(TrainingJob.created_at.desc(), TrainingJob.id)
    return page(session, query, limit=limit, offset=offset)


def by_model_version(session: Session, name: str, version: str) -> TrainingJob | None:
    """The newest training job that produces ``name@version``, if any."""
    return session.scalars(
        select(TrainingJob)
        .where(TrainingJob.model_name == name, TrainingJob.model_version == version)
        .order_by(TrainingJob.created_at.desc())
        .limit(1)
    ).first()


def model_version_registered(session: Session, name: str, version: str) -> bool:
    """Whether ``name@version`` is in the registry already."""
    found = session.scalar(
        select(RegisteredModel.id).where(
            RegisteredModel.name == name, RegisteredModel.version == version
        )
    )
    return found is not None
