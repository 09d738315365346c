"""A fine-tune job on the training worker: corrections from Orthanc, fine-tune, gate, register.

A ``TrainingJob`` whose ``params["kind"]`` is ``"finetune"`` (created by
``correction_check``, or by hand with the same parameters) runs here instead of
``worker_job.run_training_job``; the Celery task and the child process dispatch on the kind.

Child process (``run_finetune_child``), in ``<artifact_dir>/training/<job_id>/``:

1. **Parent**: the registered version ``params["parent_model_id"]`` (its artefact folder).
2. **Corrections**: ``corrections.build_correction_dataset`` over ``params["studies"]`` into
   ``dataset/`` (rebuilt on every attempt), split by ``params["val_fraction"]``.
3. **Original data**: the data the parent's lineage goes back to: the dataset and parameters
   of the training job that produced it (of the first non-fine-tune job up the chain), or, for
   a version with no training job (the shipped default model), procedural phantoms from seeds
   the default model never saw. ``params["replay"]`` of its training cases are mixed into the
   training set (the replay sample) and ``params["holdout"]`` of its validation cases join the
   corrections' ``val`` cases as the held-out set; both drawn with ``params["seed"]``.
4. **Fine-tune and gate**: ``finetune.finetune`` from the parent's weights (learning rate x
   ``params["lr_factor"]``, ``params["iterations"]`` steps), then parent and new version are
   scored on the held-out set. The metric is the mean over held-out cases of each case's mean
   Dice over the classes in its reference; the new version is **accepted** when that is at
   least the parent's minus ``params["margin"]`` (``SPINECLOUD_FINETUNE_MARGIN``, 0.01), and
   **rejected** otherwise, or when no held-out case could be scored.

Worker process (``run_finetune_job``): an accepted version is published, registered as a
``draft`` with its evaluation handed to the metrics service, as any trained model
(``worker_job``); a rejected one is not registered, its bundle stays in the work folder, and
the job still *succeeds* with ``result["verdict"] = "rejected"``. Either way the result holds
the before/after numbers, the margin and the corrections used (SEG digests). A run is not
resumed from a checkpoint: a redelivered job fine-tunes again from the parent (minutes).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from spinecloud_shared.db.job_status import KEEP_FINISHED
from spinecloud_shared.db.models import RegisteredModel, TrainingJob
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.errors import InvalidInputError, NotFoundError, SpineCloudError
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_training.correction_check import is_finetune
from spinecloud_training.corrections import build_correction_dataset
from spinecloud_training.data import CaseSource, DataSplit, phantom_sources
from spinecloud_training.evaluation import PRED_DIR, REF_DIR
from spinecloud_training.finetune import FinetuneRequest, FinetuneResult, finetune
from spinecloud_training.finetune_cli import REPLAY_SEED
from spinecloud_training.segresnet import Phase, TrainingProgress
from spinecloud_training.worker_job import (
    CHILD_RESULT_FILE,
    JobReporter,
    JobSpec,
    Trained,
    check_version_free,
    die_with_parent,
    error_from_child,
    job_data,
    load_spec,
    mark_cancelled,
    publish_folder,
    register_trained,
    update_result,
    work_dir,
)

__all__ = ["is_finetune_job", "original_data", "run_finetune_child", "run_finetune_job"]

logger = logging.getLogger(__name__)

#: Seeds of held-out phantoms for a parent with no training job (clear of the replay seeds).
HOLDOUT_SEED = REPLAY_SEED + 50_000


def is_finetune_job(job_id: str) -> bool:
    """Whether the training job ``job_id`` is a fine-tune (False when it does not exist)."""
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        return job is not None and is_finetune(job.params)


# --------------------------------------------------------------------------- child process


def original_data(
    session: Session, parent: RegisteredModel, *, replay: int, holdout: int
) -> DataSplit:
    """The parent's original data (module docstring, 3), before sampling."""
    job = session.get(TrainingJob, parent.training_job_id) if parent.training_job_id else None
    seen: set[str] = set()
    while job is not None and is_finetune(job.params) and job.id not in seen:
        seen.add(job.id)
        grand = session.get(RegisteredModel, str(job.params.get("parent_model_id")))
        has_job = grand is not None and grand.training_job_id is not None
        job = session.get(TrainingJob, grand.training_job_id) if has_job and grand else None
    if job is None:
        return DataSplit(
            description="procedural spine phantoms unseen by the default model",
            train=phantom_sources(replay, first_seed=REPLAY_SEED, prefix="replay"),
            val=phantom_sources(holdout, first_seed=HOLDOUT_SEED, prefix="holdout"),
        )
    spec = JobSpec(
        job_id=job.id, status=job.status, backend=job.backend, preset=job.preset,
        dataset=job.dataset, model_name=job.model_name, model_version=job.model_version,
        params=dict(job.params or {}), result={},
    )  # fmt: skip
    return job_data(spec)


def _sample(sources: Sequence[CaseSource], count: int, seed: int, prefix: str) -> list[CaseSource]:
    """``count`` sources drawn with ``seed``, renamed so their ids cannot meet the corrections'."""
    chosen = random.Random(seed).sample(list(sources), min(count, len(sources)))
    return [replace(s, case_id=f"{prefix}-{s.case_id}") for s in chosen]


def _finetune_payload(spec: JobSpec, work: Path, reporter: JobReporter) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; what the worker process needs, as JSON."""
    params = spec.params
    seed = int(params.get("seed", 0))
    replay, holdout = int(params.get("replay", 0)), int(params.get("holdout", 0))
    reporter.progress(TrainingProgress(Phase.LOADING, 0, 0, 0))
    with session_scope() as session:
        parent = session.get(RegisteredModel, str(params.get("parent_model_id")))
        if parent is None:
            raise NotFoundError(
                f"The model to fine-tune ({params.get('parent')}) is not registered."
            )
        parent_dir = Path(parent.artifact_uri)
        original = original_data(session, parent, replay=replay, holdout=holdout)
    root = work / "dataset"
    shutil.rmtree(root, ignore_errors=True)
    built = build_correction_dataset(
        OrthancClient.from_settings(),
        root,
        study_uids=list(params.get("studies", [])) or None,
        val_fraction=float(params.get("val_fraction", 0.25)),
        seed=seed,
    )
    excluded = [
        {"case_id": e.seg_series, "code": e.code, "reason": e.reason} for e in built.excluded
    ]
    if not built.cases:
        raise InvalidInputError("No usable correction to fine-tune on.", excluded=excluded)
    scratch = work / "run"
    shutil.rmtree(scratch, ignore_errors=True)
    request = FinetuneRequest(
        parent=parent_dir,
        dataset=root,
        output_dir=work / "bundle",
        work_dir=scratch,
        iterations=int(params.get("iterations", 60)),
        lr_factor=float(params.get("lr_factor", 0.1)),
        version=spec.model_version,
        name=spec.model_name,
        replay=_sample(original.train, replay, seed, "original"),
        holdout=_sample(original.val, holdout, seed + 1, "original"),
        margin=float(params.get("margin", 0.01)),
        seed=seed,
        device=params.get("device"),
        command=f"spinecloud training job {spec.job_id} (fine-tune)",
    )
    result = finetune(request, progress=reporter.progress, should_cancel=reporter.should_cancel)
    return _payload(result, built.provenance(), [c.seg_series for c in built.cases], excluded)


def _payload(
    result: FinetuneResult,
    provenance: dict[str, Any],
    used: list[str],
    excluded: list[dict[str, Any]],
) -> dict[str, Any]:
    summary = result.summary()
    accepted = bool(result.not_worse)
    return {
        "completed": result.training.completed,
        "accepted": accepted,
        "artefact": str(result.bundle_dir) if result.bundle_dir else None,
        "metrics": dict(result.manifest.metrics) if result.manifest else {},
        "excluded": excluded,
        "details": {
            "backend": "segresnet",
            "kind": "finetune",
            "parent": result.parent,
            "iterations": result.training.iteration,
            "total_iterations": result.training.total_iterations,
            "verdict": "accepted" if accepted else "rejected",
            "finetune": summary,
            "corrections": provenance,
            "corrections_used": sorted(used),
        },
    }


def run_finetune_child(job_id: str) -> int:
    """The fine-tune's heavy part in a process of its own (as ``run_training_child``)."""
    spec = load_spec(job_id)
    work = work_dir(job_id)
    work.mkdir(parents=True, exist_ok=True)
    reporter = JobReporter(job_id)
    payload: dict[str, Any]
    try:
        payload = _finetune_payload(spec, work, reporter)
    except SpineCloudError as exc:
        payload = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    (work / CHILD_RESULT_FILE).write_text(json.dumps(payload, default=str))
    return 1 if "error" in payload else 0


# --------------------------------------------------------------------------- worker process


def _run_child(spec: JobSpec, work: Path) -> dict[str, Any]:
    result_file = work / CHILD_RESULT_FILE
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "spinecloud_training.child", spec.job_id]
    completed = subprocess.run(command, check=False, preexec_fn=die_with_parent)
    if not result_file.is_file():
        raise RuntimeError(f"fine-tune child process exited with {completed.returncode}")
    payload: dict[str, Any] = json.loads(result_file.read_text())
    if "error" in payload:
        error = payload["error"]
        raise error_from_child(error["code"], error["message"], error.get("details") or {})
    return payload


def _copy_scores(scratch: Path, out: Path) -> list[str]:
    """The gate's "after" predictions and references as the metrics service's input folders."""
    shutil.copytree(scratch / "evaluation" / "after", out / PRED_DIR)
    shutil.copytree(scratch / "evaluation" / "reference", out / REF_DIR)
    return sorted(p.name.removesuffix(".nii.gz") for p in (out / REF_DIR).glob("*.nii.gz"))


def run_finetune_job(job_id: str) -> dict[str, Any]:
    """Run fine-tune job ``job_id`` (module docstring); its result."""
    spec = load_spec(job_id)
    if spec.status in KEEP_FINISHED:
        return spec.result
    check_version_free(spec)
    work = work_dir(job_id)
    work.mkdir(parents=True, exist_ok=True)
    try:
        payload = _run_child(spec, work)
    except SpineCloudError as exc:
        if "excluded" in exc.details:
            update_result(job_id, {"excluded": exc.details["excluded"]})
        raise
    details, excluded = payload["details"], payload["excluded"]
    if not payload["completed"]:
        mark_cancelled(job_id, {**details, "excluded": excluded})
        return load_spec(job_id).result
    if not payload["accepted"]:
        logger.info("fine-tune %s rejected: %s", job_id, details["finetune"])
        with session_scope() as session:
            job = session.get_one(TrainingJob, job_id)
            job.result = {**details, "excluded": excluded, "registered_model_id": None}
            job.progress = {**(job.progress or {}), "phase": Phase.FINISHED.value}
        return load_spec(job_id).result
    artefact = publish_folder(Path(payload["artefact"]), spec)

    def write_eval(out: Path) -> list[str]:
        return _copy_scores(work / "run", out)

    trained = Trained(artefact, excluded, payload["metrics"], write_eval, details)
    eval_dir = work / "evaluation"
    shutil.rmtree(eval_dir, ignore_errors=True)
    cases = trained.write_eval(eval_dir)
    return register_trained(spec, trained, eval_dir, cases)
