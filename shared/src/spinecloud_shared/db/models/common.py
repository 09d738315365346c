"""What every job-like table shares: the status vocabulary and the status columns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Enum, String, Text
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from spinecloud_shared.db.base import utcnow

__all__ = ["FINISHED_STATUSES", "JobMixin", "JobStatus", "job_status_type"]


class JobStatus(StrEnum):
    """The life cycle of a job: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States a job never leaves.
FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def job_status_type() -> Enum:
    """A column type for :class:`JobStatus`: a short string with a CHECK constraint.

    Not a native PostgreSQL enum, so adding a state later is a constraint change rather than
    an ``ALTER TYPE``. A fresh instance per table, as each table gets its own constraint.
    """
    return Enum(
        JobStatus,
        name="job_status",
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class JobMixin:
    """Status, failure and timing columns for a table of queued jobs."""

    @declared_attr
    def status(cls) -> Mapped[JobStatus]:  # noqa: N805 - declared_attr receives the class
        """Where the job is in its life cycle (indexed: workers and lists filter on it)."""
        return mapped_column(job_status_type(), default=JobStatus.QUEUED, index=True, sort_order=50)

    error_code: Mapped[str | None] = mapped_column(String(64), sort_order=50)
    error_message: Mapped[str | None] = mapped_column(Text, sort_order=50)
    started_at: Mapped[datetime | None] = mapped_column(sort_order=50)
    finished_at: Mapped[datetime | None] = mapped_column(sort_order=50)

    def mark(
        self,
        status: JobStatus,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Move the job to ``status``, keeping the timestamps and failure fields consistent."""
        moment = now or utcnow()
        self.status = status
        if status is JobStatus.RUNNING:
            self.started_at = moment
            self.finished_at = None
        if status in FINISHED_STATUSES:
            self.finished_at = moment
        failed = status is JobStatus.FAILED
        self.error_code = error_code if failed else None
        self.error_message = error_message if failed else None
