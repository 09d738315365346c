"""The model registry: register trained artefacts, list them, promote and retire versions.

The registry (table ``registered_models``) is the source of truth for a model version's state;
the artefact's own ``spinecloud.json`` carries a copy of it, rewritten at every change, so that
the inference side's name lookup (``NAME`` -> the production version, by manifest state) picks
a promotion up at its next lookup, without a restart. ``manifest_sha256`` is the digest of
``spinecloud.json`` as the registry last wrote it.

States and rules (``ModelState``):

* ``register`` records a new version as ``draft``; registering the same artefact again (same
  name, version and folder) returns the existing entry, another folder under a registered
  name and version is a conflict.
* ``draft`` -> ``validated`` | ``production`` | ``retired``; ``validated`` -> ``production`` |
  ``retired``; ``production`` -> ``validated`` | ``retired``; ``retired`` is final.
* Only one version of a name is in production: promoting one demotes the current production
  version to ``validated`` (recorded in both histories). A partial unique index enforces it
  in the database, and the rows of the name are locked while promoting.
* Promotion to ``validated`` or ``production`` needs metrics, a succeeded evaluation when the
  model has one (its summary is then copied into the metrics: ``refresh_evaluation``), and an
  artefact whose weights still match its manifest.
* Every change records who and when: ``promoted_by``/``promoted_at`` for promotions,
  ``retired_at`` for retirements, and an entry in ``history``.

Functions receive a session and flush; the caller commits (``session_scope``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_shared.db.base import utcnow
from spinecloud_shared.db.models.common import JobStatus
from spinecloud_shared.db.models.evaluation import Evaluation
from spinecloud_shared.db.models.training import RegisteredModel, TrainingJob
from spinecloud_shared.errors import InvalidInputError, NotFoundError, SpineCloudError
from spinecloud_shared.models.manifest import (
    MANIFEST_FILE,
    Manifest,
    ModelState,
    read_manifest,
    sha256_file,
)

__all__ = [
    "TRANSITIONS",
    "RegistryConflictError",
    "get_model",
    "json_safe",
    "list_models",
    "manifest_digest",
    "production_model",
    "promote",
    "refresh_evaluation",
    "register_model",
    "retire",
]

logger = logging.getLogger(__name__)

#: Allowed state changes (``retired`` is final).
TRANSITIONS: Mapping[ModelState, frozenset[ModelState]] = {
    ModelState.DRAFT: frozenset({ModelState.VALIDATED, ModelState.PRODUCTION, ModelState.RETIRED}),
    ModelState.VALIDATED: frozenset({ModelState.PRODUCTION, ModelState.RETIRED}),
    ModelState.PRODUCTION: frozenset({ModelState.VALIDATED, ModelState.RETIRED}),
    ModelState.RETIRED: frozenset(),
}


class RegistryConflictError(SpineCloudError):
    """A registration or state change that contradicts the registry's rules or content."""

    code: ClassVar[str] = "registry_conflict"
    http_status: ClassVar[int] = 409


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON and JSONB have neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def manifest_digest(folder: Path) -> str:
    """sha256 of the artefact's ``spinecloud.json``."""
    return sha256_file(Path(folder) / MANIFEST_FILE)


def _write_state(folder: Path, manifest: Manifest, state: ModelState) -> str:
    """Rewrite the manifest's state (weights digests unchanged); returns the new digest.

    An artefact on read-only storage keeps its file: the registry stays authoritative and the
    failure is logged.
    """
    path = Path(folder) / MANIFEST_FILE
    if manifest.state is not state:
        try:
            path.write_text(manifest.model_copy(update={"state": state}).model_dump_json(indent=2))
        except OSError as exc:
            logger.warning("could not write state %s into %s: %s", state.value, path, exc)
    return sha256_file(path)


def register_model(
    session: Session,
    folder: Path,
    *,
    registered_by: str | None = None,
    training_job_id: str | None = None,
    evaluation_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    project_id: str | None = None,
) -> RegisteredModel:
    """Register the artefact in ``folder`` (manifest and weights verified) as a draft.

    ``metrics`` are merged over the manifest's own. Idempotent for the same folder. The
    version belongs to ``project_id``, or, when none is given, to its training job's project.
    """
    folder = Path(folder).resolve()
    manifest = read_manifest(folder, verify=True)
    existing = session.scalars(
        select(RegisteredModel).where(
            RegisteredModel.name == manifest.name, RegisteredModel.version == manifest.version
        )
    ).one_or_none()
    if existing is not None:
        if Path(existing.artifact_uri) != folder:
            raise RegistryConflictError(
                f"Model {manifest.ref} is already registered with the artefact at "
                f"{existing.artifact_uri}; give the new model another version.",
                model=manifest.ref,
            )
        return existing
    if project_id is None and training_job_id is not None:
        job = session.get(TrainingJob, training_job_id)
        project_id = job.project_id if job is not None else None
    now = utcnow()
    model = RegisteredModel(
        name=manifest.name,
        version=manifest.version,
        backend=manifest.backend.value,
        artifact_uri=str(folder),
        manifest_sha256=_write_state(folder, manifest, ModelState.DRAFT),
        state=ModelState.DRAFT,
        description=manifest.description or None,
        metrics=json_safe({**manifest.metrics, **(metrics or {})}),
        lineage=json_safe(manifest.lineage.model_dump(mode="json")),
        training_job_id=training_job_id,
        evaluation_id=evaluation_id,
        registered_by=registered_by,
        history=[_event(ModelState.DRAFT, None, registered_by, now, "registered")],
        project_id=project_id,
    )
    session.add(model)
    session.flush()
    return model


def _event(
    state: ModelState, before: ModelState | None, by: str | None, at: datetime, reason: str | None
) -> dict[str, Any]:
    return {
        "state": state.value,
        "from": before.value if before else None,
        "by": by,
        "at": at.isoformat(),
        "reason": reason,
    }


def list_models(
    session: Session, *, name: str | None = None, state: ModelState | None = None
) -> list[RegisteredModel]:
    """Registered versions, by name then registration time; optionally one name or state."""
    query = select(RegisteredModel).order_by(RegisteredModel.name, RegisteredModel.created_at)
    if name is not None:
        query = query.where(RegisteredModel.name == name)
    if state is not None:
        query = query.where(RegisteredModel.state == state)
    return list(session.scalars(query))


def get_model(session: Session, name: str, version: str) -> RegisteredModel:
    """The registered ``name@version``; NotFoundError otherwise."""
    model = session.scalars(
        select(RegisteredModel).where(
            RegisteredModel.name == name, RegisteredModel.version == version
        )
    ).one_or_none()
    if model is None:
        raise NotFoundError(f"Model {name}@{version} is not registered.", model=f"{name}@{version}")
    return model


def production_model(session: Session, name: str) -> RegisteredModel | None:
    """The version of ``name`` in production, if any (what a bare model name serves)."""
    return session.scalars(
        select(RegisteredModel).where(
            RegisteredModel.name == name, RegisteredModel.state == ModelState.PRODUCTION
        )
    ).one_or_none()


def _change_state(
    model: RegisteredModel, state: ModelState, by: str | None, now: datetime, reason: str | None
) -> None:
    """Record a state change on the row, its history and its artefact's manifest."""
    before = model.state
    model.history = [*model.history, _event(state, before, by, now, reason)]
    model.state = state
    folder = Path(model.artifact_uri)
    try:
        manifest = read_manifest(folder, verify=False)
    except SpineCloudError as exc:
        logger.warning("model %s@%s: %s", model.name, model.version, exc.message)
        return
    model.manifest_sha256 = _write_state(folder, manifest, state)


def _check_transition(model: RegisteredModel, to: ModelState) -> None:
    if to not in TRANSITIONS[model.state]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[model.state])) or "none"
        raise RegistryConflictError(
            f"Model {model.name}@{model.version} is {model.state.value}; it cannot become "
            f"{to.value} (allowed from {model.state.value}: {allowed}).",
            model=f"{model.name}@{model.version}",
        )


def refresh_evaluation(session: Session, model: RegisteredModel) -> RegisteredModel:
    """Copy the summary of the model's finished evaluation into its metrics (once).

    The metrics service fills the ``evaluations`` row asynchronously; its headline numbers
    (``dice``, ``hd95``, ...) then stand beside the training metrics, under ``evaluation`` and
    at the top level.
    """
    if model.evaluation_id is None or "evaluation" in (model.metrics or {}):
        return model
    evaluation = session.get(Evaluation, model.evaluation_id)
    if evaluation is None or evaluation.status is not JobStatus.SUCCEEDED:
        return model
    summary = dict(evaluation.summary or {})
    model.metrics = json_safe({**(model.metrics or {}), **summary, "evaluation": summary})
    session.flush()
    return model


def _check_evaluated(session: Session, model: RegisteredModel) -> None:
    """A model whose evaluation has not succeeded (yet) is not promoted."""
    if model.evaluation_id is None:
        return
    evaluation = session.get(Evaluation, model.evaluation_id)
    if evaluation is not None and evaluation.status is not JobStatus.SUCCEEDED:
        raise RegistryConflictError(
            f"Model {model.name}@{model.version} cannot be promoted: its evaluation is "
            f"{evaluation.status.value}.",
            model=f"{model.name}@{model.version}",
        )


def _check_promotable(model: RegisteredModel) -> None:
    """Promotion needs metrics and intact weights."""
    if not model.metrics:
        raise RegistryConflictError(
            f"Model {model.name}@{model.version} has no metrics; evaluate it before promoting.",
            model=f"{model.name}@{model.version}",
        )
    try:
        read_manifest(Path(model.artifact_uri), verify=True)
    except InvalidInputError as exc:
        raise RegistryConflictError(
            f"Model {model.name}@{model.version} cannot be promoted: {exc.message}",
            model=f"{model.name}@{model.version}",
        ) from exc


def promote(
    session: Session,
    name: str,
    version: str,
    *,
    to: ModelState = ModelState.PRODUCTION,
    by: str | None,
    reason: str | None = None,
    now: datetime | None = None,
) -> RegisteredModel:
    """Move ``name@version`` to ``to`` (rules in the module docstring); returns it."""
    if to is ModelState.RETIRED:
        return retire(session, name, version, by=by, reason=reason, now=now)
    moment = now or utcnow()
    # Lock every version of the name, so two promotions of one name run one after the other.
    rows = session.scalars(
        select(RegisteredModel).where(RegisteredModel.name == name).with_for_update()
    ).all()
    model = next((m for m in rows if m.version == version), None)
    if model is None:
        raise NotFoundError(f"Model {name}@{version} is not registered.", model=f"{name}@{version}")
    if model.state is to:
        return model
    _check_transition(model, to)
    _check_evaluated(session, model)
    refresh_evaluation(session, model)
    _check_promotable(model)
    if to is ModelState.PRODUCTION:
        for current in rows:
            if current.state is ModelState.PRODUCTION:
                _change_state(current, ModelState.VALIDATED, by, moment, f"superseded by {version}")
        session.flush()  # the old production row leaves the unique index first
    _change_state(model, to, by, moment, reason)
    model.promoted_by, model.promoted_at = by, moment
    session.flush()
    return model


def retire(
    session: Session,
    name: str,
    version: str,
    *,
    by: str | None,
    reason: str | None = None,
    now: datetime | None = None,
) -> RegisteredModel:
    """Retire ``name@version`` for good (a production version leaves production)."""
    moment = now or utcnow()
    model = get_model(session, name, version)
    if model.state is ModelState.RETIRED:
        return model
    _check_transition(model, ModelState.RETIRED)
    _change_state(model, ModelState.RETIRED, by, moment, reason)
    model.retired_at = moment
    session.flush()
    return model
