"""Alembic environment: migrate ``Base.metadata`` on the configured URL or given connection.

Run through :func:`spinecloud_shared.db.migrate.upgrade`, which builds the configuration in
code. SQLite gets batch mode so that ``ALTER`` operations are emulated by table copies.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, create_engine, pool

import spinecloud_shared.db.models  # noqa: F401 - registers every table on Base.metadata
from spinecloud_shared.db.base import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render application column types as plain SQLAlchemy types in generated revisions.

    Revisions must not import application code: ``UTCDateTime`` becomes
    ``sa.DateTime(timezone=True)``, which is what it stores.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    """Configure the migration context with SpineCloud's common options."""
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    url = config.get_main_option("sqlalchemy.url")
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    """Run the migrations on one open connection, in one transaction."""
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection, or a short-lived engine of our own."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not configured"
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as own_connection:
            _run_on(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
