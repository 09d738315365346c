"""Catching up with Orthanc's change log: every ``StableStudy`` since the stored cursor.

The Lua callback is fast but lossy (the gateway may be down when a study becomes stable); this
poller is the safety net. It reads ``/changes`` from the ``last`` sequence stored in the
database (Orthanc 1.10 has no ``type=`` filter, so it filters ``ChangeType`` itself), records
each stable study with :func:`record_arrival` in its own transaction, and advances the cursor
after each study, so a crash repeats at most one (idempotent) arrival.

Run :func:`poll_once` from tests or a cron job, or :func:`run_forever` in the gateway's lifespan
(``SPINECLOUD_POLLER_ENABLED=true``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from anyio import to_thread
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.studies import repository
from spinecloud_gateway.studies.orthanc import Change, OrthancReader
from spinecloud_gateway.studies.service import record_arrival
from spinecloud_shared.errors import NotFoundError, SpineCloudError

__all__ = ["DEFAULT_CURSOR", "PollResult", "poll_once", "run_forever"]

logger = logging.getLogger(__name__)
DEFAULT_CURSOR = "orthanc"
STABLE_STUDY = "StableStudy"


@dataclass
class PollResult:
    """What one pass did."""

    changes_read: int = 0
    studies: int = 0
    jobs_created: int = 0
    last_seq: int = 0


def _advance(sessions: sessionmaker[Session], name: str, seq: int) -> None:
    with sessions() as session, session.begin():
        cursor = repository.cursor(session, name)
        cursor.last_seq = max(cursor.last_seq, seq)


def _handle(
    change: Change,
    *,
    sessions: sessionmaker[Session],
    reader: OrthancReader,
    settings: GatewaySettings,
    celery: Celery,
) -> int:
    """Record one stable study in its own transaction; the number of jobs it created."""
    try:
        with sessions() as session, session.begin():
            result = record_arrival(
                session,
                reader=reader,
                orthanc_study_id=change.orthanc_id,
                settings=settings,
                celery=celery,
            )
        return result.created
    except NotFoundError:  # deleted from Orthanc since: nothing to do
        return 0


def poll_once(
    *,
    sessions: sessionmaker[Session],
    reader: OrthancReader,
    settings: GatewaySettings,
    celery: Celery,
    cursor_name: str = DEFAULT_CURSOR,
    batch: int = 100,
) -> PollResult:
    """Read the change log to its end from the stored cursor; record every stable study."""
    with sessions() as session, session.begin():
        since = repository.cursor(session, cursor_name).last_seq
    result = PollResult(last_seq=since)
    while True:
        changes, last, done = reader.changes(since, batch)
        result.changes_read += len(changes)
        for change in changes:
            if change.change_type == STABLE_STUDY:
                result.jobs_created += _handle(
                    change, sessions=sessions, reader=reader, settings=settings, celery=celery
                )
                result.studies += 1
                _advance(sessions, cursor_name, change.seq)
        since = max(since, last)
        _advance(sessions, cursor_name, since)
        result.last_seq = since
        if done or not changes:
            break
    if result.studies:
        logger.info(
            "poller pass",
            extra={
                "changes": result.changes_read,
                "last_seq": since,
                "jobs_created": result.jobs_created,
            },
        )
    return result


async def run_forever(
    *,
    sessions: sessionmaker[Session],
    reader: OrthancReader,
    settings: GatewaySettings,
    celery: Celery,
) -> None:
    """Poll every ``settings.poller_interval_s`` until cancelled; failures are logged."""
    while True:
        try:
            await to_thread.run_sync(
                lambda: poll_once(
                    sessions=sessions, reader=reader, settings=settings, celery=celery
                )
            )
        except SpineCloudError as exc:
            logger.warning("poller pass failed: %s", exc.code)
        except Exception:
            logger.exception("poller pass failed")
        await asyncio.sleep(settings.poller_interval_s)
