"""Running a job as a Celery task: status recording, failure codes, retries, worker safety.

Every job ends in a recorded state. A :class:`~spinecloud_shared.errors.SpineCloudError` marks
the job failed with its code and message; a transient one (``exc.transient``) is retried first
with exponential backoff; anything else is logged with its traceback and recorded as
``internal_error`` with a generic sentence, so no internals (paths, SQL, patient data) reach
users. The task then returns normally: the message is acknowledged and the worker lives on.

Each service has its own job table, so recording is a callback::

    def record(job_id: str, status: JobStatus, failure: JobFailure | None) -> None:
        with session_scope() as session:
            job = session.get(Evaluation, job_id)
            job.mark(status, error_code=failure and failure.code, ...)

    @job_task(celery_app, EVALUATE, record=record)
    def evaluate(job_id: str) -> dict[str, Any]: ...
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from celery import Celery, Task

from spinecloud_shared.db.models.common import JobStatus
from spinecloud_shared.errors import SpineCloudError

__all__ = [
    "INTERNAL_ERROR_CODE",
    "INTERNAL_ERROR_MESSAGE",
    "JobFailure",
    "JobOutcome",
    "RetryPolicy",
    "StatusRecorder",
    "failure_from_exception",
    "job_task",
    "run_job",
]

logger = logging.getLogger(__name__)

INTERNAL_ERROR_CODE = "internal_error"
INTERNAL_ERROR_MESSAGE = (
    "The job stopped because of an unexpected internal error. "
    "Try again later; if it keeps failing, ask an administrator to check the worker logs."
)


class JobFailure(NamedTuple):
    """Why a job failed: a stable machine code and a sentence a person can act on."""

    code: str
    message: str


def failure_from_exception(exc: BaseException) -> JobFailure:
    """Map an exception to the failure recorded on the job.

    SpineCloud errors give their own code and message; anything else gives
    ``internal_error`` and a generic sentence, never the exception's text.
    """
    if isinstance(exc, SpineCloudError):
        return JobFailure(exc.code, exc.message)
    return JobFailure(INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)


class StatusRecorder(Protocol):
    """Records a job's new status in the service's own table (opens and commits a session)."""

    def __call__(self, job_id: str, status: JobStatus, failure: JobFailure | None, /) -> None:
        """Store ``status`` (and ``failure`` when it is FAILED) for job ``job_id``."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried: ``base_s * 2**attempt`` seconds, capped."""

    max_retries: int = 5
    base_s: float = 2.0
    max_delay_s: float = 300.0

    def delay_s(self, retries_done: int) -> float:
        """The wait before the next attempt, after ``retries_done`` retries."""
        return float(min(self.max_delay_s, self.base_s * 2**retries_done))

    def allows(self, retries_done: int) -> bool:
        """Whether another retry is allowed after ``retries_done`` retries."""
        return retries_done < self.max_retries


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What one attempt came to: a result, a failure, or a retry after ``retry_in_s``."""

    status: JobStatus
    result: Any = None
    failure: JobFailure | None = None
    retry_in_s: float | None = None
    error: BaseException | None = None


def _safe_record(
    record: StatusRecorder, job_id: str, status: JobStatus, failure: JobFailure | None
) -> bool:
    """Call the recorder; log and return False instead of raising if it fails."""
    try:
        record(job_id, status, failure)
    except Exception:
        logger.exception("could not record status %s for job %s", status, job_id)
        return False
    return True


def _attempt(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], retries_done: int, policy: RetryPolicy
) -> JobOutcome:
    """Run ``fn`` once and classify what happened."""
    try:
        return JobOutcome(JobStatus.SUCCEEDED, result=fn(**kwargs))
    except SpineCloudError as exc:
        if exc.transient and policy.allows(retries_done):
            return JobOutcome(JobStatus.RUNNING, retry_in_s=policy.delay_s(retries_done), error=exc)
        logger.warning("job failed: %s (%s)", exc.code, exc.message)
        return JobOutcome(JobStatus.FAILED, failure=failure_from_exception(exc), error=exc)
    except Exception as exc:
        logger.exception("job failed with an unexpected error")
        return JobOutcome(JobStatus.FAILED, failure=failure_from_exception(exc), error=exc)


def run_job(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    job_id: str,
    record: StatusRecorder,
    retries_done: int = 0,
    policy: RetryPolicy | None = None,
) -> JobOutcome:
    """Record RUNNING, run ``fn(**kwargs)``, record the final state; never raises.

    A retry outcome records nothing final: the job stays RUNNING until the next attempt.
    If the job could not even be marked RUNNING (its row is gone, the database is down), it
    is not run and the outcome is a retry, or an internal failure once retries are spent.
    """
    policy = policy or RetryPolicy()
    if not _safe_record(record, job_id, JobStatus.RUNNING, None):
        if policy.allows(retries_done):
            return JobOutcome(JobStatus.QUEUED, retry_in_s=policy.delay_s(retries_done))
        return JobOutcome(JobStatus.FAILED, failure=failure_from_exception(RuntimeError()))
    outcome = _attempt(fn, kwargs, retries_done, policy)
    if outcome.retry_in_s is None:
        _safe_record(record, job_id, outcome.status, outcome.failure)
    return outcome


def _task_result(outcome: JobOutcome) -> Any:
    """What the Celery task returns (JSON): the function's result, or the failure."""
    if outcome.status is JobStatus.SUCCEEDED:
        return outcome.result
    failure = outcome.failure or failure_from_exception(RuntimeError())
    return {"status": outcome.status.value, "error_code": failure.code, "message": failure.message}


def job_task(
    app: Celery,
    name: str,
    *,
    record: StatusRecorder,
    policy: RetryPolicy | None = None,
    job_id_arg: str = "job_id",
    **task_options: Any,
) -> Callable[[Callable[..., Any]], Task]:
    """Register ``fn`` as Celery task ``name`` that runs through :func:`run_job`.

    The task is called with keyword arguments only, one of which (``job_id_arg``) identifies
    the job for ``record``. Transient failures become Celery retries (a new message, with a
    countdown), so the worker is free in between. Celery's own retry limit is the policy's:
    with ``max_retries=None`` Celery would fall back to its default of 3 and, past it, re-raise
    the error instead of retrying, leaving the job RUNNING for ever.
    """
    retry_policy = policy or RetryPolicy()
    task_options.setdefault("max_retries", retry_policy.max_retries)

    def decorator(fn: Callable[..., Any]) -> Task:
        @app.task(name=name, bind=True, **task_options)
        @functools.wraps(fn)
        def task(self: Task, **kwargs: Any) -> Any:
            job_id = str(kwargs[job_id_arg])
            outcome = run_job(
                fn,
                kwargs,
                job_id=job_id,
                record=record,
                retries_done=self.request.retries,
                policy=retry_policy,
            )
            if outcome.retry_in_s is not None:
                raise self.retry(
                    exc=outcome.error,
                    countdown=outcome.retry_in_s,
                    max_retries=retry_policy.max_retries,
                )
            return _task_result(outcome)

        return task

    return decorator
