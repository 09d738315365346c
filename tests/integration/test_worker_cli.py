"""``spinecloud worker`` starts a real Celery worker that migrates the database and runs jobs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from socket import gethostname

import pytest
from celery import Celery

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import Evaluation, JobStatus
from spinecloud_shared.queue import TASK_MODULES_ENV, enqueue
from spinecloud_shared.task_names import METRICS_QUEUE
from tests.conftest import REPO_ROOT
from tests.fixtures import sample_tasks
from tests.fixtures.services import wait_for

pytestmark = pytest.mark.integration


def test_worker_command_migrates_and_processes_a_job(
    tmp_path: Path, redis_url: str, celery_client: Celery
) -> None:
    spinecloud = shutil.which("spinecloud", path=str(Path(sys.executable).parent))
    assert spinecloud, "the spinecloud command is not installed in this environment"
    database_url = f"sqlite:///{tmp_path / 'worker.sqlite3'}"
    env = {
        **os.environ,
        "SPINECLOUD_REDIS_URL": redis_url,
        "SPINECLOUD_DATABASE_URL": database_url,
        TASK_MODULES_ENV: "tests.fixtures.sample_tasks",
        "PYTHONPATH": str(REPO_ROOT),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [spinecloud, "worker", "--queue", METRICS_QUEUE],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        # The worker migrated the empty SQLite database before consuming: rows can be written.
        replies = wait_for(lambda: celery_client.control.ping(timeout=0.5), timeout_s=60)
        assert [next(iter(reply)) for reply in replies] == [f"{METRICS_QUEUE}@{gethostname()}"]
        with session_scope(database_url) as session:
            evaluation = Evaluation(name="worker cli", pred_dir="/p", ref_dir="/r")
            session.add(evaluation)
        job_id = evaluation.id
        enqueue(sample_tasks.ADD, {"job_id": job_id, "a": 2, "b": 3}, METRICS_QUEUE,
                app=celery_client)  # fmt: skip

        def finished() -> Evaluation | None:
            with session_scope(database_url) as session:
                row = session.get_one(Evaluation, job_id)
                return row if row.status == JobStatus.SUCCEEDED else None

        done = wait_for(finished, timeout_s=30)
        assert done.summary == {"sum": 5}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
        log.close()
