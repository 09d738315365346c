"""Evaluations API on PostgreSQL and Redis: start (message on the real metrics queue), the
model link, tables as JSON and CSV, the stored HTML report, audit and project scoping.

No metrics worker runs here (test_metrics_task.py covers it): a finished evaluation is seeded
as the worker leaves it (status, summary, ``EvaluationRow``s, report files in ``report_dir``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import (
    AuditEvent,
    Evaluation,
    EvaluationRow,
    JobStatus,
    RegisteredModel,
)
from spinecloud_shared.task_names import EVALUATE, METRICS_QUEUE
from tests.integration.test_gateway_models import model_name, write_artefact
from tests.integration.test_gateway_support import (
    bearer,
)
from tests.integration.test_gateway_trainings import queued

pytestmark = pytest.mark.integration
#: This module's projects are "eval-a" and "eval-b" (fixtures of the integration conftest).
PROJECT = "eval"

PER_CLASS = [
    {"class": "L4", "metric": "dice", "mean": 0.91, "n": 2},
    {"class": "L5", "metric": "dice", "mean": 0.88, "n": 2, "note": "one empty reference"},
]
OVERALL = [{"metric": "dice", "mean": 0.895, "std": 0.02, "median": 0.895}]


def _start(client: TestClient, token: str, site: Path, **changes: Any) -> Any:
    body = {
        "name": "test evaluation",
        "pred_dir": str(site / "pred"),
        "ref_dir": str(site / "ref"),
        "params": {"nsd_tolerance_mm": 2.0},
        **changes,
    }
    return client.post("/api/v1/evaluations", json=body, headers=bearer(token))


def _finish(database_url: str, evaluation_id: str, report: bool = True) -> None:
    """Leave the evaluation as the metrics worker does when it succeeds."""
    with session_scope(database_url) as session:
        evaluation = session.get_one(Evaluation, evaluation_id)
        for table, rows in (("per_class", PER_CLASS), ("overall", OVERALL)):
            for position, row in enumerate(rows):
                session.add(
                    EvaluationRow(
                        evaluation_id=evaluation_id, table_name=table, position=position, row=row
                    )
                )
        evaluation.summary = {"n_cases": 2, "dice": 0.895}
        if report:
            folder = Path(evaluation.params["report_dir"])
            folder.mkdir(parents=True)
            (folder / "report.html").write_text("<html><body>SpineCloud report</body></html>")
            evaluation.report_dir = str(folder)
        evaluation.mark(JobStatus.SUCCEEDED)


def test_start_enqueues_and_links_the_model(
    client: TestClient, tokens: dict[str, str], site: Path, redis_url: str, gateway_db: str
) -> None:
    folder = write_artefact(site, model_name(), "1.0.0")
    model = client.post(
        "/api/v1/models", json={"artifact_path": str(folder)}, headers=bearer(tokens["a"])
    ).json()
    started = _start(client, tokens["a"], site, model_id=model["id"], split="val")
    assert started.status_code == 201, started.text
    evaluation = started.json()
    assert evaluation["status"] == "queued" and evaluation["project_id"] == model["project_id"]
    assert evaluation["model_ref"] == f"{model['name']}:1.0.0"
    report_dir = Path(evaluation["params"]["report_dir"])
    assert report_dir.is_relative_to(site / "artifacts") and report_dir.name == evaluation["id"]
    assert evaluation["params"]["nsd_tolerance_mm"] == 2.0 and not evaluation["report_available"]
    expected = [{"task": EVALUATE, "kwargs": {"job_id": evaluation["id"]}}]
    assert queued(redis_url, METRICS_QUEUE) == expected

    again = _start(client, tokens["a"], site, model_id=model["id"], split="val")
    assert again.status_code == 200 and again.json()["id"] == evaluation["id"]
    assert len(queued(redis_url, METRICS_QUEUE)) == 1

    linked = client.get(f"/api/v1/models/{model['id']}", headers=bearer(tokens["a"])).json()
    assert linked["evaluation_id"] == evaluation["id"]
    assert (
        client.post(
            f"/api/v1/models/{model['id']}/promote", json={}, headers=bearer(tokens["a"])
        ).json()["code"]
        == "registry_conflict"
    )  # no metrics, evaluation queued

    _finish(gateway_db, evaluation["id"], report=False)
    promoted = client.post(
        f"/api/v1/models/{model['id']}/promote", json={}, headers=bearer(tokens["a"])
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["metrics"]["dice"] == 0.895  # the evaluation's summary


def test_tables_csv_and_report(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    evaluation = _start(client, tokens["a"], site, name="tables").json()
    early = client.get(
        f"/api/v1/evaluations/{evaluation['id']}/tables", headers=bearer(tokens["a"])
    )
    assert early.status_code == 409 and early.json()["code"] == "conflict"
    _finish(gateway_db, evaluation["id"])
    base = f"/api/v1/evaluations/{evaluation['id']}"

    read = client.get(base, headers=bearer(tokens["a"])).json()
    assert read["status"] == "succeeded" and read["report_available"]
    assert read["summary"] == {"n_cases": 2, "dice": 0.895}
    tables = client.get(f"{base}/tables", headers=bearer(tokens["a"])).json()
    assert tables == {
        "evaluation_id": evaluation["id"],
        "tables": {"overall": OVERALL, "per_class": PER_CLASS},
    }
    one = client.get(f"{base}/tables", params={"table": "overall"}, headers=bearer(tokens["a"]))
    assert one.json()["tables"] == {"overall": OVERALL}

    download = client.get(f"{base}/tables/per_class.csv", headers=bearer(tokens["a"]))
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["class"] for r in rows] == ["L4", "L5"]
    assert rows[0]["mean"] == "0.91" and rows[0]["note"] == "" and rows[1]["note"]
    missing = client.get(f"{base}/tables/per_case.csv", headers=bearer(tokens["a"]))
    assert missing.status_code == 404
    unknown_table = client.get(f"{base}/tables/secrets.csv", headers=bearer(tokens["a"]))
    assert unknown_table.status_code == 422

    report = client.get(f"{base}/report", headers=bearer(tokens["a"]))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "SpineCloud report" in report.text

    with session_scope(gateway_db) as session:
        actions = set(
            session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.resource_id == evaluation["id"], AuditEvent.outcome == "success"
                )
            )
        )
    assert {"evaluation.tables", "evaluation.csv", "evaluation.report"} <= actions


def test_scope_roles_and_bad_input(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    evaluation = _start(client, tokens["a"], site, name="scoped").json()
    base = f"/api/v1/evaluations/{evaluation['id']}"
    for path in (base, f"{base}/tables", f"{base}/tables/overall.csv", f"{base}/report"):
        hidden = client.get(path, headers=bearer(tokens["b"]))
        assert hidden.status_code == 404, path
        assert hidden.headers["content-type"] == "application/problem+json"
    listed_b = client.get("/api/v1/evaluations", headers=bearer(tokens["b"])).json()["items"]
    assert evaluation["id"] not in [e["id"] for e in listed_b]
    listed_a = client.get(
        "/api/v1/evaluations", params={"status": "queued"}, headers=bearer(tokens["a"])
    ).json()["items"]
    assert evaluation["id"] in [e["id"] for e in listed_a]
    assert client.get(base, headers=bearer(tokens["clinician"])).status_code == 403
    with session_scope(gateway_db) as session:
        refused = session.scalars(
            select(AuditEvent.outcome).where(
                AuditEvent.resource_id == evaluation["id"], AuditEvent.outcome == "not_found"
            )
        ).all()
    assert len(refused) == 4

    for changes in (
        {"pred_dir": "/etc"},
        {"ref_dir": str(site / ".." / "elsewhere")},
        {"params": {"report_dir": "/tmp/x"}},
        {"params": {"surface": "mesh"}},
    ):
        answer = _start(client, tokens["a"], site, **changes)
        assert answer.status_code == 422, changes
    unknown_model = _start(
        client, tokens["a"], site, model_id="00000000-0000-4000-8000-000000000000"
    )
    assert unknown_model.status_code == 404


def test_a_model_s_unassigned_evaluation_follows_the_model(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    """The training worker creates a trained model's evaluation without a project."""
    folder = write_artefact(site, model_name(), "1.0.0")
    model = client.post(
        "/api/v1/models", json={"artifact_path": str(folder)}, headers=bearer(tokens["a"])
    ).json()
    with session_scope(gateway_db) as session:
        evaluation = Evaluation(name="validation split", pred_dir="/p", ref_dir="/r")
        session.add(evaluation)
        session.flush()
        evaluation_id = evaluation.id
        session.get_one(RegisteredModel, model["id"]).evaluation_id = evaluation_id
    seen = client.get(f"/api/v1/evaluations/{evaluation_id}", headers=bearer(tokens["a"]))
    assert seen.status_code == 200 and seen.json()["project_id"] is None
    listed = client.get("/api/v1/evaluations", headers=bearer(tokens["a"])).json()["items"]
    assert evaluation_id in [e["id"] for e in listed]
    hidden = client.get(f"/api/v1/evaluations/{evaluation_id}", headers=bearer(tokens["b"]))
    assert hidden.status_code == 404
