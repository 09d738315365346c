"""Inference job queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import page, where_equal
from spinecloud_shared.db.models import InferenceJob, JobStatus

__all__ = ["JobFilter", "by_key", "search"]


@dataclass(frozen=True)
class JobFilter:
    """Conditions a job must meet (None: any); ``project_ids`` None means every project."""

    project_ids: frozenset[str] | None
    status: JobStatus | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    model_name: str | None = None


def by_key(
    session: Session, series_uid: str, model_name: str, model_version: str
) -> InferenceJob | None:
    """The job for this (series, model, version), if any."""
    return session.scalar(
        select(InferenceJob).where(
            InferenceJob.series_instance_uid == series_uid,
            InferenceJob.model_name == model_name,
            InferenceJob.model_version == model_version,
        )
    )


def search(
    session: Session, where: JobFilter, *, limit: int, offset: int
) -> Sequence[InferenceJob]:
    """Jobs matching ``where``, newest first."""
    query = select(InferenceJob)
    if where.project_ids is not None:
        query = query.where(InferenceJob.project_id.in_(where.project_ids))
    query = where_equal(
        query,
        (
            (InferenceJob.status, where.status),
            (InferenceJob.study_instance_uid, where.study_instance_uid),
            (InferenceJob.series_instance_uid, where.series_instance_uid),
            (InferenceJob.model_name, where.model_name),
        ),
    )
    query = query.order_by(InferenceJob.created_at.desc(), InferenceJob.id)
    return page(session, query, limit=limit, offset=offset)
