"""Initial schema: evaluations and their benchmark table rows.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 11:05:32
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JOB_STATUS = sa.Enum(
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    name="job_status",
    native_enum=False,
    create_constraint=True,
    length=16,
)


def upgrade() -> None:
    """Create ``evaluations`` and ``evaluation_rows``."""
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("model_ref", sa.String(length=200), nullable=True),
        sa.Column("dataset_id", sa.String(length=36), nullable=True),
        sa.Column("split", sa.String(length=64), nullable=True),
        sa.Column("pred_dir", sa.Text(), nullable=False),
        sa.Column("ref_dir", sa.Text(), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("summary", JSON, nullable=True),
        sa.Column("report_dir", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("finished_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("status", JOB_STATUS, nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_dataset_id"), "evaluations", ["dataset_id"])
    op.create_index(op.f("ix_evaluations_status"), "evaluations", ["status"])

    op.create_table(
        "evaluation_rows",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("evaluation_id", sa.String(length=36), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("row", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name=op.f("fk_evaluation_rows_evaluation_id_evaluations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_rows")),
    )
    op.create_index(
        op.f("ix_evaluation_rows_evaluation_id"),
        "evaluation_rows",
        ["evaluation_id", "table_name", "position"],
    )


def downgrade() -> None:
    """Drop both tables (rows first: they reference evaluations)."""
    op.drop_index(op.f("ix_evaluation_rows_evaluation_id"), table_name="evaluation_rows")
    op.drop_table("evaluation_rows")
    op.drop_index(op.f("ix_evaluations_status"), table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_dataset_id"), table_name="evaluations")
    op.drop_table("evaluations")
