"""Evaluations: a benchmark run of predictions against references, and its result tables.

The metrics service creates and fills these; the gateway lists them and serves the tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin
from spinecloud_shared.db.models.common import JobMixin

__all__ = ["Evaluation", "EvaluationRow"]


class Evaluation(UUIDPrimaryKeyMixin, TimestampMixin, JobMixin, Base):
    """One evaluation job: which predictions, which references, with what, and its summary."""

    __tablename__ = "evaluations"

    name: Mapped[str] = mapped_column(String(200))
    #: The evaluated model as ``name:version`` (absent when folders are compared directly).
    model_ref: Mapped[str | None] = mapped_column(String(200))
    dataset_id: Mapped[str | None] = mapped_column(String(36), index=True)
    split: Mapped[str | None] = mapped_column(String(64))
    pred_dir: Mapped[str] = mapped_column(Text)
    ref_dir: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Headline numbers (e.g. mean Dice, identification rate) once the job succeeded.
    summary: Mapped[dict[str, Any] | None]
    report_dir: Mapped[str | None] = mapped_column(Text)
    #: The project whose members see it (NULL: unassigned, seen only by unscoped callers).
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )

    rows: Mapped[list[EvaluationRow]] = relationship(
        back_populates="evaluation",
        lazy="raise",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(EvaluationRow.table_name, EvaluationRow.position)",
    )


class EvaluationRow(UUIDPrimaryKeyMixin, Base):
    """One row of one benchmark table (``per_class``, ``per_region``, ``per_case``, ``overall``).

    ``position`` keeps the table's row order; ``row`` holds the columns as a JSON object.
    """

    __tablename__ = "evaluation_rows"
    __table_args__ = (Index(None, "evaluation_id", "table_name", "position"),)

    evaluation_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("evaluations.id", ondelete="CASCADE")
    )
    table_name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer, default=0)
    row: Mapped[dict[str, Any]]

    evaluation: Mapped[Evaluation] = relationship(back_populates="rows", lazy="raise")
