"""Request dependencies as ``Annotated`` aliases: state, session, principal, client info.

The session commits when the endpoint returns and rolls back when it raises, before the
response is sent (``scope="function"``), so a 201 means the row is committed and any task
queued with ``enqueue_after_commit`` has been sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import HUMAN_ROLES, Principal
from spinecloud_gateway.auth.service import authenticate
from spinecloud_gateway.core.context import current_request_id
from spinecloud_gateway.core.errors import AuthenticationError
from spinecloud_shared.db.models import Role

__all__ = [
    "AdminPrincipal",
    "Client",
    "CurrentPrincipal",
    "ReaderPrincipal",
    "ResearcherPrincipal",
    "ServicePrincipal",
    "SessionDep",
    "StateDep",
]

_bearer = HTTPBearer(auto_error=False, description="OIDC JWT (people) or sc_ API token")


def get_state(request: Request) -> GatewayState:
    """The application's :class:`GatewayState`."""
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A session committed at the edge: on return, or rolled back on error."""
    session = state.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_principal(
    state: StateDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller; 401 problem without valid credentials."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationError("This endpoint needs a bearer token.")
    principal = authenticate(session, state.verifier, credentials.credentials)
    session.commit()  # keep last_used_at / first-seen users even if the request then fails
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def _role_dependency(*roles: Role) -> object:
    def check(principal: CurrentPrincipal) -> Principal:
        principal.require(*roles)
        return principal

    check.__doc__ = f"The caller, who must have one of: {', '.join(roles)}."
    return Depends(check)


AdminPrincipal = Annotated[Principal, _role_dependency(Role.ADMIN)]
ServicePrincipal = Annotated[Principal, _role_dependency(Role.SERVICE, Role.ADMIN)]
ReaderPrincipal = Annotated[Principal, _role_dependency(*HUMAN_ROLES)]
#: Training, evaluating, registering and promoting models: researchers and admins.
ResearcherPrincipal = Annotated[Principal, _role_dependency(Role.RESEARCHER, Role.ADMIN)]


def get_client(request: Request) -> ClientInfo:
    """The client's address and the request id, for audit events."""
    host = request.client.host if request.client else None
    return ClientInfo(ip=host, request_id=current_request_id())


Client = Annotated[ClientInfo, Depends(get_client)]
