"""Status recorders for job tables: how a Celery job's state reaches its database row.

Every queued job has a row with :class:`~spinecloud_shared.db.models.common.JobMixin`'s
columns, and ``spinecloud_shared.jobs.job_task`` reports each state change through a
recorder. The rules are the same for every table, so the recorder is made here once:
each change is committed in its own transaction (a job that later crashes keeps its
RUNNING mark and attempt count), a RUNNING mark counts an attempt where the table counts
them, and a job that already succeeded or was cancelled keeps that state when Celery
delivers its message again.
"""

from __future__ import annotations

from collections.abc import Collection

from spinecloud_shared.db.models.common import JobMixin, JobStatus
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.errors import NotFoundError
from spinecloud_shared.jobs import JobFailure, StatusRecorder

__all__ = ["KEEP_FINISHED", "row_recorder"]

#: States a redelivered message must not reopen.
KEEP_FINISHED: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.CANCELLED})


def row_recorder(
    model: type[JobMixin], noun: str, *, kept: Collection[JobStatus] = KEEP_FINISHED
) -> StatusRecorder:
    """A recorder writing a job's status onto its ``model`` row (primary key = job id).

    ``noun`` names the job in the not-found message ("Inference job"); ``kept`` are the
    states a redelivered message leaves alone (empty for jobs that are simply redone). The
    row's ``attempts`` column, when the table has one, counts RUNNING marks.
    """
    kept_states = frozenset(kept)

    def record(job_id: str, status: JobStatus, failure: JobFailure | None, /) -> None:
        with session_scope() as session:
            job = session.get(model, job_id)
            if job is None:
                raise NotFoundError(f"{noun} {job_id} does not exist.")
            if job.status in kept_states:
                return
            if status is JobStatus.RUNNING and hasattr(job, "attempts"):
                setattr(job, "attempts", (getattr(job, "attempts") or 0) + 1)  # noqa: B009, B010
            job.mark(
                status,
                error_code=failure.code if failure else None,
                error_message=failure.message if failure else None,
            )

    return record
