"""When to fine-tune: count clinicians' unused corrections of each production model's outputs.

The task ``spinecloud.training.check_corrections`` (queue ``training``) runs
:func:`check_corrections`. The gateway sends it whenever a stable study holds a SEG series that
SpineCloud did not write (Celery beat does not run in our deployments); it can also be sent by
hand. For every production model that is a MONAI bundle (nnU-Net models are not fine-tuned):

1. **Its outputs**: the CT series that the model's name segmented (succeeded inference jobs).
2. **Corrections of them**: Orthanc's SEG series whose ``Manufacturer`` is not SpineCloud's
   (a JSON lookup, no file read) name the studies to look at; there the corrections rule of
   ``corrections.select_corrections`` applies (one CT series referenced, not SpineCloud's own
   SEG, newest per CT series wins), restricted to the model's CT series. Whether a correction's
   content is usable (labels, grid) is checked when the job builds its dataset; the unusable
   ones are then excluded and listed in the job's result.
3. **Unused**: a correction is identified by the SHA-256 digest of its SEG SeriesInstanceUID
   (``corrections.uid_digest``). It is *used* once a fine-tune job of that model name lists it
   in ``params["corrections"]`` or ``result["corrections_used"]`` and that job is queued,
   running or succeeded (accepted or rejected); a failed or cancelled job frees its
   corrections for the next check.
4. **Start**: when the unused count reaches ``SPINECLOUD_FINETUNE_THRESHOLD`` (0 disables) and
   no fine-tune of that model is queued or running, a ``TrainingJob`` (backend ``segresnet``,
   ``params["kind"] = "finetune"``) is created for the next free patch version and enqueued on
   ``spinecloud.training.train`` after the commit. The production row is locked while the job
   is created, so concurrent checks create at most one job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_shared.db.models import InferenceJob, JobStatus, RegisteredModel, TrainingJob
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.db.training_jobs import create_training_job
from spinecloud_shared.errors import UpstreamError
from spinecloud_shared.models.manifest import Backend, ModelState
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.settings import Settings, get_settings
from spinecloud_training.corrections import (
    SEG_MANUFACTURER,
    Correction,
    find_seg_candidates,
    select_corrections,
    uid_digest,
)
from spinecloud_training.finetune import bump_version

__all__ = [
    "AUTO_CREATOR",
    "FINETUNE_KIND",
    "CheckOutcome",
    "check_corrections",
    "correction_studies",
    "is_finetune",
    "next_version",
    "used_corrections",
]

logger = logging.getLogger(__name__)

#: ``TrainingJob.params["kind"]`` of a fine-tune job.
FINETUNE_KIND = "finetune"
#: ``TrainingJob.created_by`` of the jobs this check creates.
AUTO_CREATOR = "spinecloud:correction-check"
#: Jobs whose corrections count as used (failed and cancelled ones free them).
_HOLDING = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
_PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def is_finetune(params: Mapping[str, Any] | None) -> bool:
    """Whether a training job's parameters describe a fine-tune."""
    return bool(params) and (params or {}).get("kind") == FINETUNE_KIND


@dataclass(frozen=True)
class CheckOutcome:
    """What the check decided for one production model."""

    model: str
    unused: int
    threshold: int
    #: ``created``, ``below_threshold``, ``pending`` (a fine-tune is queued or running).
    decision: str
    job_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the task's return value)."""
        return asdict(self)


# --------------------------------------------------------------------------- Orthanc


def correction_studies(client: OrthancClient) -> set[str]:
    """StudyInstanceUIDs of studies holding a SEG series whose Manufacturer is not SpineCloud's
    (Orthanc's series main tags: no file is read)."""
    body = {"Level": "Series", "Query": {"Modality": "SEG"}, "Expand": True}
    try:
        response = client.api.post_tools_find(body)
    except Exception as exc:  # httpx transport errors, whatever pyorthanc wraps them in
        raise UpstreamError(f"Orthanc is unreachable ({type(exc).__name__}).") from exc
    if response.status_code >= 400:
        raise UpstreamError(f"Orthanc answered {response.status_code} to the SEG lookup.")
    parents = {
        str(series["ParentStudy"])
        for series in response.json()
        if str(series.get("MainDicomTags", {}).get("Manufacturer", "")).strip() != SEG_MANUFACTURER
    }
    studies = set()
    for parent in sorted(parents):
        answer = client.api.get_studies_id(parent)
        if answer.status_code < 400:
            studies.add(str(answer.json()["MainDicomTags"]["StudyInstanceUID"]))
    return studies


# --------------------------------------------------------------------------- database


def used_corrections(session: Session, model_name: str) -> set[str]:
    """SEG digests listed by the model name's fine-tunes that hold them (module doc, 3)."""
    used: set[str] = set()
    for job in _finetunes(session, model_name, _HOLDING):
        used.update(str(d) for d in (job.params or {}).get("corrections", []))
        used.update(str(d) for d in (job.result or {}).get("corrections_used", []))
    return used


def _finetunes(
    session: Session, model_name: str, statuses: Iterable[JobStatus]
) -> list[TrainingJob]:
    jobs = session.scalars(
        select(TrainingJob).where(
            TrainingJob.model_name == model_name, TrainingJob.status.in_(list(statuses))
        )
    ).all()
    return [job for job in jobs if is_finetune(job.params)]


def next_version(session: Session, model_name: str, current: str) -> str:
    """The patch after the highest MAJOR.MINOR.PATCH version of the name that is registered or
    reserved by a training job (``current`` when there is none higher)."""
    versions = [current]
    versions += session.scalars(
        select(RegisteredModel.version).where(RegisteredModel.name == model_name)
    ).all()
    versions += session.scalars(
        select(TrainingJob.model_version).where(TrainingJob.model_name == model_name)
    ).all()
    semver = [tuple(int(g) for g in m.groups()) for v in versions if (m := _SEMVER.match(v))]
    if not semver:
        return bump_version(current)
    return bump_version(".".join(str(n) for n in max(semver)))


@dataclass(frozen=True)
class _Model:
    id: str
    name: str
    version: str
    series: frozenset[str]
    studies: frozenset[str]


def _production_models(session: Session) -> list[_Model]:
    rows = session.scalars(
        select(RegisteredModel).where(
            RegisteredModel.state == ModelState.PRODUCTION,
            RegisteredModel.backend == Backend.MONAI_BUNDLE.value,
        )
    ).all()
    models = []
    for row in rows:
        outputs = session.execute(
            select(InferenceJob.series_instance_uid, InferenceJob.study_instance_uid).where(
                InferenceJob.model_name == row.name, InferenceJob.status == JobStatus.SUCCEEDED
            )
        ).all()
        models.append(
            _Model(
                id=row.id,
                name=row.name,
                version=row.version,
                series=frozenset(s for s, _ in outputs),
                studies=frozenset(s for _, s in outputs),
            )
        )
    return models


# --------------------------------------------------------------------------- the check


def _job_params(model: _Model, corrections: list[Correction], settings: Settings) -> dict[str, Any]:
    return {
        "kind": FINETUNE_KIND,
        "parent": f"{model.name}@{model.version}",
        "parent_model_id": model.id,
        "corrections": sorted(uid_digest(c.seg.series_instance_uid) for c in corrections),
        "studies": sorted({c.seg.study_instance_uid for c in corrections}),
        "iterations": settings.finetune_iterations,
        "lr_factor": settings.finetune_lr_factor,
        "margin": settings.finetune_margin,
        "replay": settings.finetune_replay,
        "holdout": settings.finetune_holdout,
        "val_fraction": settings.finetune_val_fraction,
        "seed": 0,
        "trigger": f"{len(corrections)} unused corrections >= {settings.finetune_threshold}",
    }


def _decide(
    model: _Model,
    corrections: list[Correction],
    settings: Settings,
    url: str | None,
    celery: Celery | None,
) -> CheckOutcome:
    """Count, and create the job, under a lock on the production row."""
    threshold = settings.finetune_threshold
    with session_scope(url) as session:
        row = session.scalars(
            select(RegisteredModel).where(RegisteredModel.id == model.id).with_for_update()
        ).one_or_none()
        if row is None or row.state is not ModelState.PRODUCTION:
            return CheckOutcome(model.name, 0, threshold, "not_production")
        used = used_corrections(session, model.name)
        unused = [c for c in corrections if uid_digest(c.seg.series_instance_uid) not in used]
        ref = f"{model.name}@{model.version}"
        if _finetunes(session, model.name, _PENDING):
            return CheckOutcome(ref, len(unused), threshold, "pending")
        if len(unused) < threshold:
            return CheckOutcome(ref, len(unused), threshold, "below_threshold")
        job = create_training_job(
            session,
            backend="segresnet",
            dataset="orthanc:corrections",
            model_name=model.name,
            model_version=next_version(session, model.name, model.version),
            preset=FINETUNE_KIND,
            params=_job_params(model, unused, settings),
            created_by=AUTO_CREATOR,
            project_id=row.project_id,
            celery=celery,
        )
        logger.info("fine-tune of %s queued: %d unused corrections", ref, len(unused))
        return CheckOutcome(ref, len(unused), threshold, "created", str(job.id))


def check_corrections(
    *,
    settings: Settings | None = None,
    client: OrthancClient | None = None,
    database_url: str | None = None,
    celery: Celery | None = None,
) -> list[CheckOutcome]:
    """Run the check (module docstring) for every production MONAI model; one outcome each.

    ``database_url`` defaults to the settings' database. Raises UpstreamError when Orthanc
    cannot be read.
    """
    settings = settings or get_settings()
    if settings.finetune_threshold == 0:
        return []
    database_url = database_url or settings.resolved_database_url
    with session_scope(database_url) as session:
        models = [m for m in _production_models(session) if m.series]
    if not models:
        return []
    client = client or OrthancClient.from_settings(settings)
    studies = correction_studies(client) & set().union(*(m.studies for m in models))
    corrections: list[Correction] = []
    if studies:
        candidates, _ = find_seg_candidates(client, study_uids=sorted(studies))
        corrections, _ = select_corrections(candidates)
    return [
        _decide(
            model,
            [c for c in corrections if c.ct_series_uid in model.series],
            settings,
            database_url,
            celery,
        )
        for model in models
    ]
