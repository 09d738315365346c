"""``spinecloud worker``: run a Celery worker for one or more SpineCloud queues."""

from __future__ import annotations

from typing import Annotated

import typer

from spinecloud_shared.task_names import QUEUES

__all__ = ["node_name", "worker"]


def node_name(queues: list[str] | tuple[str, ...], name: str | None = None) -> str:
    """The Celery node name of a worker: ``name``, or its queues joined by ``-`` at the host.

    Celery expands ``%h`` to the host name. Workers on one host need distinct names (one per
    queue as ``spinecloud stack up`` starts them, one per GPU on a training node), or Celery
    warns of duplicate nodes and remote control answers cannot be told apart.
    """
    return name or f"{'-'.join(queues)}@%h"


def worker(
    queue: Annotated[
        list[str], typer.Option("--queue", "-q", help=f"Queue(s) to consume: {', '.join(QUEUES)}")
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Processes (one per GPU)")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="Celery node name, unique per host (%h: host name); default QUEUES@%h, "
            "e.g. training-gpu1@%h for a second training worker on one node",
        ),
    ] = None,
) -> None:
    """Consume jobs from the given queues until stopped (acks late, one job at a time)."""
    unknown = sorted(set(queue) - set(QUEUES))
    if unknown:
        raise typer.BadParameter(f"unknown queue(s) {unknown}; choose from {list(QUEUES)}")
    from spinecloud_shared.db.migrate import upgrade
    from spinecloud_shared.queue import celery_app

    upgrade()
    celery_app.worker_main(
        ["worker", "-Q", ",".join(queue), "--concurrency", str(concurrency),
         "--loglevel", loglevel, "--prefetch-multiplier", "1", "-n", node_name(queue, name)]
    )  # fmt: skip
