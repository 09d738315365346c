"""Database helpers every domain uses (no domain imports)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spinecloud_shared.db.base import Base

__all__ = ["get_or_create", "page", "where_equal"]

T = TypeVar("T", bound=Base)
SelectT = TypeVar("SelectT", bound=Select[Any])


def get_or_create(
    session: Session, find: Callable[[], T | None], make: Callable[[], T]
) -> tuple[T, bool]:
    """The row ``find`` returns, or a new one from ``make``; (row, created).

    The insert runs in a savepoint: when a concurrent request inserted the same unique key
    first, the savepoint is rolled back and the other row is returned.
    """
    found = find()
    if found is not None:
        return found, False
    try:
        with session.begin_nested():
            row = make()
            session.add(row)
        return row, True
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found, False


def where_equal(query: SelectT, conditions: Iterable[tuple[Any, Any]]) -> SelectT:
    """``query`` narrowed to rows whose ``column`` equals ``value``, for each pair whose value
    is given (None: no condition): the optional filters of a list endpoint."""
    for column, value in conditions:
        if value is not None:
            query = query.where(column == value)
    return query


def page(session: Session, query: Select[Any], *, limit: int, offset: int) -> Sequence[Any]:
    """One page of ``query``'s rows (order it first, for stable pages)."""
    return session.scalars(query.limit(limit).offset(offset)).all()
