"""Training jobs and the model registry.

A ``TrainingJob`` is the whole contract with the training worker (the task carries only
``job_id``): what to train (backend, preset, dataset, model name and version, parameters), how
far it got (``progress``), and what came out (``result``: artefact, metrics, excluded cases,
the registered model and its evaluation). ``cancel_requested`` is how a person stops a run:
the worker checkpoints and marks the job cancelled.

A ``RegisteredModel`` is one model version known to the platform: where its artefact lies, the
sha256 of its manifest, its state (``ModelState``: draft, validated, production, retired) and
the history of its state changes (who and when). At most one version of a name is in
production, which a partial unique index enforces in the database itself.

Both carry ``project_id`` with the same meaning as on studies and inference jobs: the project
whose members see the row; NULL means unassigned (only unscoped callers see it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column

from spinecloud_shared.db.base import Base, JSONType, TimestampMixin, UUIDPrimaryKeyMixin
from spinecloud_shared.db.models.common import JobMixin
from spinecloud_shared.models.manifest import ModelState

__all__ = ["RegisteredModel", "TrainingJob", "model_state_type"]


def model_state_type() -> Enum:
    """A column type for :class:`ModelState`: a short string with a CHECK constraint."""
    return Enum(
        ModelState,
        name="model_state",
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class TrainingJob(UUIDPrimaryKeyMixin, TimestampMixin, JobMixin, Base):
    """Train one model version on one dataset; progress and result for the gateway to show."""

    __tablename__ = "training_jobs"
    #: One job per model version it produces: two identical requests at the same moment
    #: cannot both create a job (the second finds the first; ``spinecloud_gateway.trainings``).
    __table_args__ = (
        Index("uq_training_jobs_model_version", "model_name", "model_version", unique=True),
    )

    #: ``segresnet`` or ``nnunet``.
    backend: Mapped[str] = mapped_column(String(32))
    #: SegResNet preset (``demo``, ``paper``); nnU-Net ignores it.
    preset: Mapped[str] = mapped_column(String(32), default="demo")
    #: ``phantoms`` or a dataset folder (TotalSegmentator or VerSe layout).
    dataset: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(100), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    #: Backend options: iterations, epochs, seed, phantom counts, fold, device...
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Latest progress: phase, iteration, total, epoch, loss, val_dice, eta_s.
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Outcome: artefact path, metrics, excluded cases, registered model and evaluation ids.
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(255))
    #: The project that owns the run (NULL: unassigned, seen only by unscoped callers).
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )


class RegisteredModel(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """One registered model version and where it stands in its life cycle."""

    __tablename__ = "registered_models"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(
            "uq_registered_models_production_name",
            "name",
            unique=True,
            postgresql_where=sql_text("state = 'production'"),
            sqlite_where=sql_text("state = 'production'"),
        ),
    )

    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(64))
    #: The manifest's backend: ``monai_bundle`` or ``nnunet``.
    backend: Mapped[str] = mapped_column(String(32))
    #: The artefact folder (holding ``spinecloud.json``) as an absolute path.
    artifact_uri: Mapped[str] = mapped_column(Text)
    #: sha256 of the artefact's ``spinecloud.json`` as last written by the registry.
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[ModelState] = mapped_column(model_state_type(), default=ModelState.DRAFT)
    description: Mapped[str | None] = mapped_column(Text)
    #: Headline numbers: the manifest's training metrics, then the evaluation's summary.
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The manifest's lineage (parent, dataset, split, config, code version, command).
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_job_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True
    )
    evaluation_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("evaluations.id", ondelete="SET NULL")
    )
    registered_by: Mapped[str | None] = mapped_column(String(255))
    promoted_by: Mapped[str | None] = mapped_column(String(255))
    promoted_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    #: Every state change: ``[{"state", "from", "by", "at", "reason"}]``, oldest first.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    #: The project that owns the version (NULL: unassigned, seen only by unscoped callers).
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
