"""Writing audit events, in their own transaction.

An access is recorded whatever happens to the request's own transaction: a denied or failed
read is rolled back, its audit event is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from spinecloud_gateway.auth.principal import Principal
from spinecloud_shared.db.models import AuditEvent

__all__ = ["AuditRecorder", "ClientInfo"]


@dataclass(frozen=True)
class ClientInfo:
    """Where a request came from: client address and request id."""

    ip: str | None
    request_id: str | None


class AuditRecorder:
    """Appends audit events through its own short sessions."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def record(
        self,
        *,
        principal: Principal | None,
        client: ClientInfo,
        action: str,
        resource_type: str,
        outcome: str,
        resource_id: str | None = None,
        study_instance_uid: str | None = None,
        project_id: str | None = None,
        status_code: int | None = None,
    ) -> None:
        """Append one event and commit it."""
        event = AuditEvent(
            actor_type=principal.actor_type if principal else "anonymous",
            actor_id=principal.actor_id if principal else None,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            study_instance_uid=study_instance_uid,
            project_id=project_id,
            client_ip=client.ip,
            request_id=client.request_id,
            outcome=outcome,
            status_code=status_code,
        )
        with self.sessions() as session, session.begin():
            session.add(event)
