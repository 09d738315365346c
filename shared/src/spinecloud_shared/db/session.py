"""Engines and sessions: one engine per URL per process, sessions committed at the edges.

Services receive a :class:`~sqlalchemy.orm.Session` and only ``flush``; whoever opened the
session (a request dependency, a task, a command) commits or rolls back, usually through
:func:`session_scope`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from spinecloud_shared.settings import get_settings

__all__ = [
    "dispose_engines",
    "get_engine",
    "get_sessionmaker",
    "normalize_url",
    "resolve_url",
    "session_scope",
]

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}

#: How long SQLite waits for another writer before raising "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Route plain ``postgresql://`` (and ``postgres://``) URLs to psycopg 3, our only driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def resolve_url(url: str | None = None) -> str:
    """The given URL, or the settings' database URL, normalised."""
    return normalize_url(url if url is not None else get_settings().resolved_database_url)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Turn on foreign keys (off by default in SQLite), WAL and a busy timeout per connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _create_engine(url: URL) -> Engine:
    """A new engine; SQLite files get their folder created and the pragmas above."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: settings), created on first use."""
    key = resolve_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(make_url(key))
        return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to :func:`get_engine` for ``url``."""
    key = resolve_url(url)
    engine = get_engine(key)
    with _lock:
        factory = _sessionmakers.get(key)
        if factory is None:
            factory = _sessionmakers[key] = sessionmaker(engine, expire_on_commit=False)
        return factory


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines(url: str | None = None, *, close: bool = True) -> None:
    """Forget cached engines (all, or the one for ``url``) and release their connections.

    ``close=False`` is for a freshly forked child (a Celery prefork worker): it drops the
    parent's pooled connections without closing sockets the parent still uses.
    """
    with _lock:
        keys = list(_engines) if url is None else [resolve_url(url)]
        for key in keys:
            engine = _engines.pop(key, None)
            _sessionmakers.pop(key, None)
            if engine is not None:
                engine.dispose(close=close)
