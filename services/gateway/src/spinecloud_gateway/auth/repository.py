"""Queries on projects, users, memberships and API tokens."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_shared.db.models import ApiToken, Membership, Project, User

__all__ = [
    "project_by_name",
    "project_ids_of",
    "token_by_prefix",
    "tokens",
    "user_by_subject",
]


def token_by_prefix(session: Session, prefix: str) -> ApiToken | None:
    """The token with this lookup prefix."""
    return session.scalar(select(ApiToken).where(ApiToken.prefix == prefix))


def tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, newest first."""
    return session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc())).all()


def user_by_subject(session: Session, issuer: str, subject: str) -> User | None:
    """The user known by this issuer and subject."""
    query = select(User).where(User.issuer == issuer, User.subject == subject)
    return session.scalar(query)


def project_ids_of(session: Session, user_id: str) -> frozenset[str]:
    """The projects a user is a member of."""
    query = select(Membership.project_id).where(Membership.user_id == user_id)
    return frozenset(session.scalars(query))


def project_by_name(session: Session, name: str) -> Project | None:
    """The project with this name."""
    return session.scalar(select(Project).where(Project.name == name))
