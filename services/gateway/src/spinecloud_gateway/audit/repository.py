"""Audit queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_shared.db.models import AuditEvent

__all__ = ["AuditFilter", "search"]


@dataclass(frozen=True)
class AuditFilter:
    """Conditions an event must meet (None: any)."""

    actor_id: str | None = None
    action: str | None = None
    study_instance_uid: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def search(
    session: Session, where: AuditFilter, *, limit: int, offset: int
) -> Sequence[AuditEvent]:
    """Events matching ``where``, newest first."""
    query = select(AuditEvent)
    for column, value in (
        (AuditEvent.actor_id, where.actor_id),
        (AuditEvent.action, where.action),
        (AuditEvent.study_instance_uid, where.study_instance_uid),
        (AuditEvent.outcome, where.outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(AuditEvent.occurred_at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.occurred_at < where.until)
    query = query.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id).limit(limit).offset(offset)
    return session.scalars(query).all()
