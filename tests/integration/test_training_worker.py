"""The training task end to end on a real Celery worker, Redis and PostgreSQL, on CPU.

Each backend trains a few iterations on tiny phantoms written in a public layout (SegResNet on
a TotalSegmentator folder with two bad cases, nnU-Net v2 on a VerSe folder); the worker
publishes the artefact, registers it as a draft and hands its validation predictions to the
metrics task (same worker, ``metrics`` queue); the test promotes it, serves it by name through
the inference pipeline and scores the served output with the metrics panel. A third test kills
the worker's pool process mid-run and cancels a run: both continue from their checkpoint.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from celery import Celery

from spinecloud_inference.backends import clear_model_cache, load_model
from spinecloud_inference.pipeline import segment_volume
from spinecloud_metrics.api import evaluate_volumes
from spinecloud_shared import labels
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import Evaluation, JobStatus, RegisteredModel, TrainingJob
from spinecloud_shared.db.registry import promote
from spinecloud_shared.db.training_jobs import create_training_job, request_cancel, requeue
from spinecloud_shared.layouts import write_totalsegmentator, write_verse
from spinecloud_shared.models.manifest import ModelState
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.queue import enqueue
from spinecloud_shared.task_names import METRICS_QUEUE, TRAIN, TRAINING_QUEUE
from spinecloud_shared.volume import Volume
from tests.fixtures.services import CeleryWorker, StartWorker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 420.0
#: nnU-Net spawns process pools (fingerprint, preprocessing, validation export), each
#: importing torch: minutes on a small, busy CPU machine.
NNUNET_TIMEOUT_S = 900.0
#: A SegResNet small enough for a few CPU iterations in seconds.
TINY = {
    "network": {"init_filters": 4, "norm_groups": 4},
    "spacing_mm": [4.0, 4.0, 4.0],
    "patch_size": [32, 32, 32],
    "num_samples": 1,
    "val_every": 1000,
    "checkpoint_every": 2,
    "sw_batch_size": 8,
}


def _phantom(seed: int) -> Phantom:
    spec = PhantomSpec(
        seed=seed, levels=("L4", "sacrum"), spacing_mm=(4.0, 4.0, 4.0), fov_mm=(100.0, 100.0)
    )
    return generate_phantom(spec)


@pytest.fixture()
def worker_env(tmp_path: Path) -> dict[str, str]:
    """Folders of the worker (published models, work folders) and nnU-Net's CPU settings."""
    return {
        "SPINECLOUD_DATA_DIR": str(tmp_path / "data"),
        "SPINECLOUD_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "nnUNet_def_n_proc": "1",
        "nnUNet_n_proc_DA": "0",
        "OMP_NUM_THREADS": "2",
    }


@pytest.fixture()
def worker(
    celery_worker_process: StartWorker, postgres_url: str, worker_env: Mapping[str, str]
) -> CeleryWorker:
    """One worker on the training and metrics queues, with both services' tasks."""
    return celery_worker_process(
        (TRAINING_QUEUE, METRICS_QUEUE),
        database_url=postgres_url,
        task_modules=("spinecloud_training.tasks", "spinecloud_metrics.tasks"),
        env=worker_env,
        ready_timeout_s=120.0,
    )


def _submit(url: str, app: Celery, **fields: Any) -> str:
    with session_scope(url) as session:
        job = create_training_job(session, enqueue=False, **fields)
        job_id = str(job.id)
    enqueue(TRAIN, {"job_id": job_id}, app=app)
    return job_id


def _job(url: str, job_id: str) -> TrainingJob:
    with session_scope(url) as session:
        return session.get_one(TrainingJob, job_id)


def _finished(url: str, job_id: str) -> TrainingJob | None:
    job = _job(url, job_id)
    done = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    return job if job.status in done else None


def _wait_job(url: str, job_id: str, timeout_s: float = TIMEOUT_S) -> TrainingJob:
    job: TrainingJob = wait_for(lambda: _finished(url, job_id), timeout_s=timeout_s)
    return job


def _wait_evaluation(url: str, evaluation_id: str) -> Evaluation:
    def done() -> Evaluation | None:
        with session_scope(url) as session:
            evaluation = session.get_one(Evaluation, evaluation_id)
            finished = evaluation.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
            return evaluation if finished else None

    evaluation: Evaluation = wait_for(done, timeout_s=TIMEOUT_S)
    return evaluation


def _promote_serve_and_score(url: str, job: TrainingJob, data_dir: Path) -> None:
    """Promote the registered model, serve it by name, score the served output."""
    name, version = job.model_name, job.model_version
    with session_scope(url) as session:
        model = session.get_one(RegisteredModel, job.result["registered_model_id"])
        assert model.state is ModelState.DRAFT and model.training_job_id == job.id
        promote(session, name, version, by="integration-test")
    clear_model_cache()
    backend = load_model(name, models_dir=data_dir / "models", device="cpu")
    assert backend.manifest.version == version
    assert backend.manifest.state is ModelState.PRODUCTION
    phantom = _phantom(99)
    served = segment_volume(phantom.ct, backend, device="cpu")
    assert served.labels.same_grid(phantom.ct)
    assert set(np.unique(served.labels.array).tolist()) <= {0, *labels.ALL_IDS}
    scored = evaluate_volumes(served.labels, phantom.labels, case_id="served")
    assert len(scored.class_rows()) > 0


def test_segresnet_on_a_totalsegmentator_folder_end_to_end(
    worker: CeleryWorker, celery_client: Celery, postgres_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "totalseg"
    phantoms = [_phantom(seed) for seed in range(5)]
    write_totalsegmentator(root, phantoms, splits=["train", "train", "train", "val", "train"])
    off_grid = Volume(np.ones((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off_grid, root / "s0001/segmentations/sacrum.nii.gz")
    (root / "s0004/ct.nii.gz").unlink()
    job_id = _submit(
        postgres_url, celery_client, backend="segresnet", dataset=str(root),
        model_name="it-segresnet", model_version="1.0.0", preset="demo",
        params={"iterations": 4, "device": "cpu", "preset_overrides": TINY},
    )  # fmt: skip
    job = _wait_job(postgres_url, job_id)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message, worker.log())
    assert job.attempts == 1 and job.progress["phase"] == "finished"
    excluded = {e["case_id"]: e["code"] for e in job.result["excluded"]}
    assert excluded == {"s0001": "geometry_mismatch", "s0004": "invalid_nifti"}
    assert job.result["iterations"] == 4 and job.result["evaluation_cases"] == ["s0003"]
    data_dir = tmp_path / "data"
    assert Path(job.result["artefact"]) == data_dir / "models" / "it-segresnet" / "1.0.0"

    evaluation = _wait_evaluation(postgres_url, job.result["evaluation_id"])
    assert evaluation.status is JobStatus.SUCCEEDED, evaluation.error_message
    assert evaluation.summary is not None and evaluation.summary["n_cases"] == 1
    assert 0.0 <= evaluation.summary["dice"] <= 1.0
    _promote_serve_and_score(postgres_url, job, data_dir)


def test_nnunet_on_a_verse_folder_end_to_end(
    worker: CeleryWorker, celery_client: Celery, postgres_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("nnunetv2")
    root = tmp_path / "verse"
    write_verse(root, [_phantom(seed) for seed in range(4)], splits=["train"] * 3 + ["val"])
    job_id = _submit(
        postgres_url, celery_client, backend="nnunet", dataset=str(root),
        model_name="it-nnunet", model_version="1.0.0",
        params={"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                "device": "cpu"},
    )  # fmt: skip
    job = _wait_job(postgres_url, job_id, NNUNET_TIMEOUT_S)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message, worker.log())
    assert job.result["fold"] == 0 and job.result["epochs"] == 1
    assert len(job.result["evaluation_cases"]) == 1
    evaluation = _wait_evaluation(postgres_url, job.result["evaluation_id"])
    assert evaluation.status is JobStatus.SUCCEEDED, evaluation.error_message
    _promote_serve_and_score(postgres_url, job, tmp_path / "data")


def _checkpointed(url: str, job_id: str, at_least: int) -> bool:
    progress = _job(url, job_id).progress or {}
    return progress.get("phase") == "training" and progress.get("iteration", 0) >= at_least


def test_killed_and_cancelled_runs_resume_from_their_checkpoint(
    worker: CeleryWorker, celery_client: Celery, postgres_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "totalseg"
    write_totalsegmentator(root, [_phantom(seed) for seed in range(3)])
    job_id = _submit(
        postgres_url, celery_client, backend="segresnet", dataset=str(root),
        model_name="it-resume", model_version="1.0.0",
        params={"iterations": 400, "device": "cpu", "preset_overrides": TINY},
    )  # fmt: skip
    wait_for(lambda: _checkpointed(postgres_url, job_id, 4), timeout_s=TIMEOUT_S)
    (pool_pid,) = worker.pool_pids()
    os.kill(pool_pid, signal.SIGKILL)  # as the OOM killer would: the message is redelivered

    def resumed() -> bool:
        job = _job(postgres_url, job_id)
        return job.attempts == 2 and _checkpointed(postgres_url, job_id, 6)

    wait_for(resumed, timeout_s=TIMEOUT_S)
    with session_scope(postgres_url) as session:
        request_cancel(session, job_id)
    cancelled = _wait_job(postgres_url, job_id)
    assert cancelled.status is JobStatus.CANCELLED, (cancelled.error_message, worker.log())
    stopped_at = cancelled.result["iterations"]
    assert cancelled.result["resumed_from_iteration"] >= 2
    assert 6 <= stopped_at < 400

    with session_scope(postgres_url) as session:
        job = requeue(session, job_id, enqueue=False)
        job.params = {**job.params, "iterations": stopped_at + 2}
    enqueue(TRAIN, {"job_id": job_id}, app=celery_client)
    done = _wait_job(postgres_url, job_id)
    assert done.status is JobStatus.SUCCEEDED, (done.error_message, worker.log())
    assert done.attempts == 3
    assert done.result["resumed_from_iteration"] == stopped_at
    assert done.result["iterations"] == stopped_at + 2
