"""Database helpers every domain uses (no domain imports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spinecloud_shared.db.base import Base

__all__ = ["get_or_create"]

T = TypeVar("T", bound=Base)


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
