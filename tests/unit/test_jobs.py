"""Job failure mapping, retry policy and the job runner, without a broker or database."""

from __future__ import annotations

from typing import Any

import pytest

from spinecloud_shared.db.models.common import JobStatus
from spinecloud_shared.errors import (
    GantryTiltError,
    InvalidInputError,
    SpineCloudError,
    UpstreamError,
)
from spinecloud_shared.jobs import (
    INTERNAL_ERROR_CODE,
    INTERNAL_ERROR_MESSAGE,
    JobFailure,
    RetryPolicy,
    failure_from_exception,
    job_task,
    run_job,
)
from spinecloud_shared.task_names import EVALUATE, SEGMENT_SERIES, TRAIN, queue_for


class Recorder:
    """A status recorder that remembers every call, and can be told to fail."""

    def __init__(self, *, fail_on: JobStatus | None = None) -> None:
        self.calls: list[tuple[str, JobStatus, JobFailure | None]] = []
        self.fail_on = fail_on

    def __call__(self, job_id: str, status: JobStatus, failure: JobFailure | None) -> None:
        if status == self.fail_on:
            raise RuntimeError("database is down")
        self.calls.append((job_id, status, failure))


def _raise(exc: BaseException) -> Any:
    raise exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InvalidInputError("No label maps."), ("invalid_input", "No label maps.")),
        (GantryTiltError("Tilted gantry."), ("dicom_gantry_tilt", "Tilted gantry.")),
        (UpstreamError("Orthanc is down."), ("upstream_unavailable", "Orthanc is down.")),
        (SpineCloudError("Something known."), ("internal_error", "Something known.")),
    ],
)
def test_spinecloud_errors_map_to_their_code_and_message(
    exc: SpineCloudError, expected: tuple[str, str]
) -> None:
    assert failure_from_exception(exc) == expected


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("/data/patients/Doe^John.dcm"), KeyError("password"), ZeroDivisionError()],
)
def test_other_errors_map_to_a_generic_internal_error(exc: Exception) -> None:
    failure = failure_from_exception(exc)
    assert failure == (INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)
    assert str(exc) not in failure.message or not str(exc)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=10, base_s=1.0, max_delay_s=5.0)
    assert [policy.delay_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.allows(9)
    assert not policy.allows(10)


def test_success_records_running_then_succeeded() -> None:
    record = Recorder()
    outcome = run_job(lambda x: x * 2, {"x": 21}, job_id="j1", record=record)
    assert outcome.status is JobStatus.SUCCEEDED
    assert outcome.result == 42
    assert record.calls == [("j1", JobStatus.RUNNING, None), ("j1", JobStatus.SUCCEEDED, None)]


def test_domain_error_records_failed_with_its_code() -> None:
    record = Recorder()
    outcome = run_job(_raise, {"exc": InvalidInputError("Bad.")}, job_id="j", record=record)
    assert outcome.status is JobStatus.FAILED
    assert record.calls[-1] == ("j", JobStatus.FAILED, JobFailure("invalid_input", "Bad."))


def test_unexpected_error_records_internal_error_without_its_text() -> None:
    record = Recorder()
    outcome = run_job(_raise, {"exc": RuntimeError("secret")}, job_id="j", record=record)
    assert outcome.failure == JobFailure(INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)
    assert record.calls[-1][1] is JobStatus.FAILED


def test_transient_error_asks_for_a_retry_and_records_nothing_final() -> None:
    record = Recorder()
    policy = RetryPolicy(max_retries=3, base_s=2.0)
    outcome = run_job(
        _raise, {"exc": UpstreamError("Busy.")}, job_id="j", record=record, retries_done=1,
        policy=policy,
    )  # fmt: skip
    assert outcome.retry_in_s == 4.0
    assert isinstance(outcome.error, UpstreamError)
    assert [status for _, status, _ in record.calls] == [JobStatus.RUNNING]


def test_transient_error_fails_once_retries_are_spent() -> None:
    record = Recorder()
    policy = RetryPolicy(max_retries=2)
    outcome = run_job(
        _raise, {"exc": UpstreamError("Busy.")}, job_id="j", record=record, retries_done=2,
        policy=policy,
    )  # fmt: skip
    assert outcome.retry_in_s is None
    assert outcome.failure == JobFailure("upstream_unavailable", "Busy.")


def test_job_is_not_run_when_it_cannot_be_marked_running() -> None:
    ran: list[bool] = []
    outcome = run_job(
        lambda: ran.append(True), {}, job_id="j", record=Recorder(fail_on=JobStatus.RUNNING)
    )
    assert not ran
    assert outcome.retry_in_s is not None


def test_a_failing_recorder_never_raises_out_of_run_job() -> None:
    outcome = run_job(lambda: "done", {}, job_id="j", record=Recorder(fail_on=JobStatus.SUCCEEDED))
    assert outcome.status is JobStatus.SUCCEEDED


def test_task_names_carry_their_queue() -> None:
    assert (queue_for(EVALUATE), queue_for(SEGMENT_SERIES), queue_for(TRAIN)) == (
        "metrics",
        "inference",
        "training",
    )
    assert queue_for("spinecloud.unknown.x") is None
    assert queue_for("metrics") is None


def test_mark_keeps_timestamps_and_failure_fields_consistent() -> None:
    from datetime import UTC, datetime

    from spinecloud_shared.db.models import Evaluation

    t0, t1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    job = Evaluation(name="e", pred_dir="p", ref_dir="r")
    job.mark(JobStatus.RUNNING, now=t0)
    assert (job.status, job.started_at, job.finished_at) == (JobStatus.RUNNING, t0, None)
    job.mark(JobStatus.FAILED, error_code="invalid_input", error_message="Bad.", now=t1)
    assert (job.finished_at, job.error_code, job.error_message) == (t1, "invalid_input", "Bad.")
    job.mark(JobStatus.RUNNING, now=t1)
    job.mark(JobStatus.SUCCEEDED, error_code="ignored", now=t1)
    assert (job.error_code, job.error_message, job.finished_at) == (None, None, t1)


def test_job_task_gives_celery_the_policy_retry_limit() -> None:
    """Celery's default limit (3) would re-raise before the policy's retries are spent."""
    from celery import Celery

    app = Celery("limits")
    policy = RetryPolicy(max_retries=7)

    def work(job_id: str) -> None:
        return None

    limited = job_task(app, "tests.limit", record=lambda *_: None, policy=policy)(work)
    default = job_task(app, "tests.default", record=lambda *_: None)(work)
    assert limited.max_retries == 7
    assert default.max_retries == RetryPolicy().max_retries
