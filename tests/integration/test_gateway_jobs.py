"""Jobs API and study arrival through the internal endpoint, on PostgreSQL, Redis and Orthanc.

The gateway runs in-process (TestClient, lifespan on); the task messages land in the test's
Redis database, where the tests read them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from spinecloud_gateway.app import create_app
from spinecloud_shared.db.models import JobStatus, Role
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.task_names import INFERENCE_QUEUE, SEGMENT_SERIES
from tests.integration.test_gateway_support import (
    bearer,
    gateway_settings,
    make_token,
    write_study,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def client(gateway_db: str, redis_url: str, orthanc: LocalOrthanc) -> Iterator[TestClient]:
    """The gateway on the module's database, the test's Redis and the session's Orthanc."""
    app = create_app(gateway_settings(gateway_db, redis_url, orthanc, default_project="jobs-a"))
    with TestClient(app) as test_client:
        yield test_client


def _queued(redis_url: str) -> list[dict[str, object]]:
    """Task messages waiting on the inference queue, oldest first: [{"task", "kwargs"}]."""
    client = redis.Redis.from_url(redis_url)
    messages = []
    for raw in reversed(client.lrange(INFERENCE_QUEUE, 0, -1)):  # LPUSH: oldest last
        message = json.loads(raw)
        body = json.loads(__import__("base64").b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "kwargs": body[1]})
    client.close()
    return messages


@pytest.fixture()
def arrived(
    tmp_path: Path, client: TestClient, gateway_db: str, orthanc_client: OrthancClient
) -> dict[str, str]:
    """A phantom study stored in Orthanc and reported stable; its UIDs and first job id."""
    files = write_study(tmp_path / "study")
    answers = orthanc_client.store_many(path.read_bytes() for path in files)
    study_id = answers[0]["ParentStudy"]
    service = make_token(gateway_db, Role.SERVICE, None, name="orthanc")
    response = client.post(
        "/internal/orthanc/stable-study?wait=true",
        json={"orthanc_study_id": study_id},
        headers=bearer(service),
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["jobs_created"] == 1
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "orthanc_study": study_id,
        "job": answer["job_ids"][0],
        "service": service,
    }


def test_arrival_creates_one_job_and_enqueues_it_after_commit(
    client: TestClient, arrived: dict[str, str], redis_url: str
) -> None:
    messages = _queued(redis_url)
    assert messages == [{"task": SEGMENT_SERIES, "kwargs": {"job_id": arrived["job"]}}]
    again = client.post(
        "/internal/orthanc/stable-study?wait=true",
        json={"orthanc_study_id": arrived["orthanc_study"]},
        headers=bearer(arrived["service"]),
    )
    assert again.status_code == 200
    assert again.json()["jobs_created"] == 0
    assert again.json()["job_ids"] == [arrived["job"]]
    assert len(_queued(redis_url)) == 1  # nothing sent for the existing job


def test_internal_endpoint_needs_a_service_token(client: TestClient, gateway_db: str) -> None:
    clinician = make_token(gateway_db, Role.CLINICIAN, "jobs-a")
    body = {"orthanc_study_id": "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd"}
    assert client.post("/internal/orthanc/stable-study?wait=true", json=body).status_code == 401
    denied = client.post(
        "/internal/orthanc/stable-study?wait=true", json=body, headers=bearer(clinician)
    )
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    service = make_token(gateway_db, Role.SERVICE, None)
    missing = client.post(
        "/internal/orthanc/stable-study?wait=true", json=body, headers=bearer(service)
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_create_jobs_is_idempotent(
    client: TestClient,
    arrived: dict[str, str],
    gateway_db: str,
    redis_url: str,
) -> None:
    token = make_token(gateway_db, Role.CLINICIAN, "jobs-a")
    body = {
        "series_instance_uid": arrived["series"],
        "model_name": "other-model",
        "model_version": "2",
        "priority": 7,
    }
    first = client.post("/api/v1/jobs", json=body, headers=bearer(token))
    assert first.status_code == 201, first.text
    assert first.json()["created"] == 1
    job = first.json()["items"][0]
    assert (job["status"], job["model_name"], job["model_version"], job["priority"]) == (
        "queued",
        "other-model",
        "2",
        7,
    )
    second = client.post("/api/v1/jobs", json=body, headers=bearer(token))
    assert second.status_code == 200
    assert second.json()["items"][0]["id"] == job["id"]
    by_study = client.post(
        "/api/v1/jobs",
        headers=bearer(token),
        json={
            "study_instance_uid": arrived["study"],
            "model_name": "other-model",
            "model_version": "2",
        },
    )
    assert by_study.status_code == 200
    assert [j["id"] for j in by_study.json()["items"]] == [job["id"]]
    queued = [m["kwargs"] for m in _queued(redis_url)]
    assert queued == [{"job_id": arrived["job"]}, {"job_id": job["id"]}]


def test_list_and_read_jobs_are_project_scoped_and_audited(
    client: TestClient,
    arrived: dict[str, str],
    gateway_db: str,
) -> None:
    mine = make_token(gateway_db, Role.CLINICIAN, "jobs-a")
    other = make_token(gateway_db, Role.CLINICIAN, "jobs-b")
    admin = make_token(gateway_db, Role.ADMIN, None)
    listed = client.get(
        "/api/v1/jobs", params={"study_instance_uid": arrived["study"]}, headers=bearer(mine)
    )
    assert [j["id"] for j in listed.json()["items"]] == [arrived["job"]]
    assert (
        client.get(
            "/api/v1/jobs", params={"study_instance_uid": arrived["study"]}, headers=bearer(other)
        ).json()["items"]
        == []
    )
    queued = client.get(
        "/api/v1/jobs", params={"status": "queued", "model_name": "nope"}, headers=bearer(mine)
    )
    assert queued.json()["items"] == []
    detail = client.get(f"/api/v1/jobs/{arrived['job']}", headers=bearer(mine))
    assert detail.status_code == 200
    assert detail.json()["series_instance_uid"] == arrived["series"]
    assert detail.json()["seg_dicomweb_url"] is None
    hidden = client.get(f"/api/v1/jobs/{arrived['job']}", headers=bearer(other))
    assert hidden.status_code == 404
    assert client.get("/api/v1/audit", headers=bearer(mine)).status_code == 403
    events = client.get(
        "/api/v1/audit", params={"study_instance_uid": arrived["study"]}, headers=bearer(admin)
    ).json()["items"]
    reads = [(e["action"], e["outcome"]) for e in events if e["action"] == "job.read"]
    assert reads == [("job.read", "success")]
    denied = client.get(
        "/api/v1/audit",
        params={"action": "job.read", "outcome": "not_found"},
        headers=bearer(admin),
    ).json()["items"]
    assert any(e["resource_id"] == arrived["job"] for e in denied)
    assert all(e["client_ip"] and e["request_id"] for e in events)


def test_cancel_and_retry(
    client: TestClient, arrived: dict[str, str], gateway_db: str, redis_url: str
) -> None:
    token = make_token(gateway_db, Role.CLINICIAN, "jobs-a")
    url = f"/api/v1/jobs/{arrived['job']}"
    assert client.post(f"{url}/retry", headers=bearer(token)).status_code == 409
    cancelled = client.post(f"{url}/cancel", headers=bearer(token))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == JobStatus.CANCELLED
    again = client.post(f"{url}/cancel", headers=bearer(token))
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    retried = client.post(f"{url}/retry", headers=bearer(token))
    assert retried.json()["status"] == JobStatus.QUEUED
    assert [m["kwargs"] for m in _queued(redis_url)] == [{"job_id": arrived["job"]}] * 2


def test_study_detail_lists_series(
    client: TestClient, arrived: dict[str, str], gateway_db: str
) -> None:
    token = make_token(gateway_db, Role.RESEARCHER, "jobs-a")
    study = client.get(f"/api/v1/studies/{arrived['study']}", headers=bearer(token)).json()
    assert [(s["modality"], s["number_of_instances"]) for s in study["series"]] == [("CT", 20)]
    assert arrived["study"] in {
        s["study_instance_uid"] for s in client.get("/api/v1/studies", headers=bearer(token)).json()
    }
    other = make_token(gateway_db, Role.RESEARCHER, "jobs-b")
    assert (
        client.get(f"/api/v1/studies/{arrived['study']}", headers=bearer(other)).status_code == 404
    )


def test_health_readiness_and_metrics(client: TestClient, arrived: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "orthanc": "ok"}
    assert ready.headers["x-request-id"]
    text = client.get("/metrics").text
    assert 'spinecloud_queue_depth{queue="inference"} 1.0' in text
    assert 'spinecloud_inference_jobs{error_code="",status="queued"}' in text
    assert 'route="/readyz"' in text
    assert arrived["study"] not in text
