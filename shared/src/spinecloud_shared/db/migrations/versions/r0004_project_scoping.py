"""Project scoping for training jobs, registered models and evaluations.

Each table gains ``project_id`` with the same type and meaning as on ``studies`` and
``inference_jobs``: a nullable reference to ``projects.id`` (``ON DELETE SET NULL``), NULL
meaning unassigned (seen only by unscoped callers: admins and unscoped tokens).

Rows that exist before this revision get the site's default project when
``SPINECLOUD_DEFAULT_PROJECT`` names one at upgrade time (the project is created if it is
missing, as the gateway does for arriving studies); otherwise they stay unassigned.

The revision id is ``r0004`` (not ``0004``): later revisions chain on that string.

Revision ID: r0004
Revises: 0003
Create Date: 2026-12-02 00:50:00
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "r0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The tables that become project-scoped.
TABLES = ("training_jobs", "registered_models", "evaluations")


def _default_project_id(connection: sa.Connection) -> str | None:
    """The id of the project named by ``SPINECLOUD_DEFAULT_PROJECT`` (created if missing)."""
    name = (os.environ.get("SPINECLOUD_DEFAULT_PROJECT") or "").strip()
    if not name:
        return None
    projects = sa.table(
        "projects",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    found = connection.execute(sa.select(projects.c.id).where(projects.c.name == name)).scalar()
    if found is not None:
        return str(found)
    new_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    connection.execute(
        projects.insert().values(id=new_id, name=name, created_at=now, updated_at=now)
    )
    return new_id


def upgrade() -> None:
    """Add ``project_id`` (indexed, foreign key) to each table; backfill the default project."""
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.String(length=36), nullable=True))
            batch.create_index(batch.f(f"ix_{table}_project_id"), ["project_id"], unique=False)
            batch.create_foreign_key(
                batch.f(f"fk_{table}_project_id_projects"),
                "projects",
                ["project_id"],
                ["id"],
                ondelete="SET NULL",
            )
    project_id = _default_project_id(op.get_bind())
    if project_id is not None:
        for table in TABLES:
            rows = sa.table(table, sa.column("project_id", sa.String))
            op.execute(
                rows.update().where(rows.c.project_id.is_(None)).values(project_id=project_id)
            )


def downgrade() -> None:
    """Drop the columns (their indexes and foreign keys first)."""
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(batch.f(f"fk_{table}_project_id_projects"), type_="foreignkey")
            batch.drop_index(batch.f(f"ix_{table}_project_id"))
            batch.drop_column("project_id")
