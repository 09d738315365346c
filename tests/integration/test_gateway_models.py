"""Models API on PostgreSQL: register artefacts from the site's storage, list, read, promote
and retire under the registry's rules, roles and project scoping."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import AuditEvent, Evaluation, RegisteredModel
from spinecloud_shared.models.manifest import Backend, Manifest, read_manifest, write_manifest
from tests.integration.test_gateway_support import (
    bearer,
)

pytestmark = pytest.mark.integration
#: This module's projects are "models-a" and "models-b" (fixtures of the integration conftest).
PROJECT = "models"


def write_artefact(
    root: Path, name: str, version: str, metrics: dict[str, Any] | None = None
) -> Path:
    """A model artefact folder the registry accepts: a manifest and its (dummy) weights.

    The registry checks the weights' digest, never loads them, so no network is built here.
    """
    folder = root / "models" / name / version
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "model.pt").write_bytes(f"{name}@{version}".encode())
    manifest = Manifest(
        name=name,
        version=version,
        backend=Backend.MONAI_BUNDLE,
        labels={0: 0, 1: 23, 2: 24},
        target_spacing_mm=(4.0, 4.0, 4.0),
        patch_size=(32, 32, 32),
        metrics=metrics or {},
        weights_sha256={"models/model.pt": ""},
    )
    write_manifest(manifest, folder)
    return folder


def model_name() -> str:
    """A model name of this test's own (names are site-wide)."""
    return f"api-{uuid.uuid4().hex[:8]}"


def _register(client: TestClient, token: str, folder: Path) -> Any:
    return client.post("/api/v1/models", json={"artifact_path": str(folder)}, headers=bearer(token))


def _promote(client: TestClient, token: str, model_id: str, to: str = "production") -> Any:
    return client.post(f"/api/v1/models/{model_id}/promote", json={"to": to}, headers=bearer(token))


def test_register_list_read_and_scope(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    name = model_name()
    folder = write_artefact(site, name, "1.0.0", metrics={"dice": 0.8})
    created = _register(client, tokens["a"], folder)
    assert created.status_code == 201, created.text
    model = created.json()
    assert (model["name"], model["version"], model["state"]) == (name, "1.0.0", "draft")
    assert model["project_id"] and model["metrics"] == {"dice": 0.8}
    assert model["history"][0]["state"] == "draft"
    again = _register(client, tokens["a"], folder)
    assert again.status_code == 200 and again.json()["id"] == model["id"]
    assert _register(client, tokens["b"], folder).status_code == 409

    for token in ("a", "clinician", "admin"):
        listed = client.get("/api/v1/models", params={"name": name}, headers=bearer(tokens[token]))
        assert [m["id"] for m in listed.json()["items"]] == [model["id"]], token
    listed_b = client.get("/api/v1/models", params={"name": name}, headers=bearer(tokens["b"]))
    assert listed_b.json()["items"] == []
    drafts = client.get(
        "/api/v1/models", params={"state": "draft"}, headers=bearer(tokens["clinician"])
    )
    assert model["id"] in [m["id"] for m in drafts.json()["items"]]

    read = client.get(f"/api/v1/models/{model['id']}", headers=bearer(tokens["clinician"]))
    assert read.status_code == 200 and read.json()["lineage"] == model["lineage"]
    hidden = client.get(f"/api/v1/models/{model['id']}", headers=bearer(tokens["b"]))
    assert hidden.status_code == 404
    assert hidden.headers["content-type"] == "application/problem+json"
    with session_scope(gateway_db) as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.resource_id == model["id"])
        ).all()
    assert actions == ["model.register"]


def test_register_refuses_bad_paths_and_roles(
    client: TestClient, tokens: dict[str, str], site: Path
) -> None:
    folder = write_artefact(site, model_name(), "1.0.0")
    assert _register(client, tokens["clinician"], folder).status_code == 403
    empty = site / "not-a-model"
    empty.mkdir()
    for path, code in (
        (empty, "invalid_model"),
        (Path("/etc"), "invalid_input"),
        (site / ".." / "outside", "invalid_input"),
    ):
        answer = _register(client, tokens["a"], path)
        assert answer.status_code == 422, path
        assert answer.json()["code"] == code, answer.json()
    relative = client.post(
        "/api/v1/models", json={"artifact_path": "models/x"}, headers=bearer(tokens["a"])
    )
    assert relative.status_code == 422 and relative.json()["code"] == "validation_error"
    (folder / "models" / "model.pt").write_bytes(b"replaced")
    corrupt = _register(client, tokens["a"], folder)
    assert corrupt.status_code == 422 and "sha256" in corrupt.json()["detail"]


def test_promote_and_retire_follow_the_registry(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    name = model_name()
    bare = _register(client, tokens["a"], write_artefact(site, name, "0.9.0")).json()
    refused = _promote(client, tokens["a"], bare["id"])
    assert refused.status_code == 409, refused.text
    assert (
        refused.json()["code"] == "registry_conflict" and "no metrics" in refused.json()["detail"]
    )

    first = _register(
        client, tokens["a"], write_artefact(site, name, "1.0.0", metrics={"dice": 0.8})
    ).json()
    second = _register(
        client, tokens["a"], write_artefact(site, name, "1.1.0", metrics={"dice": 0.9})
    ).json()
    assert _promote(client, tokens["clinician"], first["id"]).status_code == 403
    assert _promote(client, tokens["b"], first["id"]).status_code == 404
    promoted = _promote(client, tokens["a"], first["id"])
    assert promoted.status_code == 200 and promoted.json()["state"] == "production"
    assert promoted.json()["promoted_by"].startswith("token:")
    assert read_manifest(Path(first["artifact_uri"])).state.value == "production"
    assert _promote(client, tokens["a"], second["id"]).json()["state"] == "production"
    old = client.get(f"/api/v1/models/{first['id']}", headers=bearer(tokens["a"])).json()
    assert old["state"] == "validated" and old["history"][-1]["reason"] == "superseded by 1.1.0"

    retired = client.post(
        f"/api/v1/models/{second['id']}/retire",
        json={"reason": "test over"},
        headers=bearer(tokens["a"]),
    )
    assert retired.status_code == 200 and retired.json()["state"] == "retired"
    assert retired.json()["history"][-1]["reason"] == "test over"
    final = _promote(client, tokens["a"], second["id"], to="validated")
    assert final.status_code == 409 and final.json()["code"] == "registry_conflict"
    bad_state = _promote(client, tokens["a"], first["id"], to="retired")
    assert bad_state.status_code == 422
    with session_scope(gateway_db) as session:
        actions = set(
            session.scalars(select(AuditEvent.action).where(AuditEvent.resource_id == second["id"]))
        )
    assert actions == {"model.register", "model.promote.production", "model.retire"}


def test_an_unevaluated_model_is_not_promoted(
    client: TestClient, tokens: dict[str, str], site: Path, gateway_db: str
) -> None:
    folder = write_artefact(site, model_name(), "1.0.0", metrics={"dice": 0.8})
    model = _register(client, tokens["a"], folder).json()
    with session_scope(gateway_db) as session:
        evaluation = Evaluation(name="pending", pred_dir="/p", ref_dir="/r")
        session.add(evaluation)
        session.flush()
        session.get_one(RegisteredModel, model["id"]).evaluation_id = evaluation.id
    refused = _promote(client, tokens["a"], model["id"])
    assert refused.status_code == 409 and refused.json()["code"] == "registry_conflict"
    assert "evaluation is queued" in refused.json()["detail"]


def test_production_of_another_project_is_not_taken(
    client: TestClient, tokens: dict[str, str], site: Path
) -> None:
    name = model_name()
    theirs = _register(
        client, tokens["b"], write_artefact(site, name, "1.0.0", metrics={"dice": 0.8})
    ).json()
    assert _promote(client, tokens["b"], theirs["id"]).status_code == 200
    ours = _register(
        client, tokens["a"], write_artefact(site, name, "2.0.0", metrics={"dice": 0.9})
    ).json()
    denied = _promote(client, tokens["a"], ours["id"])
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    assert _promote(client, tokens["a"], ours["id"], to="validated").status_code == 200
    assert _promote(client, tokens["admin"], ours["id"]).json()["state"] == "production"
