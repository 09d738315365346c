"""The dataset registry end to end on PostgreSQL: the CLI (in-process scan) in every layout,
Orthanc corrections converted on the fly, the real Celery training worker scanning a dataset
and training a few iterations on its stored splits, and the gateway's project-scoped API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from typer.testing import CliRunner

from spinecloud_shared import labels
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.datasets import create_dataset, get_dataset
from spinecloud_shared.db.models import Dataset, JobStatus, RegisteredModel
from spinecloud_shared.dicom_write import encode_dataset
from spinecloud_shared.layouts import write_plain, write_totalsegmentator, write_verse
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.queue import enqueue
from spinecloud_shared.settings import get_settings
from spinecloud_shared.task_names import REGISTER_DATASET
from spinecloud_shared.volume import Volume
from spinecloud_training.datasets_cli import app as datasets_app
from tests.fixtures.services import CeleryWorker, wait_for
from tests.integration.test_training_finetune import c_store, clinician_seg, make_study
from tests.integration.test_training_worker import (  # noqa: F401 - fixtures
    TINY,
    _phantom,
    _submit,
    _wait_job,
    worker,
    worker_env,
)

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """Process settings re-read from the environment the test sets (restored afterwards)."""
    monkeypatch.setenv("SPINECLOUD_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(datasets_app, list(args))
    return result.exit_code, result.output


def _row(url: str, name: str) -> Dataset:
    with session_scope(url) as session:
        return get_dataset(session, name)


def _write_layouts(root: Path) -> dict[str, Path]:
    """The same four phantoms in each layout; TotalSegmentator with meta.csv splits."""
    phantoms = [_phantom(seed) for seed in range(4)]
    write_totalsegmentator(root / "ts", phantoms, splits=["train", "train", "val", "test"])
    write_verse(root / "verse", phantoms)
    write_plain(root / "plain", phantoms)
    return {"totalsegmentator": root / "ts", "verse": root / "verse", "plain": root / "plain"}


def test_cli_registers_every_layout_and_reports_bad_cases(
    settings_env: pytest.MonkeyPatch, postgres_url: str, tmp_path: Path
) -> None:
    settings_env.setenv("SPINECLOUD_DATABASE_URL", postgres_url)
    folders = _write_layouts(tmp_path)
    off_grid = Volume(np.ones((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off_grid, folders["totalsegmentator"] / "s0001/segmentations/sacrum.nii.gz")
    names = {}
    for layout, folder in folders.items():
        names[layout] = _name(layout[:5])
        code, output = _cli(
            "register", str(folder), "--name", names[layout], "--layout", layout,
            "--seed", "5", "--split", "0.5,0.25,0.25", "--project", "datasets-cli",
        )  # fmt: skip
        assert code == 0, output
        assert "Classes present" in output and "sacrum" in output

    ts = _row(postgres_url, names["totalsegmentator"])
    assert ts.status is JobStatus.SUCCEEDED and ts.attempts == 1
    assert ts.splits == {"s0000": "train", "s0002": "val", "s0003": "test"}  # meta.csv kept
    assert [(e["case_id"], e["code"]) for e in ts.summary["excluded"]] == [
        ("s0001", "geometry_mismatch")
    ]
    assert ts.summary["spacing_mm"]["x"] == {"min": 4.0, "median": 4.0, "max": 4.0}
    plain = _row(postgres_url, names["plain"])
    assert plain.summary["cases"] == 4 and plain.summary["splits"] == {
        "train": 2, "val": 1, "test": 1,
    }  # fmt: skip
    assert set(ts.summary["classes_present"].values()) == {3}  # s0001 excluded
    assert plain.summary["classes_present"] == dict.fromkeys(ts.summary["classes_present"], 4)
    verse = _row(postgres_url, names["verse"])
    assert set(verse.splits.values()) == {"train"}  # splits.json names every subject 'train'

    code, output = _cli("register", str(tmp_path), "--name", names["plain"], "--layout", "plain")
    assert code == 1 and "dataset_conflict" in output and "already exists" in output
    code, output = _cli("splits", names["plain"], "--json")
    assert code == 0 and json.loads(output) == plain.splits
    code, output = _cli("list", "--project", "datasets-cli")
    assert code == 0 and output.count("succeeded") == 3

    bad = tmp_path / "bad"
    write_plain(bad, [_phantom(9)], case_ids=["only"])
    (bad / "labels.json").write_text(json.dumps({"labels": {"26": "sacrum"}}))
    (bad / "images" / "lonely.nii.gz").write_bytes((bad / "images" / "only.nii.gz").read_bytes())
    code, output = _cli("register", str(bad), "--name", _name("bad"), "--layout", "plain")
    assert code == 1
    assert "lonely" in output and "not declared in labels.json" in output
    assert "failed: invalid_input" in output


def test_orthanc_corrections_become_a_registered_dataset(
    settings_env: pytest.MonkeyPatch,
    postgres_url: str,
    orthanc: LocalOrthanc,
    orthanc_client: OrthancClient,
    storescu: str,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    studies = [
        make_study(tmp_path / "dicom", n, seed, ("L3", "L5"), run)
        for n, seed in (("P", 41), ("Q", 42), ("R", 43))
    ]
    for study in studies:
        c_store(orthanc, storescu, study.files)
        orthanc_client.store(
            encode_dataset(clinician_seg(study, study.truth, key=f"{run}:{study.name}"))
        )
    settings_env.setenv("SPINECLOUD_DATABASE_URL", postgres_url)
    settings_env.setenv("SPINECLOUD_ORTHANC_URL", orthanc.url)
    settings_env.setenv("SPINECLOUD_ORTHANC_USERNAME", orthanc.username)
    settings_env.setenv("SPINECLOUD_ORTHANC_PASSWORD", orthanc.password)
    name = _name("corrections")
    uids = ",".join(s.study_uid for s in studies)
    code, output = _cli("register", uids, "--name", name, "--layout", "orthanc")
    assert code == 0, output
    dataset = _row(postgres_url, name)
    assert dataset.status is JobStatus.SUCCEEDED
    assert dataset.root == str(tmp_path / "artifacts" / "datasets" / dataset.id)
    assert dataset.summary["cases"] == 3
    levels = [labels.by_id(int(i)).name for s in studies for i in np.unique(s.truth.array) if i]
    assert dataset.summary["classes_present"] == {n: levels.count(n) for n in set(levels)}
    assert sorted(dataset.splits.values()) == ["train", "train", "val"]  # 0.8/0.1/0.1 of 3


def _scan_done(url: str, dataset_id: str) -> Dataset | None:
    with session_scope(url) as session:
        row = session.get_one(Dataset, dataset_id)
        return row if row.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None


@pytest.mark.slow
def test_worker_scans_a_dataset_and_trains_on_its_stored_splits(
    worker: CeleryWorker,  # noqa: F811 - the fixture imported above
    celery_client: Celery,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folders = _write_layouts(tmp_path)
    (folders["plain"] / "labels" / "case001.nii.gz").unlink()
    names = {layout: _name(layout[:5]) for layout in folders}
    with session_scope(postgres_url) as session:
        ids = {
            layout: create_dataset(
                session, name=names[layout], layout=layout, source={"path": str(folder)},
                seed=1, fractions={"train": 0.34, "val": 0.33, "test": 0.33}, enqueue=False,
            ).id
            for layout, folder in folders.items()
        }  # fmt: skip
    for dataset_id in ids.values():
        enqueue(REGISTER_DATASET, {"dataset_id": dataset_id}, app=celery_client)
    scans = {
        layout: wait_for(partial(_scan_done, postgres_url, dataset_id), timeout_s=120.0)
        for layout, dataset_id in ids.items()
    }
    for layout, row in scans.items():
        assert row.status is JobStatus.SUCCEEDED, (layout, row.error_message, worker.log())
        assert row.summary["cases"] == (3 if layout == "plain" else 4)
    scanned: Dataset = scans["plain"]
    assert [e["case_id"] for e in scanned.summary["excluded"]] == ["case001"]
    assert "no label map" in scanned.summary["excluded"][0]["reason"]
    splits = scanned.splits
    assert sorted(splits.values()) == ["test", "train", "val"]
    name = names["plain"]

    job_id = _submit(
        postgres_url, celery_client, backend="segresnet", dataset=f"dataset:{name}",
        model_name="it-registered", model_version=uuid.uuid4().hex[:8], preset="demo",
        params={"iterations": 2, "device": "cpu", "preset_overrides": TINY},
    )  # fmt: skip
    job = _wait_job(postgres_url, job_id)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message, worker.log())
    val = [case for case, part in splits.items() if part == "val"]
    assert job.result["evaluation_cases"] == val
    with session_scope(postgres_url) as session:
        model = session.get_one(RegisteredModel, job.result["registered_model_id"])
        assert f"registered dataset {name}" in model.lineage["dataset"]
        assert "1 train, 1 val, 1 test held out" in model.lineage["dataset"]
