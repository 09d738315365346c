"""Real Celery workers on real Redis and PostgreSQL run SpineCloud job tasks.

Each test starts its own worker subprocess (``celery_worker_process``) that loads only
``tests.fixtures.sample_tasks``; job status is read back from the ``evaluations`` table the
sample tasks record on. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import Evaluation, JobStatus
from spinecloud_shared.jobs import INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE
from spinecloud_shared.queue import enqueue, enqueue_after_commit
from spinecloud_shared.task_names import METRICS_QUEUE
from tests.fixtures import sample_tasks
from tests.fixtures.services import StartWorker, wait_for

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 20.0


def _new_evaluation(url: str) -> str:
    """Commit a queued evaluation row and return its id (the job id the tasks receive)."""
    with session_scope(url) as session:
        evaluation = Evaluation(name="queue test", pred_dir="/p", ref_dir="/r")
        session.add(evaluation)
    return evaluation.id


def _load(url: str, job_id: str) -> Evaluation:
    with session_scope(url) as session:
        return session.get_one(Evaluation, job_id)


def _send(app: Celery, name: str, **kwargs: Any) -> AsyncResult:
    return AsyncResult(enqueue(name, kwargs, METRICS_QUEUE, app=app), app=app)


def _attempts(redis_url: str, job_id: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get(sample_tasks.attempts_key(job_id)) or 0)
    finally:
        client.close()


def test_task_succeeds_and_records_status(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str
) -> None:
    celery_worker_process(database_url=postgres_url)
    # The documented pattern: enqueue in the transaction that creates the row, sent on commit.
    with session_scope(postgres_url) as session:
        evaluation = Evaluation(name="add", pred_dir="/p", ref_dir="/r")
        session.add(evaluation)
        session.flush()
        enqueue_after_commit(
            session, sample_tasks.ADD, {"job_id": evaluation.id, "a": 2, "b": 3},
            METRICS_QUEUE, app=celery_client,
        )  # fmt: skip
    job = wait_for(
        lambda: (e := _load(postgres_url, evaluation.id)).status is JobStatus.SUCCEEDED and e,
        timeout_s=RESULT_TIMEOUT_S,
    )
    assert job.summary == {"sum": 5}
    assert job.started_at is not None and job.finished_at is not None
    assert job.error_code is None


def test_nothing_is_sent_when_the_transaction_rolls_back(
    celery_client: Celery, postgres_url: str, redis_url: str
) -> None:
    with pytest.raises(RuntimeError), session_scope(postgres_url) as session:
        session.add(evaluation := Evaluation(name="gone", pred_dir="/p", ref_dir="/r"))
        session.flush()
        enqueue_after_commit(
            session, sample_tasks.ADD, {"job_id": evaluation.id, "a": 1, "b": 1},
            METRICS_QUEUE, app=celery_client,
        )  # fmt: skip
        raise RuntimeError("request failed")
    assert redis.Redis.from_url(redis_url).llen(METRICS_QUEUE) == 0


def test_domain_error_marks_failed_and_worker_lives_on(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str
) -> None:
    worker = celery_worker_process(database_url=postgres_url)
    rejected, crashed, after = (_new_evaluation(postgres_url) for _ in range(3))

    result = _send(celery_client, sample_tasks.REJECT_INPUT, job_id=rejected)
    assert result.get(timeout=RESULT_TIMEOUT_S)["error_code"] == "invalid_input"
    job = _load(postgres_url, rejected)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "invalid_input")
    assert job.error_message == "The reference folder holds no label maps."

    _send(celery_client, sample_tasks.CRASH, job_id=crashed).get(timeout=RESULT_TIMEOUT_S)
    job = _load(postgres_url, crashed)
    assert (job.status, job.error_code) == (JobStatus.FAILED, INTERNAL_ERROR_CODE)
    assert job.error_message == INTERNAL_ERROR_MESSAGE
    assert sample_tasks.SECRET in worker.log()  # the traceback is logged for operators...
    assert sample_tasks.SECRET not in (job.error_message or "")  # ...not shown to users

    result = _send(celery_client, sample_tasks.ADD, job_id=after, a=1, b=2)
    assert result.get(timeout=RESULT_TIMEOUT_S) == {"sum": 3}
    assert worker.popen.poll() is None and worker.ping()


def test_transient_error_is_retried_then_succeeds(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str, redis_url: str
) -> None:
    celery_worker_process(database_url=postgres_url)
    job_id = _new_evaluation(postgres_url)
    result = _send(celery_client, sample_tasks.FLAKY, job_id=job_id, failures=2)
    assert result.get(timeout=RESULT_TIMEOUT_S) == {"attempts": 3}
    assert _load(postgres_url, job_id).status is JobStatus.SUCCEEDED
    assert _attempts(redis_url, job_id) == 3


def test_transient_error_fails_with_its_code_once_retries_are_spent(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str
) -> None:
    celery_worker_process(database_url=postgres_url)
    job_id = _new_evaluation(postgres_url)
    result = _send(celery_client, sample_tasks.FLAKY, job_id=job_id, failures=10)
    assert result.get(timeout=RESULT_TIMEOUT_S)["error_code"] == "upstream_unavailable"
    job = _load(postgres_url, job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "upstream_unavailable")


def _wait_until_started(redis_url: str, postgres_url: str, job_id: str) -> None:
    wait_for(lambda: _attempts(redis_url, job_id) == 1, timeout_s=RESULT_TIMEOUT_S)
    assert _load(postgres_url, job_id).status is JobStatus.RUNNING


def test_killed_pool_process_task_is_requeued(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str, redis_url: str
) -> None:
    worker = celery_worker_process(database_url=postgres_url)
    job_id = _new_evaluation(postgres_url)
    result = _send(celery_client, sample_tasks.BLOCK, job_id=job_id, hold_s=60)
    _wait_until_started(redis_url, postgres_url, job_id)

    (pool_pid,) = worker.pool_pids()
    os.kill(pool_pid, signal.SIGKILL)  # as the OOM killer would

    assert result.get(timeout=RESULT_TIMEOUT_S) == {"attempts": 2}
    assert _load(postgres_url, job_id).status is JobStatus.SUCCEEDED
    assert worker.popen.poll() is None


def test_killed_worker_task_runs_on_a_restarted_worker(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str, redis_url: str
) -> None:
    visibility_timeout_s = 2
    first = celery_worker_process(
        database_url=postgres_url, visibility_timeout_s=visibility_timeout_s
    )
    job_id = _new_evaluation(postgres_url)
    result = _send(celery_client, sample_tasks.BLOCK, job_id=job_id, hold_s=60)
    _wait_until_started(redis_url, postgres_url, job_id)
    delivered_at = time.monotonic()

    first.kill(signal.SIGKILL)  # the whole worker, main process and pool, without warning
    assert first.popen.returncode == -signal.SIGKILL
    # The message stays unacknowledged in Redis; a worker starting after the visibility
    # timeout puts it back on the queue at startup.
    time.sleep(max(0.0, delivered_at + visibility_timeout_s + 0.5 - time.monotonic()))
    celery_worker_process(database_url=postgres_url, visibility_timeout_s=visibility_timeout_s)

    assert result.get(timeout=RESULT_TIMEOUT_S) == {"attempts": 2}
    assert _load(postgres_url, job_id).status is JobStatus.SUCCEEDED
