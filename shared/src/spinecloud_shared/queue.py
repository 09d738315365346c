"""The Celery application every SpineCloud worker runs, and how to enqueue work on it.

Start a worker with::

    celery -A spinecloud_shared.queue:celery_app worker -Q metrics --concurrency 1

Broker and result backend are ``Settings.redis_url``. Tasks are acknowledged late and
rejected back to the queue if their worker process dies, so a killed worker loses nothing: the
message runs again. ``shared`` never imports a service; the task modules are found through the
``spinecloud.tasks`` entry-point group, which each service package declares::

    [project.entry-points."spinecloud.tasks"]
    metrics = "spinecloud_metrics.tasks"

plus the comma-separated module list in ``SPINECLOUD_EXTRA_TASK_MODULES``. Setting
``SPINECLOUD_TASK_MODULES`` (comma-separated, may be empty) replaces the entry-point discovery,
so a test worker loads only test tasks whatever services are installed beside it.

Visibility timeout. With Redis, an unacknowledged message goes back to its queue when its
worker disappears without a goodbye (SIGKILL of the whole worker, node loss) only after
``visibility_timeout`` seconds: a new worker restores such messages when it starts and
periodically thereafter. A task that runs longer than the timeout is also handed to a second
worker while the first still runs, so the timeout must exceed the longest task (training).
Set it with ``SPINECLOUD_BROKER_VISIBILITY_TIMEOUT_S`` (default 12 hours). A pool process
killed on its own (e.g. by the OOM killer) is different: its task is requeued at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from spinecloud_shared.db.session import dispose_engines
from spinecloud_shared.settings import Settings, get_settings
from spinecloud_shared.task_names import QUEUES, queue_for

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT_S",
    "EXTRA_TASK_MODULES_ENV",
    "TASK_ENTRY_POINT_GROUP",
    "TASK_MODULES_ENV",
    "VISIBILITY_TIMEOUT_ENV",
    "celery_app",
    "create_celery_app",
    "enqueue",
    "enqueue_after_commit",
    "route_by_name",
    "task_modules",
    "visibility_timeout_s",
]

TASK_ENTRY_POINT_GROUP = "spinecloud.tasks"
TASK_MODULES_ENV = "SPINECLOUD_TASK_MODULES"
EXTRA_TASK_MODULES_ENV = "SPINECLOUD_EXTRA_TASK_MODULES"
VISIBILITY_TIMEOUT_ENV = "SPINECLOUD_BROKER_VISIBILITY_TIMEOUT_S"
DEFAULT_VISIBILITY_TIMEOUT_S = 12 * 3600
_PENDING_KEY = "spinecloud_pending_tasks"


def _split_modules(value: str) -> list[str]:
    """Module names from a comma-separated list, blanks dropped."""
    return [name.strip() for name in value.split(",") if name.strip()]


def task_modules() -> list[str]:
    """Task modules: entry points (or their env override), then the env's extra modules."""
    override = os.environ.get(TASK_MODULES_ENV)
    if override is not None:
        modules = _split_modules(override)
    else:
        modules = [ep.value for ep in entry_points(group=TASK_ENTRY_POINT_GROUP)]
    modules += _split_modules(os.environ.get(EXTRA_TASK_MODULES_ENV, ""))
    return list(dict.fromkeys(modules))


def visibility_timeout_s() -> int:
    """The broker visibility timeout in seconds, from the environment or the default."""
    value = os.environ.get(VISIBILITY_TIMEOUT_ENV)
    return int(value) if value else DEFAULT_VISIBILITY_TIMEOUT_S


def route_by_name(name: str, *_args: Any, **_kwargs: Any) -> dict[str, str] | None:
    """Celery router: ``spinecloud.<queue>.<action>`` goes to queue ``<queue>``."""
    queue = queue_for(name)
    return {"queue": queue, "routing_key": queue} if queue else None


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A configured Celery application (broker, backend, queues, reliability options)."""
    settings = settings or get_settings()
    app = Celery("spinecloud", include=task_modules())
    transport_options = {"visibility_timeout": visibility_timeout_s()}
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        task_routes=(route_by_name,),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Reliability: ack after the task ran, requeue if the pool process dies, and take one
        # message at a time so a long task never holds others hostage.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # With late acks, tasks cut off by a lost broker connection are redelivered anyway;
        # cancelling them avoids running the same job twice at once.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        enable_utc=True,
        timezone="UTC",
    )
    return app


@worker_process_init.connect
def _forget_parent_engines(**_kwargs: Any) -> None:
    """A forked pool process must not reuse database connections opened by its parent."""
    dispose_engines(close=False)


def enqueue(
    name: str,
    kwargs: Mapping[str, Any],
    queue: str | None = None,
    *,
    app: Celery | None = None,
) -> str:
    """Send task ``name`` with keyword arguments; returns the Celery task id.

    Call it only after the database transaction that created the job row has committed (or
    use :func:`enqueue_after_commit`), so that the worker never looks for a row not yet there.
    ``queue`` defaults to the one in the task name.
    """
    target = queue or queue_for(name)
    if target is None:
        raise ValueError(f"task {name!r} names no known queue; pass queue= explicitly")
    result = (app or celery_app).send_task(name, kwargs=dict(kwargs), queue=target)
    return str(result.id)


def enqueue_after_commit(
    session: Session,
    name: str,
    kwargs: Mapping[str, Any],
    queue: str | None = None,
    *,
    app: Celery | None = None,
) -> None:
    """Enqueue ``name`` once ``session`` commits; nothing is sent if it rolls back."""
    pending: list[tuple[str, dict[str, Any], str | None, Celery | None]]
    pending = session.info.setdefault(_PENDING_KEY, [])
    pending.append((name, dict(kwargs), queue, app))
    if not event.contains(session, "after_commit", _send_pending):
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_rollback", _drop_pending)


def _send_pending(session: Session) -> None:
    """After a commit: send every task queued on this session."""
    pending = session.info.pop(_PENDING_KEY, [])
    for name, kwargs, queue, app in pending:
        enqueue(name, kwargs, queue, app=app)


def _drop_pending(session: Session) -> None:
    """After a rollback: forget the tasks, their rows no longer exist."""
    session.info.pop(_PENDING_KEY, None)


#: The application ``celery -A spinecloud_shared.queue:celery_app worker`` runs.
celery_app = create_celery_app()
