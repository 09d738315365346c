"""Declarative base, naming convention and the column mixins every SpineCloud table uses.

Constraint names follow one convention so that Alembic migrations can name, alter and drop
them identically on PostgreSQL and SQLite. Timestamps are always timezone-aware UTC: SQLite
stores them without an offset, so :class:`UTCDateTime` re-attaches UTC on the way out.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Dialect, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "JSONType",
    "TimestampMixin",
    "UTCDateTime",
    "UUIDPrimaryKeyMixin",
    "new_id",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON on every backend, stored as JSONB on PostgreSQL (indexable, compact).
JSONType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new random primary key: a UUID4 in its canonical 36-character text form."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC; naive values are refused on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; a naive datetime is ambiguous and therefore an error."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to the naive values SQLite returns; normalise aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Base of every SpineCloud ORM class; its metadata is what Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class UUIDPrimaryKeyMixin:
    """An ``id`` primary key holding a UUID string, generated in Python so it is known at once.

    Listed first in the table (``sort_order``); timestamps come last.
    """

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id, sort_order=-100)


class TimestampMixin:
    """``created_at`` and ``updated_at`` in UTC, set by the application on insert and update."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow, sort_order=100)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, sort_order=100)
