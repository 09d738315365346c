"""Study, series and change-cursor rows: lookups (race-safe creation is core.db.get_or_create)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import get_or_create
from spinecloud_shared.db.models import OrthancCursor, Series, Study

__all__ = ["cursor", "series_by_uid", "series_of_study", "study_by_uid"]


def study_by_uid(session: Session, study_instance_uid: str) -> Study | None:
    """The study with this StudyInstanceUID."""
    return session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))


def series_by_uid(session: Session, series_instance_uid: str) -> Series | None:
    """The series with this SeriesInstanceUID."""
    return session.scalar(select(Series).where(Series.series_instance_uid == series_instance_uid))


def series_of_study(session: Session, study_id: str) -> list[Series]:
    """The series of a study, by series number."""
    query = select(Series).where(Series.study_id == study_id)
    return list(session.scalars(query.order_by(Series.series_number, Series.created_at)))


def cursor(session: Session, name: str) -> OrthancCursor:
    """The change-log cursor called ``name``, locked for update, created at 0 if new."""
    found, _ = get_or_create(
        session,
        lambda: session.get(OrthancCursor, name, with_for_update=True),
        lambda: OrthancCursor(name=name, last_seq=0),
    )
    return found
