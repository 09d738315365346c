"""The application shell on SQLite, without servers: problems, limits, request ids, logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spinecloud_gateway.app import create_app
from spinecloud_gateway.auth import service as auth
from spinecloud_gateway.core.logging import JsonFormatter
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import Role

PROBLEM = "application/problem+json"


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.sqlite3'}"


@pytest.fixture()
def client(url: str) -> Iterator[TestClient]:
    """A gateway on a SQLite file; Redis and Orthanc are unreachable ports."""
    settings = GatewaySettings(
        database_url=url,
        redis_url="redis://127.0.0.1:1/0",
        orthanc_url="http://127.0.0.1:1",
        max_request_bytes=2048,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture()
def admin(url: str, client: TestClient) -> dict[str, str]:
    with session_scope(url) as session:
        _row, secret = auth.create_token(session, name="t", role=Role.ADMIN, project=None)
    return {"Authorization": f"Bearer {secret}"}


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    missing = client.get("/no/such/route")
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    assert missing.json()["code"] == "not_found"
    wrong_method = client.delete("/healthz")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


def test_validation_errors_are_422_problems(client: TestClient, admin: dict[str, str]) -> None:
    bad = client.post("/api/v1/jobs", json={"model_name": "x"}, headers=admin)
    assert (bad.status_code, bad.headers["content-type"]) == (422, PROBLEM)
    assert bad.json()["code"] == "validation_error" and bad.json()["errors"]
    not_json = client.post(
        "/api/v1/jobs", content=b"{not json", headers={**admin, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    bad_id = client.get("/api/v1/jobs/not-a-uuid", headers=admin)
    assert bad_id.status_code == 422


def test_oversized_bodies_are_413_problems(client: TestClient, admin: dict[str, str]) -> None:
    big = {"study_instance_uid": "1.2", "model_name": "x" * 4000}
    declared = client.post("/api/v1/jobs", json=big, headers=admin)
    assert (declared.status_code, declared.headers["content-type"]) == (413, PROBLEM)

    def chunks() -> Iterator[bytes]:
        yield b'{"study_instance_uid": "1.2", "model_name": "'
        yield b"x" * 4000
        yield b'"}'

    streamed = client.post(
        "/api/v1/jobs", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert streamed.json()["code"] == "payload_too_large"


def test_unreachable_upstreams_are_502_problems_not_crashes(
    client: TestClient, admin: dict[str, str]
) -> None:
    service_like = client.post(
        "/internal/orthanc/stable-study?wait=true",
        json={"orthanc_study_id": "abc-123"},
        headers=admin,
    )
    assert (service_like.status_code, service_like.json()["code"]) == (502, "upstream_unavailable")
    accepted = client.post(
        "/internal/orthanc/stable-study", json={"orthanc_study_id": "abc-123"}, headers=admin
    )
    assert accepted.status_code == 202  # recorded after the answer; the poller is the safety net
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["orthanc"].startswith("unavailable")


def test_request_ids_are_kept_or_made(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert made != "bad id with spaces" and len(made) == 32
    assert client.get("/nope").json()["request_id"]


def test_logs_are_json_with_only_whitelisted_fields() -> None:
    record = logging.LogRecord(
        "spinecloud_gateway.x", logging.INFO, __file__, 1, "request", None, None
    )
    record.route = "/dicom-web/studies/{study_uid}"
    record.patient_name = "Doe^John"
    line = json.loads(JsonFormatter().format(record))
    assert line["route"] == "/dicom-web/studies/{study_uid}" and line["message"] == "request"
    assert "patient_name" not in line and "Doe" not in json.dumps(line)


def test_openapi_documents_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}/retry",
        "/api/v1/audit",
        "/readyz",
        "/internal/orthanc/stable-study",
    } <= set(paths)
    assert not any(path.startswith("/dicom-web") for path in paths)
