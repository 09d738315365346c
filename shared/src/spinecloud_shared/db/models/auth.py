"""Who may do what: projects, people (OIDC subjects), their memberships and machine API tokens.

People authenticate with an OIDC JWT and are recorded by their ``subject`` only (no names or
e-mail addresses); machines use API tokens, of which only a SHA-256 hash and a short lookup
prefix are stored, so a database dump reveals no usable secret.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin

__all__ = ["ApiToken", "Membership", "Project", "Role", "User", "role_type"]


class Role(StrEnum):
    """What a principal may do: read results, work on data and models, administer, or feed."""

    CLINICIAN = "clinician"
    RESEARCHER = "researcher"
    ADMIN = "admin"
    #: A machine that reports study arrivals (Orthanc's Lua script); no patient-data reads.
    SERVICE = "service"


def role_type(name: str) -> Enum:
    """A column type for :class:`Role`: a short string with a CHECK constraint per table."""
    return Enum(
        Role,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Project(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """A group of studies and the people and tokens allowed to see them."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(String(500))


class User(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """A person known by the ``(issuer, subject)`` of their OIDC tokens."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(role_type("user_role"), default=Role.CLINICIAN)
    active: Mapped[bool] = mapped_column(default=True)
    last_seen_at: Mapped[datetime | None]


class Membership(Base):
    """A user's access to one project."""

    __tablename__ = "memberships"

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ApiToken(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """A machine credential ``sc_<prefix>_<secret>``: looked up by prefix, checked by hash.

    ``project_id`` NULL means every project (only sensible for admin and service tokens).
    """

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(role_type("api_token_role"))
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
