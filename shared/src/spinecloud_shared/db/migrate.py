"""Bring a database to the latest schema with Alembic, from code, safely from many replicas.

The Alembic environment ships inside this package (``migrations/``), and the Alembic
configuration is built here, so an image needs no ``alembic.ini`` on disk. On PostgreSQL the
upgrade runs under a session-level advisory lock: when several gateway or worker replicas start
at once, one migrates and the others wait, then find the schema at head and do nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url

from spinecloud_shared.db.session import get_engine, resolve_url

__all__ = ["MIGRATIONS_DIR", "MIGRATION_LOCK_ID", "alembic_config", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Key of the PostgreSQL advisory lock held while migrating (any fixed 64-bit integer;
#: this one is "SPINECLD" read as ASCII bytes).
MIGRATION_LOCK_ID = int.from_bytes(b"SPINECLD", "big") & 0x7FFF_FFFF_FFFF_FFFF


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic configuration for SpineCloud's packaged migrations.

    When ``connection`` is given, ``env.py`` migrates through it instead of opening its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # New revision files start with "r" so that they are importable module names.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    # ConfigParser interpolation: a literal "%" in a password must be doubled.
    config.set_main_option("sqlalchemy.url", resolve_url(url).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (default: settings) to ``revision``."""
    resolved = resolve_url(url)
    if make_url(resolved).get_backend_name() == "postgresql":
        _upgrade_postgresql_locked(resolved, revision)
    else:
        command.upgrade(alembic_config(resolved), revision)


def _upgrade_postgresql_locked(url: str, revision: str) -> None:
    """Run the upgrade on one connection that holds the migration advisory lock throughout."""
    with get_engine(url).connect() as connection:
        connection.execute(select(func.pg_advisory_lock(MIGRATION_LOCK_ID)))
        connection.commit()  # the lock is session-level: it outlives this transaction
        try:
            command.upgrade(alembic_config(url, connection), revision)
            connection.commit()
        finally:
            connection.rollback()
            connection.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK_ID)))
            connection.commit()
