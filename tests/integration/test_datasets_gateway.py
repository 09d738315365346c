"""The datasets API on PostgreSQL and Redis: register (the scan message lands on the training
queue), scan as the worker does, read the summary and splits, project scoping and roles."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from spinecloud_gateway.app import create_app
from spinecloud_shared.db.models import Role
from spinecloud_shared.errors import NotFoundError
from spinecloud_shared.task_names import REGISTER_DATASET, TRAINING_QUEUE
from spinecloud_training.dataset_tasks import registered_data, scan_dataset
from tests.integration.test_datasets import _write_layouts, settings_env  # noqa: F401 - fixture
from tests.integration.test_gateway_support import (
    bearer,
    gateway_settings,
    make_token,
)

pytestmark = pytest.mark.integration


def test_gateway_registers_and_reads_datasets_by_project(
    settings_env: pytest.MonkeyPatch,  # noqa: F811 - the fixture imported above
    gateway_db: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    folders = _write_layouts(tmp_path)
    alice = make_token(gateway_db, Role.RESEARCHER, "datasets-a")
    bob = make_token(gateway_db, Role.RESEARCHER, "datasets-b")
    clinician = make_token(gateway_db, Role.CLINICIAN, "datasets-a")
    body = {"name": "ts-a", "layout": "totalsegmentator", "path": str(folders["totalsegmentator"])}
    settings = gateway_settings(
        gateway_db, redis_url, default_project="datasets-a", data_dir=tmp_path
    )
    app = create_app(settings)
    with TestClient(app) as client:
        created = client.post("/api/v1/datasets", json=body, headers=bearer(alice))
        assert created.status_code == 201, created.text
        dataset = created.json()
        assert dataset["status"] == "queued" and dataset["split_fractions"]["train"] == 0.8
        queued = redis.Redis.from_url(redis_url).lrange(TRAINING_QUEUE, 0, -1)
        assert [json.loads(m)["headers"]["task"] for m in queued] == [REGISTER_DATASET]

        settings_env.setenv("SPINECLOUD_DATABASE_URL", gateway_db)
        scan_dataset(dataset["id"])  # what the worker does with the message
        read = client.get("/api/v1/datasets/ts-a", headers=bearer(alice))
        assert read.status_code == 200 and read.json()["status"] == "succeeded"
        assert read.json()["summary"]["cases"] == 4
        splits = client.get(f"/api/v1/datasets/{dataset['id']}/splits", headers=bearer(alice))
        assert splits.json()["splits"] == {
            "s0000": "train", "s0001": "train", "s0002": "val", "s0003": "test",
        }  # fmt: skip

        # a training of the dataset's project trains on it; one of another project does not
        assert len(registered_data("ts-a", project_id=dataset["project_id"]).train) == 2
        with pytest.raises(NotFoundError):
            registered_data("ts-a", project_id=str(uuid.uuid4()))

        hidden = client.get("/api/v1/datasets/ts-a", headers=bearer(bob))
        assert hidden.status_code == 404
        assert hidden.headers["content-type"].startswith("application/problem+json")
        assert client.get("/api/v1/datasets", headers=bearer(bob)).json()["items"] == []
        listed = client.get("/api/v1/datasets", headers=bearer(alice)).json()["items"]
        assert [d["name"] for d in listed] == ["ts-a"]
        assert client.get("/api/v1/datasets", headers=bearer(clinician)).status_code == 403
        again = client.post("/api/v1/datasets", json=body, headers=bearer(bob))
        assert again.status_code == 409
        relative = client.post(
            "/api/v1/datasets",
            json={**body, "name": "rel", "path": "data/ts"},
            headers=bearer(alice),
        )
        assert relative.status_code == 422
        outside = client.post(
            "/api/v1/datasets", json={**body, "name": "etc", "path": "/etc"}, headers=bearer(alice)
        )
        assert outside.status_code == 422 and "site's storage" in outside.json()["detail"]
