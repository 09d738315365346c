"""The metrics task on a real Celery worker, real Redis and real PostgreSQL.

A job with bad input is marked failed with a message naming the file, and the same worker
then evaluates a good job and stores its tables; a redelivered job replaces its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery import Celery
from sqlalchemy import select

from spinecloud_metrics import tasks
from spinecloud_metrics.panel import PANEL_METRICS
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import Evaluation, EvaluationRow, JobStatus
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.settings import get_settings
from spinecloud_shared.task_names import EVALUATE, METRICS_QUEUE
from spinecloud_shared.volume import Volume
from tests.fixtures.services import StartWorker, wait_for
from tests.unit.test_metrics_support import write_cases

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


def _submit(url: str, app: Celery, pred: Path, ref: Path, params: dict[str, Any]) -> str:
    with session_scope(url) as session:
        evaluation = Evaluation(
            name="test", model_ref="good:1", pred_dir=str(pred), ref_dir=str(ref), params=params
        )
        session.add(evaluation)
        session.flush()
        enqueue_after_commit(session, EVALUATE, {"job_id": evaluation.id}, METRICS_QUEUE, app=app)
    return evaluation.id


def _finished(url: str, job_id: str) -> Evaluation | None:
    with session_scope(url) as session:
        job = session.get_one(Evaluation, job_id)
        return job if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None


def _rows(url: str, job_id: str) -> dict[str, int]:
    with session_scope(url) as session:
        names = session.scalars(
            select(EvaluationRow.table_name).where(EvaluationRow.evaluation_id == job_id)
        ).all()
    return {name: names.count(name) for name in set(names)}


def test_worker_fails_bad_input_then_evaluates(
    celery_worker_process: StartWorker, celery_client: Celery, postgres_url: str, tmp_path: Path
) -> None:
    cases = write_cases(tmp_path / "cases", n_cases=3)
    bad = tmp_path / "bad"
    for path in sorted(cases["ref"].iterdir()):
        write_nifti(Volume(np.full((4, 4, 4), 0.5, np.float32), np.eye(4)), bad / path.name)
    celery_worker_process(database_url=postgres_url, task_modules=("spinecloud_metrics.tasks",))

    failed_id = _submit(postgres_url, celery_client, bad, cases["ref"], {})
    failed = wait_for(lambda: _finished(postgres_url, failed_id), timeout_s=TIMEOUT_S)
    assert failed.status is JobStatus.FAILED and failed.error_code == "invalid_labels"
    assert "case00.nii.gz: label map contains non-integer values" in (failed.error_message or "")

    report_dir = tmp_path / "report"
    good_id = _submit(
        postgres_url,
        celery_client,
        cases["good"],
        cases["ref"],
        {"report_dir": str(report_dir), "nsd_tolerance_mm": 2.0},
    )
    done = wait_for(lambda: _finished(postgres_url, good_id), timeout_s=TIMEOUT_S)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert done.summary is not None and done.summary["n_cases"] == 3
    assert 0.9 < done.summary["dice"] < 1.0 and done.summary["id_rate"] == 1.0
    rows = _rows(postgres_url, good_id)
    assert (
        rows["overall"] == len(PANEL_METRICS) + 2
        and rows["per_case"] == 3
        and rows["per_region"] > 0
    )
    assert (report_dir / "report.html").is_file()


def test_rerun_replaces_rows(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task body called directly (no worker): a second run overwrites, never duplicates."""
    cases = write_cases(tmp_path / "cases", n_cases=2)
    monkeypatch.setenv("SPINECLOUD_DATABASE_URL", postgres_url)
    get_settings.cache_clear()
    try:
        with session_scope(postgres_url) as session:
            evaluation = Evaluation(
                name="direct", pred_dir=str(cases["rough"]), ref_dir=str(cases["ref"])
            )
            session.add(evaluation)
        first = tasks.run_evaluation(evaluation.id)
        counts = _rows(postgres_url, evaluation.id)
        second = tasks.run_evaluation(evaluation.id)
        assert _rows(postgres_url, evaluation.id) == counts
        assert first == second and first["dice"] < 0.95
    finally:
        get_settings.cache_clear()
