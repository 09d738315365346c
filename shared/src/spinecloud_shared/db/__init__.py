"""Database layer shared by every service: ORM base and models, sessions, migrations.

Commit at the edges: services receive a session and flush; the caller that opened it
(request, task, command) commits through :func:`session_scope`.
"""

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin, utcnow
from spinecloud_shared.db.migrate import upgrade
from spinecloud_shared.db.session import (
    dispose_engines,
    get_engine,
    get_sessionmaker,
    session_scope,
)

__all__ = [
    "Base",
    "TimestampMixin",
    "UUIDPrimaryKeyMixin",
    "dispose_engines",
    "get_engine",
    "get_sessionmaker",
    "session_scope",
    "upgrade",
    "utcnow",
]
