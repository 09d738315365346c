"""``GET /api/v1/audit``: administrators read the access log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from spinecloud_gateway.api.deps import AdminPrincipal, SessionDep
from spinecloud_gateway.audit import repository
from spinecloud_gateway.audit.schemas import AuditEventRead, AuditPage
from spinecloud_gateway.core.patterns import UID_PATTERN

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", summary="Search the audit log (admin)")
def list_audit_events(
    session: SessionDep,
    _admin: AdminPrincipal,
    actor_id: Annotated[str | None, Query(max_length=36, pattern=r"^[0-9a-f-]+$")] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z0-9._-]+$")] = None,
    study_instance_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    outcome: Literal["success", "denied", "not_found", "error"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AuditPage:
    """Events matching the filters, newest first."""
    where = repository.AuditFilter(
        actor_id=actor_id,
        action=action,
        study_instance_uid=study_instance_uid,
        outcome=outcome,
        since=since,
        until=until,
    )
    rows = repository.search(session, where, limit=limit, offset=offset)
    return AuditPage(
        items=[AuditEventRead.model_validate(r) for r in rows], limit=limit, offset=offset
    )
