"""Audit API shapes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["AuditEventRead", "AuditPage"]


class AuditEventRead(BaseModel):
    """One recorded access."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    occurred_at: datetime
    actor_type: str
    actor_id: str | None
    action: str
    resource_type: str
    resource_id: str | None
    study_instance_uid: str | None
    project_id: str | None
    client_ip: str | None
    request_id: str | None
    outcome: str
    status_code: int | None


class AuditPage(BaseModel):
    """A page of events, newest first."""

    items: list[AuditEventRead]
    limit: int
    offset: int
