"""One training job per model version (``uq_training_jobs_model_version``).

Before this revision two identical training requests arriving together could both create a
job for the same model version. Rows that already break the rule are not changed here: the
upgrade stops and names them, because which of two runs produced the registered version is
for an operator to decide (cancel or delete the other one, then upgrade again).

Revision ID: r0006
Revises: r0005
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "r0006"
down_revision: str | None = "r0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_training_jobs_model_version"


def upgrade() -> None:
    """Refuse existing duplicates, naming each model version and its job count, then create
    the unique index."""
    duplicates = op.get_bind().execute(
        sa.text(
            "SELECT model_name, model_version, COUNT(*) FROM training_jobs "
            "GROUP BY model_name, model_version HAVING COUNT(*) > 1"
        )
    )
    found = [f"{name}@{version} ({count} jobs)" for name, version, count in duplicates]
    if found:
        raise RuntimeError(
            "Cannot make training jobs unique per model version: "
            + ", ".join(found)
            + ". Delete the extra training_jobs rows, then run the migration again."
        )
    op.create_index(INDEX, "training_jobs", ["model_name", "model_version"], unique=True)


def downgrade() -> None:
    """Drop the unique index."""
    op.drop_index(INDEX, table_name="training_jobs")
