"""Studies and series as recorded from Orthanc, and the cursor of Orthanc's change log.

Only identifiers SpineCloud needs (Orthanc ids, DICOM UIDs) and technical descriptors
(modality, body part, slice count) are kept: no patient names or ids.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin, utcnow

__all__ = ["OrthancCursor", "Series", "Study"]


class Study(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """A DICOM study stored in Orthanc, owned by one project (NULL: not yet assigned)."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    orthanc_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    description: Mapped[str | None] = mapped_column(String(255))

    series: Mapped[list[Series]] = relationship(
        back_populates="study", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class Series(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """One series of a study, with what routing rules look at."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    orthanc_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    study_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("studies.id", ondelete="CASCADE"), index=True
    )
    modality: Mapped[str | None] = mapped_column(String(16))
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    body_part: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(255))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series", lazy="raise")


class OrthancCursor(Base):
    """How far the gateway has read an Orthanc's ``/changes`` log (one row per Orthanc)."""

    __tablename__ = "orthanc_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
