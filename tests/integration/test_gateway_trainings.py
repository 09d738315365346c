"""Trainings API on PostgreSQL and Redis: start (message on the real training queue),
idempotency, progress, cancel, retry, roles and project scoping.

No training worker runs here: the worker's side is tested end to end in
test_training_worker.py; these tests read the queued messages back from Redis.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy import text as sql_text

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.auth.service import ensure_project
from spinecloud_gateway.models.scoping import target_project
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import AuditEvent, JobStatus, Role, TrainingJob
from spinecloud_shared.db.registry import register_model
from spinecloud_shared.errors import InvalidInputError, NotFoundError
from spinecloud_shared.task_names import TRAIN, TRAINING_QUEUE
from tests.integration.test_gateway_models import model_name, write_artefact
from tests.integration.test_gateway_support import (
    bearer,
    gateway_settings,
)

pytestmark = pytest.mark.integration
#: This module's projects are "train-a" and "train-b" (fixtures of the integration conftest).
PROJECT = "train"

BODY: dict[str, Any] = {
    "backend": "segresnet",
    "preset": "demo",
    "dataset": "phantoms",
    "model_name": "spine-api-test",
    "model_version": "1.0.0",
    "params": {"iterations": 2, "seed": 0},
}


def queued(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """Task messages waiting on ``queue``, oldest first: [{"task", "kwargs"}]."""
    client = redis.Redis.from_url(redis_url)
    messages = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH: oldest last
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "kwargs": body[1]})
    client.close()
    return messages


def _body(version: str, **changes: Any) -> dict[str, Any]:
    return {**BODY, "model_version": version, **changes}


def _set(database_url: str, job_id: str, **values: Any) -> None:
    """Change a job as the training worker would."""
    with session_scope(database_url) as session:
        job = session.get_one(TrainingJob, job_id)
        for key, value in values.items():
            setattr(job, key, value)


def test_start_enqueues_on_the_training_queue_once(
    client: TestClient, tokens: dict[str, str], redis_url: str, gateway_db: str
) -> None:
    started = client.post("/api/v1/trainings", json=_body("1.0.0"), headers=bearer(tokens["a"]))
    assert started.status_code == 201, started.text
    job = started.json()
    assert job["status"] == "queued" and job["progress"] == {} and job["project_id"]
    assert job["created_by"].startswith("token:")
    assert queued(redis_url, TRAINING_QUEUE) == [{"task": TRAIN, "kwargs": {"job_id": job["id"]}}]

    again = client.post("/api/v1/trainings", json=_body("1.0.0"), headers=bearer(tokens["a"]))
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert len(queued(redis_url, TRAINING_QUEUE)) == 1  # nothing sent for the existing job

    other = _body("1.0.0", dataset="/data/verse")
    clash = client.post("/api/v1/trainings", json=other, headers=bearer(tokens["a"]))
    assert clash.status_code == 409
    assert clash.headers["content-type"] == "application/problem+json"
    assert clash.json()["code"] == "conflict"
    taken = client.post("/api/v1/trainings", json=_body("1.0.0"), headers=bearer(tokens["b"]))
    assert taken.status_code == 409  # the version is site-wide, whichever project has it

    with session_scope(gateway_db) as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.resource_id == job["id"])
        ).all()
    assert actions == ["training.start", "training.start"]


def test_a_request_racing_an_identical_one_gets_that_job(
    client: TestClient, tokens: dict[str, str], redis_url: str, gateway_db: str
) -> None:
    # The other request's row is inserted, not yet committed: the gateway does not see it,
    # its own insert waits on the unique model version, fails when the other commits, and
    # it answers with the other's job instead of creating a second one.
    body = _body("1.5.0")
    with session_scope(gateway_db) as other:
        project = ensure_project(other, f"{PROJECT}-a")
        first = TrainingJob(
            backend=body["backend"],
            preset=body["preset"],
            dataset=body["dataset"],
            model_name=body["model_name"],
            model_version=body["model_version"],
            params=body["params"],
            project_id=project.id,
        )
        other.add(first)
        other.flush()
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                client.post, "/api/v1/trainings", json=body, headers=bearer(tokens["a"])
            )
            deadline = time.monotonic() + 30
            while not _waiting_on_a_lock(gateway_db):
                assert time.monotonic() < deadline and not answer.done(), "no insert waited"
                time.sleep(0.05)
            first_id = first.id
            other.commit()
            response = answer.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == first_id
    with session_scope(gateway_db) as session:
        rows = session.scalars(
            select(TrainingJob.id).where(TrainingJob.model_version == "1.5.0")
        ).all()
    assert rows == [first_id]
    assert all(m["kwargs"]["job_id"] != first_id for m in queued(redis_url, TRAINING_QUEUE))


def _waiting_on_a_lock(database_url: str) -> bool:
    """Whether a session of this database waits for a lock (the gateway's blocked insert)."""
    with session_scope(database_url) as session:
        waiting = session.execute(
            sql_text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


def test_progress_list_and_project_scope(
    client: TestClient, tokens: dict[str, str], gateway_db: str
) -> None:
    job = client.post("/api/v1/trainings", json=_body("2.0.0"), headers=bearer(tokens["a"])).json()
    progress = {"phase": "train", "iteration": 1, "total": 2, "loss": 0.5, "eta_s": 3.0}
    _set(gateway_db, job["id"], status=JobStatus.RUNNING, progress=progress)

    read = client.get(f"/api/v1/trainings/{job['id']}", headers=bearer(tokens["a"]))
    assert read.status_code == 200
    assert read.json()["status"] == "running" and read.json()["progress"] == progress

    running = client.get(
        "/api/v1/trainings", params={"status": "running"}, headers=bearer(tokens["a"])
    ).json()["items"]
    assert job["id"] in [j["id"] for j in running]
    assert all(j["status"] == "running" for j in running)
    listed_b = client.get("/api/v1/trainings", headers=bearer(tokens["b"])).json()["items"]
    assert job["id"] not in [j["id"] for j in listed_b]
    listed_admin = client.get("/api/v1/trainings", headers=bearer(tokens["admin"])).json()
    assert job["id"] in [j["id"] for j in listed_admin["items"]]

    hidden = client.get(f"/api/v1/trainings/{job['id']}", headers=bearer(tokens["b"]))
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
    assert (
        client.post(
            f"/api/v1/trainings/{job['id']}/cancel", headers=bearer(tokens["b"])
        ).status_code
        == 404
    )
    unknown = client.get(
        "/api/v1/trainings/00000000-0000-4000-8000-000000000000", headers=bearer(tokens["a"])
    )
    assert unknown.status_code == 404
    with session_scope(gateway_db) as session:
        outcome = session.scalars(
            select(AuditEvent.outcome).where(
                AuditEvent.resource_id == job["id"], AuditEvent.action == "training.read"
            )
        ).all()
    assert sorted(outcome) == ["not_found", "success"]


def test_cancel_and_retry(
    client: TestClient, tokens: dict[str, str], redis_url: str, gateway_db: str
) -> None:
    queued_job = client.post(
        "/api/v1/trainings", json=_body("3.0.0"), headers=bearer(tokens["a"])
    ).json()
    busy = client.post(f"/api/v1/trainings/{queued_job['id']}/retry", headers=bearer(tokens["a"]))
    assert busy.status_code == 409

    cancelled = client.post(
        f"/api/v1/trainings/{queued_job['id']}/cancel", headers=bearer(tokens["a"])
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    twice = client.post(f"/api/v1/trainings/{queued_job['id']}/cancel", headers=bearer(tokens["a"]))
    assert twice.status_code == 409 and twice.json()["code"] == "conflict"

    retried = client.post(
        f"/api/v1/trainings/{queued_job['id']}/retry", headers=bearer(tokens["a"])
    )
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    sent = [m["kwargs"]["job_id"] for m in queued(redis_url, TRAINING_QUEUE)]
    assert sent == [queued_job["id"], queued_job["id"]]

    _set(gateway_db, queued_job["id"], status=JobStatus.RUNNING)
    stopping = client.post(
        f"/api/v1/trainings/{queued_job['id']}/cancel", headers=bearer(tokens["a"])
    )
    assert stopping.status_code == 200
    assert stopping.json()["status"] == "running" and stopping.json()["cancel_requested"]


def test_roles_and_bad_input(client: TestClient, tokens: dict[str, str]) -> None:
    denied = client.post(
        "/api/v1/trainings", json=_body("4.0.0"), headers=bearer(tokens["clinician"])
    )
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    assert client.get("/api/v1/trainings", headers=bearer(tokens["clinician"])).status_code == 403
    assert client.get("/api/v1/trainings").status_code == 401
    assert client.get("/api/v1/trainings", headers=bearer("sc_bad_token")).status_code == 401

    for bad in (
        _body("4.0.0", backend="yolo"),
        _body("4.0.0", dataset="relative/path"),
        _body("4.0.0", dataset="/etc"),  # outside the site's storage
        _body("4.0.0", params={"text": "nul\u0000"}),
        _body("4.0.0", project_id="00000000-0000-4000-8000-000000000000", extra=1),
    ):
        answer = client.post("/api/v1/trainings", json=bad, headers=bearer(tokens["a"]))
        assert answer.status_code == 422, bad
        assert answer.headers["content-type"] == "application/problem+json"
    malformed = client.post(
        "/api/v1/trainings",
        content=b'{"backend": "segresnet",',
        headers={**bearer(tokens["a"]), "Content-Type": "application/json"},
    )
    assert malformed.status_code == 422
    assert malformed.headers["content-type"] == "application/problem+json"

    elsewhere = _body("4.0.0", project_id="00000000-0000-4000-8000-000000000000")
    missing = client.post("/api/v1/trainings", json=elsewhere, headers=bearer(tokens["admin"]))
    assert missing.status_code == 404  # no such project


def test_the_trained_model_belongs_to_the_training_s_project(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    """The worker registers its model with the job id only; the project comes with it."""
    name = model_name()
    job = client.post(
        "/api/v1/trainings", json=_body("5.0.0", model_name=name), headers=bearer(tokens["a"])
    ).json()
    folder = write_artefact(site, name, "5.0.0")
    with session_scope(gateway_db) as session:
        model_id = register_model(session, folder, training_job_id=job["id"]).id
    seen = client.get(f"/api/v1/models/{model_id}", headers=bearer(tokens["a"]))
    assert seen.status_code == 200 and seen.json()["project_id"] == job["project_id"]
    assert seen.json()["training_job_id"] == job["id"]
    assert client.get(f"/api/v1/models/{model_id}", headers=bearer(tokens["b"])).status_code == 404


def test_a_member_of_several_projects_names_one(gateway_db: str, site: Path) -> None:
    """Where a new row goes: the named project, the only one, or a refusal when ambiguous."""
    settings = gateway_settings(gateway_db, "redis://127.0.0.1:6379/0", data_dir=site)
    with session_scope(gateway_db) as session:
        ids = [ensure_project(session, name).id for name in ("train-a", "train-b")]
        user = Principal("user", "u-1", Role.RESEARCHER, frozenset(ids))
        with pytest.raises(InvalidInputError, match="several projects"):
            target_project(session, user, None, settings)
        assert target_project(session, user, ids[1], settings) == ids[1]
        only = Principal("user", "u-2", Role.RESEARCHER, frozenset(ids[:1]))
        assert target_project(session, only, None, settings) == ids[0]
        with pytest.raises(NotFoundError):
            target_project(session, only, ids[1], settings)
        admin = Principal("user", "u-3", Role.ADMIN, None)
        default = target_project(session, admin, None, settings)
        assert default == ensure_project(session, "radiology").id  # the settings' default
