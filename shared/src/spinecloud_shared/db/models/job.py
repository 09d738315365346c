"""Inference jobs: one CT series segmented by one model version, exactly once.

The row is the whole contract with the inference worker: the task carries only ``job_id``.
``(series_instance_uid, model_name, model_version)`` is unique, so a study that arrives twice,
or a client that asks twice, finds the existing job instead of creating a second one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin
from spinecloud_shared.db.models.common import JobMixin
from spinecloud_shared.db.models.study import Series

__all__ = ["InferenceJob"]


class InferenceJob(UUIDPrimaryKeyMixin, TimestampMixin, JobMixin, Base):
    """Segment one series with one model version; results in ``findings`` and ``outputs``."""

    __tablename__ = "inference_jobs"
    __table_args__ = (UniqueConstraint("series_instance_uid", "model_name", "model_version"),)

    series_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("series.id", ondelete="CASCADE"), index=True
    )
    #: Copies of the series' UIDs and project, so lists filter without joins.
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    model_name: Mapped[str] = mapped_column(String(100), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    #: Larger runs first (Celery priority 0-9 on the inference queue).
    priority: Mapped[int] = mapped_column(Integer, default=5)
    #: Why the job exists: "orthanc" (routing rule), "api" (a person or program asked).
    source: Mapped[str] = mapped_column(String(16), default="api")
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Seconds per stage, e.g. {"fetch_s": 1.2, "inference_s": 20.5, "store_s": 0.8}.
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Per-vertebra results: labels found, centroids (mm), volumes (ml).
    findings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Where results are: {"seg_series_instance_uid": ..., "paths": {...}}.
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)

    series: Mapped[Series] = relationship(lazy="raise")
