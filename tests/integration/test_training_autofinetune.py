"""Fine-tuning starts by itself when corrections accumulate, and a worse version is not kept.

A private Orthanc holds phantom CT studies with SpineCloud's AI SEGs and clinicians' corrected
SEGs (helpers of ``test_training_finetune``); PostgreSQL holds the default model in production
and, through the gateway's own study arrival, its inference jobs on those CT series. Then:

gateway arrival of a study with a correction -> ``check_corrections`` sent by name -> a real
training worker counts the unused corrections (3, the threshold), creates one fine-tune job
and runs it with a margin no model can meet -> the job succeeds as "rejected" and nothing is
registered; a second check finds the corrections used. A job with a margin every model meets
registers its version as a draft, with the parent in its lineage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import SecretStr
from sqlalchemy import select

from spinecloud_gateway.studies.orthanc import OrthancReader
from spinecloud_gateway.studies.service import record_arrival
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import InferenceJob, JobStatus, RegisteredModel, TrainingJob
from spinecloud_shared.db.registry import promote, register_model
from spinecloud_shared.db.training_jobs import create_training_job
from spinecloud_shared.dicom_uids import derive_uid
from spinecloud_shared.dicom_write import encode_dataset
from spinecloud_shared.models.manifest import ModelState, read_manifest
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.settings import Settings
from spinecloud_shared.task_names import CHECK_CORRECTIONS, TRAINING_QUEUE
from spinecloud_training.correction_check import check_corrections, next_version
from spinecloud_training.corrections import uid_digest
from tests.fixtures.services import CeleryWorker, PostgresDatabases, StartWorker, wait_for
from tests.integration.conftest import require_tool
from tests.integration.test_gateway_support import (
    fresh_database,
    gateway_settings,
    orthanc_study_id,
)
from tests.integration.test_training_finetune import (
    DEFAULT_MODEL,
    Study,
    ai_seg,
    all_l3,
    c_store,
    clinician_seg,
    make_study,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "spine-segresnet-demo"
CORRECTED = "ABC"
TIMEOUT_S = 600.0
#: No model can gain more than 1 in mean Dice: a margin of -2 rejects every version.
IMPOSSIBLE_MARGIN = -2.0
#: Every version loses less than 1: a margin of 1 accepts every version.
GENEROUS_MARGIN = 1.0


@dataclass(frozen=True)
class Site:
    """Orthanc with the studies, the database with the production model, their folders."""

    orthanc: LocalOrthanc
    studies: dict[str, Study]
    database_url: str
    root: Path

    def settings(self, **finetune: Any) -> Settings:
        return Settings(
            database_url=self.database_url,
            orthanc_url=self.orthanc.url,
            orthanc_username=self.orthanc.username,
            orthanc_password=SecretStr(self.orthanc.password),
            **finetune,
        )

    def client(self) -> OrthancClient:
        return OrthancClient(self.orthanc.url, self.orthanc.username, self.orthanc.password)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases
) -> Iterator[Site]:
    require_tool("Orthanc")
    storescu = require_tool("storescu")
    root = tmp_path_factory.mktemp("autofinetune")
    url = fresh_database(postgres_databases)
    with LocalOrthanc(root / "orthanc") as server:
        client = OrthancClient(server.url, server.username, server.password)
        specs = {"A": (41, ("L3", "sacrum")), "B": (42, ("L2", "L5")),
                 "C": (43, ("L4", "sacrum")), "E": (45, ("L3", "L5"))}  # fmt: skip
        studies = {n: make_study(root / "dicom", n, s, lv, "auto") for n, (s, lv) in specs.items()}
        for study in studies.values():
            c_store(server, storescu, study.files)
            client.store(encode_dataset(ai_seg(study, all_l3(study))))
        for name in CORRECTED:
            seg = clinician_seg(studies[name], studies[name].truth, key=f"auto:{name}")
            client.store(encode_dataset(seg))
        models = root / "data" / "models" / MODEL / "0.1.0"
        shutil.copytree(DEFAULT_MODEL, models)
        with session_scope(url) as session:
            register_model(session, models, registered_by="test")
            promote(session, MODEL, "0.1.0", by="test")
        yield Site(server, studies, url, root)


def _arrive(site: Site, redis_url: str, celery: Celery, name: str) -> None:
    """The gateway records the study (routing rule: the default model) as on a stable study."""
    settings = gateway_settings(site.database_url, redis_url, site.orthanc)
    with session_scope(site.database_url) as session:
        record_arrival(
            session,
            reader=OrthancReader.from_settings(settings),
            orthanc_study_id=orthanc_study_id(site.orthanc, site.studies[name].study_uid),
            settings=settings,
            celery=celery,
        )


def _segmented(site: Site) -> None:
    """The inference jobs succeeded (the AI SEGs are in Orthanc already)."""
    with session_scope(site.database_url) as session:
        for job in session.scalars(select(InferenceJob)):
            job.mark(JobStatus.SUCCEEDED)


def _queued(redis_url: str, queue: str) -> list[str]:
    """Task names of the messages waiting in a Redis queue (kombu's list of JSON messages)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(m)["headers"]["task"] for m in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def _finetunes(url: str) -> list[TrainingJob]:
    with session_scope(url) as session:
        return list(session.scalars(select(TrainingJob).order_by(TrainingJob.created_at)))


def _finished(url: str, job_id: str) -> TrainingJob | None:
    with session_scope(url) as session:
        job = session.get_one(TrainingJob, job_id)
        done = job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
        return job if done else None


def _worker(start: StartWorker, site: Site) -> CeleryWorker:
    env = {
        "SPINECLOUD_DATA_DIR": str(site.root / "data"),
        "SPINECLOUD_ARTIFACT_DIR": str(site.root / "artifacts"),
        "SPINECLOUD_ORTHANC_URL": site.orthanc.url,
        "SPINECLOUD_ORTHANC_USERNAME": site.orthanc.username,
        "SPINECLOUD_ORTHANC_PASSWORD": site.orthanc.password,
        "SPINECLOUD_FINETUNE_THRESHOLD": str(len(CORRECTED)),
        "SPINECLOUD_FINETUNE_MARGIN": str(IMPOSSIBLE_MARGIN),
        "SPINECLOUD_FINETUNE_ITERATIONS": "2",
        "SPINECLOUD_FINETUNE_REPLAY": "1",
        "SPINECLOUD_FINETUNE_HOLDOUT": "1",
        "OMP_NUM_THREADS": "1",
    }
    return start(
        (TRAINING_QUEUE,),
        database_url=site.database_url,
        task_modules=("spinecloud_training.tasks",),
        env=env,
        ready_timeout_s=120.0,
    )


def test_threshold_starts_one_finetune_and_a_worse_version_is_not_registered(
    site: Site, redis_url: str, celery_client: Celery, celery_worker_process: StartWorker
) -> None:
    # The gateway records every study; only those with a viewer's SEG ask for the check.
    _arrive(site, redis_url, celery_client, "E")
    assert _queued(redis_url, TRAINING_QUEUE) == []
    for name in CORRECTED:
        _arrive(site, redis_url, celery_client, name)
    assert _queued(redis_url, TRAINING_QUEUE) == [CHECK_CORRECTIONS] * len(CORRECTED)
    _segmented(site)

    # One correction short of the threshold: nothing starts.
    above = site.settings(finetune_threshold=len(CORRECTED) + 1)
    [outcome] = check_corrections(settings=above, client=site.client(), celery=celery_client)
    assert (outcome.decision, outcome.unused) == ("below_threshold", len(CORRECTED))
    assert _finetunes(site.database_url) == []

    # The worker runs the gateway's checks: the first creates the job, the others find it.
    worker = _worker(celery_worker_process, site)
    job_id = wait_for(
        lambda: next((j.id for j in _finetunes(site.database_url)), None), timeout_s=TIMEOUT_S
    )
    again = check_corrections(
        settings=site.settings(finetune_threshold=len(CORRECTED)),
        client=site.client(),
        celery=celery_client,
    )
    assert [o.decision for o in again] in (["pending"], ["below_threshold"])
    job = wait_for(lambda: _finished(site.database_url, job_id), timeout_s=TIMEOUT_S)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message, worker.log())
    assert len(_finetunes(site.database_url)) == 1
    assert (job.model_name, job.model_version) == (MODEL, "0.1.1")
    expected = sorted(uid_digest(derive_uid(f"auto:{n}", "series")) for n in CORRECTED)
    assert job.params["corrections"] == expected
    assert job.result["corrections_used"] == expected

    # Rejected: the verdict and both scores are recorded, no version is registered.
    verdict = job.result["finetune"]
    assert job.result["verdict"] == "rejected" and job.result["registered_model_id"] is None
    assert verdict["margin"] == IMPOSSIBLE_MARGIN and verdict["not_worse"] is False
    assert verdict["val_cases"] == 2  # one held-out correction, one held-out original case
    assert 0.0 <= verdict["before"] <= 1.0 and 0.0 <= verdict["after"] <= 1.0
    with session_scope(site.database_url) as session:
        versions = session.scalars(
            select(RegisteredModel.version).where(RegisteredModel.name == MODEL)
        ).all()
    assert versions == ["0.1.0"]
    assert not (site.root / "data" / "models" / MODEL / "0.1.1").exists()

    # The corrections are used: a new check starts nothing.
    [after] = check_corrections(
        settings=site.settings(finetune_threshold=len(CORRECTED)),
        client=site.client(),
        celery=celery_client,
    )
    assert (after.decision, after.unused) == ("below_threshold", 0)

    # The same fine-tune with a margin every version meets is registered as a draft.
    with session_scope(site.database_url) as session:
        version = next_version(session, MODEL, "0.1.0")
        accepted = create_training_job(
            session, backend="segresnet", dataset=job.dataset, model_name=MODEL,
            model_version=version, preset=job.preset,
            params={**job.params, "margin": GENEROUS_MARGIN}, celery=celery_client,
        )  # fmt: skip
        accepted_id = str(accepted.id)
    done = wait_for(lambda: _finished(site.database_url, accepted_id), timeout_s=TIMEOUT_S)
    assert done.status is JobStatus.SUCCEEDED, (done.error_code, done.error_message, worker.log())
    assert (version, done.result["verdict"]) == ("0.1.2", "accepted")
    with session_scope(site.database_url) as session:
        model = session.get_one(RegisteredModel, done.result["registered_model_id"])
        assert (model.version, model.state) == ("0.1.2", ModelState.DRAFT)
        assert model.evaluation_id is not None
        manifest = read_manifest(Path(model.artifact_uri), verify=True)
    assert manifest.lineage.parent == f"{MODEL}@0.1.0"
    assert manifest.metrics["finetune"]["not_worse"] is True
