"""Turning a bearer credential into a :class:`Principal`, and managing API tokens.

API tokens (``sc_...``) are checked against their stored hash; anything else is treated as an
OIDC JWT. A person seen for the first time is recorded as a clinician with no project: an
administrator grants projects (``spinecloud admin add-member``).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from spinecloud_gateway.auth import repository, tokens
from spinecloud_gateway.auth.oidc import OidcVerifier
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.db import get_or_create
from spinecloud_gateway.core.errors import AuthenticationError
from spinecloud_shared.db.base import utcnow
from spinecloud_shared.db.models import ApiToken, Membership, Project, Role, User
from spinecloud_shared.errors import NotFoundError

__all__ = ["add_member", "authenticate", "create_token", "ensure_project", "revoke_token"]


def authenticate(session: Session, verifier: OidcVerifier | None, credential: str) -> Principal:
    """The principal a bearer credential stands for; AuthenticationError when it is invalid."""
    if credential.startswith("sc_"):
        return _from_api_token(session, credential)
    if verifier is None:
        raise AuthenticationError("Only API tokens are accepted: OIDC is not configured.")
    claims = verifier.verify(credential)
    return _from_user(session, str(claims["iss"]), str(claims["sub"]))


def _from_api_token(session: Session, credential: str, now: datetime | None = None) -> Principal:
    now = now or utcnow()
    prefix = tokens.token_prefix(credential)
    row = repository.token_by_prefix(session, prefix) if prefix else None
    if row is None or not tokens.verify(credential, row.token_hash):
        raise AuthenticationError("The API token is not valid.")
    if row.revoked_at is not None:
        raise AuthenticationError("The API token has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthenticationError("The API token has expired.")
    row.last_used_at = now
    projects = None if row.project_id is None else frozenset({row.project_id})
    return Principal("token", row.id, row.role, projects)


def _from_user(session: Session, issuer: str, subject: str) -> Principal:
    user = repository.user_by_subject(session, issuer, subject)
    if user is None:
        user = User(issuer=issuer, subject=subject, role=Role.CLINICIAN)
        session.add(user)
        session.flush()
    if not user.active:
        raise AuthenticationError("This account is disabled.")
    user.last_seen_at = utcnow()
    if user.role is Role.ADMIN:
        return Principal("user", user.id, user.role, None)
    return Principal("user", user.id, user.role, repository.project_ids_of(session, user.id))


def ensure_project(session: Session, name: str) -> Project:
    """The project called ``name``, created if it does not exist."""
    project, _ = get_or_create(
        session, partial(repository.project_by_name, session, name), partial(Project, name=name)
    )
    return project


def create_token(
    session: Session, *, name: str, role: Role, project: Project | None
) -> tuple[ApiToken, str]:
    """A new API token row and its secret (the only time the secret exists in clear)."""
    new = tokens.generate_token()
    row = ApiToken(
        name=name,
        prefix=new.prefix,
        token_hash=new.token_hash,
        role=role,
        project_id=project.id if project else None,
    )
    session.add(row)
    session.flush()
    return row, new.token


def revoke_token(session: Session, token_id_or_prefix: str) -> ApiToken:
    """Mark a token revoked (by id or prefix); NotFoundError if there is none."""
    row = session.get(ApiToken, token_id_or_prefix) or repository.token_by_prefix(
        session, token_id_or_prefix
    )
    if row is None:
        raise NotFoundError(f"No API token {token_id_or_prefix!r}.")
    row.revoked_at = row.revoked_at or utcnow()
    return row


def add_member(
    session: Session, *, issuer: str, subject: str, project: Project, role: Role
) -> User:
    """Give the user ``(issuer, subject)`` a role and access to ``project`` (creating both)."""
    user = repository.user_by_subject(session, issuer, subject)
    if user is None:
        user = User(issuer=issuer, subject=subject)
        session.add(user)
    user.role = role
    session.flush()
    if project.id not in repository.project_ids_of(session, user.id):
        session.add(Membership(user_id=user.id, project_id=project.id))
        session.flush()
    return user
