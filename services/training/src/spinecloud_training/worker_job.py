"""One training job: train, publish the artefact, hand the evaluation to the metrics service,
register the model. What the Celery task (``tasks.py``) runs.

Steps of ``run_training_job(job_id)``:

1. Read the ``TrainingJob`` row. A job already succeeded or cancelled is left as it is (a
   redelivered message); a registered model version that another job produced is a conflict.
2. Train in the job's work folder ``<artifact_dir>/training/<job_id>/``, in a child process
   (``python -m spinecloud_training.child``; Celery's daemonic pool processes may not start
   the processes nnU-Net and torch's data loader need), with progress written
   to ``job.progress`` (at most every ``PROGRESS_INTERVAL_S`` and at every phase change) and
   ``job.cancel_requested`` polled as often. A checkpoint left there by an earlier attempt (a
   worker killed mid-run, a redelivered message, a cancelled job queued again) is resumed.
3. Publish the artefact to ``<data_dir>/models/<name>/<version>/``, where the inference
   service's model lookup finds it by name.
4. Write the validation split's predictions and references (``evaluation.py``), create an
   ``Evaluation`` row and enqueue ``spinecloud.metrics.evaluate`` after the commit.
5. Register the artefact as a ``draft`` with its training metrics, the training job and the
   evaluation (``spinecloud_shared.db.registry``); the result goes on the job row.

Bad cases are excluded and listed in ``job.result["excluded"]``; when none is usable the job
fails (``invalid_input``) with the list still stored. A cancelled run marks the job
``cancelled`` itself; the task's status recorder then keeps that state.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import select

from spinecloud_shared.db.datasets import DATASET_PREFIX
from spinecloud_shared.db.job_status import KEEP_FINISHED
from spinecloud_shared.db.models import Evaluation, JobStatus, RegisteredModel, TrainingJob
from spinecloud_shared.db.registry import RegistryConflictError, json_safe, register_model
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.db.training_jobs import BACKENDS
from spinecloud_shared.errors import InvalidInputError, NotFoundError, SpineCloudError
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.settings import get_settings
from spinecloud_shared.task_names import EVALUATE
from spinecloud_training.data import DataSplit, layout_split, phantom_split
from spinecloud_training.dataset_tasks import registered_data
from spinecloud_training.evaluation import (
    PRED_DIR,
    REF_DIR,
    write_nnunet_eval,
    write_segresnet_eval,
)
from spinecloud_training.nnunet.pipeline import NnUNetRequest, train_nnunet
from spinecloud_training.nnunet.train import TrainSettings
from spinecloud_training.presets import NetworkConfig, Preset, get_preset
from spinecloud_training.segresnet import (
    CHECKPOINT_FILE,
    Phase,
    TrainingProgress,
    TrainRequest,
    train_segresnet,
)

__all__ = [
    "CHILD_RESULT_FILE",
    "PROGRESS_INTERVAL_S",
    "JobReporter",
    "JobSpec",
    "Trained",
    "build_preset",
    "check_version_free",
    "die_with_parent",
    "error_from_child",
    "job_data",
    "load_spec",
    "mark_cancelled",
    "models_root",
    "publish_folder",
    "register_trained",
    "run_training_job",
    "update_result",
    "work_dir",
]

logger = logging.getLogger(__name__)

#: Shortest interval between two progress writes (and two cancellation reads) of a job.
PROGRESS_INTERVAL_S = 2.0
_TUPLE_FIELDS = ("spacing_mm", "patch_size", "window_hu", "pos_neg")


@dataclass(frozen=True)
class JobSpec:
    """What the worker needs from the job row, read in one short transaction."""

    job_id: str
    status: JobStatus
    backend: str
    preset: str
    dataset: str
    model_name: str
    model_version: str
    params: dict[str, Any]
    result: dict[str, Any]
    project_id: str | None = None


@dataclass
class Trained:
    """A finished training: the published artefact and what to record about it."""

    artefact: Path
    excluded: list[dict[str, Any]]
    metrics: dict[str, Any]
    write_eval: Callable[[Path], list[str]]
    details: dict[str, Any]


def work_dir(job_id: str) -> Path:
    """The job's work folder (checkpoints, nnU-Net folders, evaluation files)."""
    return get_settings().resolved_artifact_dir / "training" / job_id


def models_root() -> Path:
    """Where trained artefacts are published: the inference lookup's site models folder."""
    return get_settings().data_dir / "models"


def build_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """The named SegResNet preset with ``overrides`` (JSON values: lists become tuples,
    ``network`` a ``NetworkConfig``); InvalidInputError for unknown fields."""
    try:
        preset = get_preset(name)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    changes = dict(overrides or {})
    known = {f.name for f in fields(Preset)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InvalidInputError(f"Unknown preset fields {unknown}; known: {sorted(known)}.")
    try:
        if isinstance(changes.get("network"), Mapping):
            net: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in changes["network"].items()
            }
            changes["network"] = NetworkConfig(**net)
        for key in _TUPLE_FIELDS:
            if key in changes:
                changes[key] = tuple(changes[key])
        return preset.with_overrides(**changes)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"Invalid preset overrides: {exc}.") from exc


class JobReporter:
    """Progress written to the job row, and the job's cancellation flag, both throttled."""

    def __init__(self, job_id: str, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self._written_at = float("-inf")
        self._read_at = float("-inf")
        self._phase: Phase | None = None
        self._cancel = False
        self.first_iteration: int | None = None

    def progress(self, event: TrainingProgress) -> None:
        """Store the event unless one was stored very recently in the same phase."""
        started = event.phase is Phase.TRAINING and event.loss is not None and event.iteration
        if started and self.first_iteration is None:
            self.first_iteration = event.iteration
        now = time.monotonic()
        routine = event.phase is self._phase and event.val_dice is None
        if routine and now - self._written_at < self.interval_s:
            return
        self._written_at, self._phase = now, event.phase
        values = {
            "phase": event.phase.value,
            "iteration": event.iteration,
            "total_iterations": event.total_iterations,
            "epoch": event.epoch,
            "loss": event.loss,
            "val_dice": event.val_dice,
            "best_val_dice": event.best_val_dice,
            "elapsed_s": round(event.elapsed_s, 1),
            "eta_s": None if event.eta_s is None else round(event.eta_s, 1),
        }
        with session_scope() as session:
            job = session.get(TrainingJob, self.job_id)
            if job is not None:
                job.progress = json_safe(values)

    def should_cancel(self) -> bool:
        """Whether someone asked the job to stop (read at most every ``interval_s``)."""
        now = time.monotonic()
        if not self._cancel and now - self._read_at >= self.interval_s:
            self._read_at = now
            with session_scope() as session:
                job = session.get(TrainingJob, self.job_id)
                self._cancel = bool(job is not None and job.cancel_requested)
        return self._cancel


# --------------------------------------------------------------------------- the job row


def load_spec(job_id: str) -> JobSpec:
    with session_scope() as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise NotFoundError(f"Training job {job_id} does not exist.")
        return JobSpec(
            job_id=job.id,
            status=job.status,
            backend=job.backend,
            preset=job.preset,
            dataset=job.dataset,
            model_name=job.model_name,
            model_version=job.model_version,
            params=dict(job.params or {}),
            result=dict(job.result or {}),
            project_id=job.project_id,
        )


def check_version_free(spec: JobSpec) -> None:
    """A registered name@version from another job (or none) cannot be trained again."""
    with session_scope() as session:
        existing = session.scalars(
            select(RegisteredModel).where(
                RegisteredModel.name == spec.model_name,
                RegisteredModel.version == spec.model_version,
            )
        ).one_or_none()
        if existing is not None and existing.training_job_id != spec.job_id:
            raise RegistryConflictError(
                f"Model {spec.model_name}@{spec.model_version} is already registered; give "
                "the training job another version.",
                model=f"{spec.model_name}@{spec.model_version}",
            )


def update_result(job_id: str, values: Mapping[str, Any]) -> None:
    with session_scope() as session:
        job = session.get_one(TrainingJob, job_id)
        job.result = json_safe({**(job.result or {}), **values})


def mark_cancelled(job_id: str, details: Mapping[str, Any]) -> dict[str, Any]:
    result = {"cancelled": True, **details}
    with session_scope() as session:
        job = session.get_one(TrainingJob, job_id)
        job.result = json_safe({**(job.result or {}), **result})
        job.cancel_requested = False
        job.mark(JobStatus.CANCELLED)
    return result


# --------------------------------------------------------------------------- backends


def job_data(spec: JobSpec) -> DataSplit:
    params = spec.params
    if spec.dataset == "phantoms":
        return phantom_split(
            int(params.get("phantoms", 32)),
            int(params.get("val_phantoms", 6)),
            seed=int(params.get("seed", 0)),
        )
    if spec.dataset.startswith(DATASET_PREFIX):
        ref = spec.dataset.removeprefix(DATASET_PREFIX)
        return registered_data(ref, project_id=spec.project_id)
    root = Path(spec.dataset)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such dataset folder.", path=str(root))
    return layout_split(root)


def publish_folder(source: Path, spec: JobSpec) -> Path:
    """Copy a finished artefact folder to the site models folder (replacing a partial copy)."""
    target = models_root() / spec.model_name / spec.model_version
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _segresnet_payload(spec: JobSpec, work: Path, reporter: JobReporter) -> dict[str, Any]:
    """Train (or resume) the job's SegResNet; what the parent needs, as JSON."""
    params = spec.params
    preset = build_preset(spec.preset, params.get("preset_overrides"))
    if params.get("iterations") is not None:
        preset = preset.with_overrides(iterations=int(params["iterations"]))
    if params.get("seed") is not None:
        preset = preset.with_overrides(seed=int(params["seed"]))
    checkpoints = work / "checkpoints"
    resume = (checkpoints / CHECKPOINT_FILE).is_file()
    request = TrainRequest(
        preset=preset,
        data=job_data(spec),
        output_dir=work / "bundle",
        work_dir=checkpoints,
        name=spec.model_name,
        version=spec.model_version,
        resume=resume,
        command=f"spinecloud training job {spec.job_id}",
        device=params.get("device"),
    )
    result = train_segresnet(
        request, progress=reporter.progress, should_cancel=reporter.should_cancel
    )
    # A run cancelled before its first step in this session stopped where it resumed.
    first = reporter.first_iteration
    resumed_from = (first - 1 if first else result.iteration) if resume else None
    return {
        "completed": result.completed,
        "details": {
            "backend": "segresnet",
            "iterations": result.iteration,
            "total_iterations": result.total_iterations,
            "resumed_from_iteration": resumed_from,
            "checkpoint": str(result.checkpoint),
        },
        "excluded": [vars(e) for e in result.excluded],
        "artefact": str(result.bundle_dir) if result.bundle_dir else None,
        "metrics": dict(result.manifest.metrics) if result.manifest else {},
    }


def _nnunet_request(spec: JobSpec, work: Path) -> NnUNetRequest:
    params = spec.params
    settings = TrainSettings(
        num_epochs=params.get("epochs"),
        iterations_per_epoch=params.get("iterations_per_epoch"),
        val_iterations_per_epoch=params.get("val_iterations_per_epoch"),
    )
    return NnUNetRequest(
        data=job_data(spec),
        work_dir=work / "nnunet",
        output_dir=models_root() / spec.model_name / spec.model_version,
        name=spec.model_name,
        version=spec.model_version,
        settings=settings,
        device=params.get("device"),
        command=f"spinecloud training job {spec.job_id}",
    )


def _nnunet_payload(spec: JobSpec, work: Path, reporter: JobReporter) -> dict[str, Any]:
    """Train (or resume) the job's nnU-Net and publish it; what the parent needs, as JSON."""
    result = train_nnunet(
        _nnunet_request(spec, work),
        progress=reporter.progress,
        should_cancel=reporter.should_cancel,
    )
    return {
        "completed": result.completed,
        "details": {
            "backend": "nnunet",
            "fold": result.fold,
            "epochs": result.epoch,
            "resumed_from_epoch": result.resumed_from_epoch,
        },
        "excluded": result.excluded,
        "artefact": str(result.artefact_dir) if result.artefact_dir else None,
        "metrics": dict(result.manifest.metrics) if result.manifest else {},
        "model_folder": str(result.model_folder),
        "validation_cases": result.validation_cases,
    }


CHILD_RESULT_FILE = "train_result.json"


def run_training_child(job_id: str) -> int:
    """A job's training in a process of its own (``python -m spinecloud_training.child
    JOB_ID``); writes ``train_result.json`` in the work folder and returns the exit status.

    Celery's prefork pool runs tasks in daemonic processes, which may not start the processes
    nnU-Net (planning, preprocessing, augmentation, export) and torch's data loader workers
    need; a plain child process may.
    """
    spec = load_spec(job_id)
    work = work_dir(job_id)
    reporter = JobReporter(job_id)
    payload: dict[str, Any]
    try:
        if spec.backend == "segresnet":
            payload = _segresnet_payload(spec, work, reporter)
        else:
            payload = _nnunet_payload(spec, work, reporter)
    except SpineCloudError as exc:
        payload = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
    (work / CHILD_RESULT_FILE).write_text(json.dumps(payload, default=str))
    return 1 if "error" in payload else 0


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child: receive SIGKILL when the worker process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _train(spec: JobSpec, work: Path) -> Trained | None:
    """Train in a child process; the published artefact, or None when the run was cancelled."""
    result_file = work / CHILD_RESULT_FILE
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "spinecloud_training.child", spec.job_id]
    completed = subprocess.run(command, check=False, preexec_fn=die_with_parent)
    if not result_file.is_file():
        raise RuntimeError(f"training child process exited with {completed.returncode}")
    payload = json.loads(result_file.read_text())
    if "error" in payload:
        error = payload["error"]
        raise error_from_child(error["code"], error["message"], error.get("details") or {})
    details, excluded = payload["details"], payload["excluded"]
    if not payload["completed"]:
        mark_cancelled(spec.job_id, {**details, "excluded": excluded})
        return None
    if spec.backend == "segresnet":
        artefact = publish_folder(Path(payload["artefact"]), spec)
        data, device = job_data(spec), spec.params.get("device")

        def write_eval(out: Path) -> list[str]:
            return write_segresnet_eval(artefact, data.val, out, device=device)

        return Trained(artefact, excluded, payload["metrics"], write_eval, details)
    model_folder = Path(payload["model_folder"])
    fold_dir = model_folder / f"fold_{details['fold']}"
    raw_folder = work / "nnunet" / "nnUNet_raw" / model_folder.parent.name
    cases: dict[str, str] = payload["validation_cases"]

    def write_nnunet(out: Path) -> list[str]:
        return write_nnunet_eval(model_folder, fold_dir, raw_folder, cases, out)

    return Trained(Path(payload["artefact"]), excluded, payload["metrics"], write_nnunet, details)


def error_from_child(code: str, message: str, details: dict[str, Any]) -> SpineCloudError:
    """The child's error as the same kind of SpineCloudError (its code kept)."""
    kinds: dict[str, type[SpineCloudError]] = {c.code: c for c in _subclasses(SpineCloudError)}
    kind = kinds.get(code, SpineCloudError)
    return kind(message, **details)


def _subclasses(cls: type[SpineCloudError]) -> list[type[SpineCloudError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


# --------------------------------------------------------------------------- registration


def register_trained(
    spec: JobSpec, trained: Trained, eval_dir: Path, cases: list[str]
) -> dict[str, Any]:
    """Register the model, create its evaluation (enqueued after commit), store the result."""
    ref = f"{spec.model_name}@{spec.model_version}"
    with session_scope() as session:
        job = session.get_one(TrainingJob, spec.job_id)
        model = register_model(
            session,
            trained.artefact,
            registered_by=job.created_by,
            training_job_id=spec.job_id,
            metrics=trained.metrics,
        )
        if model.evaluation_id is None and cases:
            evaluation = Evaluation(
                name=f"{ref} on its validation split",
                model_ref=f"{spec.model_name}:{spec.model_version}",
                split="val",
                pred_dir=str(eval_dir / PRED_DIR),
                ref_dir=str(eval_dir / REF_DIR),
                params={"report_dir": str(eval_dir / "report")},
                project_id=job.project_id,
            )
            session.add(evaluation)
            session.flush()
            model.evaluation_id = evaluation.id
            enqueue_after_commit(session, EVALUATE, {"job_id": evaluation.id})
        result = {
            **trained.details,
            "model": ref,
            "registered_model_id": model.id,
            "state": model.state.value,
            "artefact": str(trained.artefact),
            "metrics": trained.metrics,
            "evaluation_id": model.evaluation_id,
            "evaluation_cases": cases,
            "excluded": trained.excluded,
        }
        job.result = json_safe(result)
        job.progress = {**(job.progress or {}), "phase": Phase.FINISHED.value}
    return result


def run_training_job(job_id: str) -> dict[str, Any]:
    """Run training job ``job_id`` to a registered model (module docstring); its result."""
    spec = load_spec(job_id)
    if spec.status in KEEP_FINISHED:
        return spec.result
    if spec.backend not in BACKENDS:
        raise InvalidInputError(f"Unknown training backend {spec.backend!r}.")
    check_version_free(spec)
    work = work_dir(job_id)
    work.mkdir(parents=True, exist_ok=True)
    try:
        trained = _train(spec, work)
    except SpineCloudError as exc:
        if "excluded" in exc.details:
            update_result(job_id, {"excluded": exc.details["excluded"]})
        raise
    if trained is None:
        return load_spec(job_id).result
    eval_dir = work / "evaluation"
    shutil.rmtree(eval_dir, ignore_errors=True)
    cases = trained.write_eval(eval_dir)
    return register_trained(spec, trained, eval_dir, cases)
