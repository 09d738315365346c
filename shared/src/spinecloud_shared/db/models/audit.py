"""The audit log: every read of patient data, who did it, from where, and how it ended."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from spinecloud_shared.db.base import Base, UUIDPrimaryKeyMixin, utcnow

__all__ = ["AuditEvent"]


class AuditEvent(UUIDPrimaryKeyMixin, Base):
    """One access: actor (user or token id), action, resource, study, client, outcome.

    ``outcome`` is ``success``, ``denied`` (authenticated but not allowed), ``not_found`` or
    ``error``. Append-only: nothing in SpineCloud updates or deletes these rows.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "occurred_at"),)

    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(128))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(String(36))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
