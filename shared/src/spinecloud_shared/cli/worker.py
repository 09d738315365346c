"""``spinecloud worker``: run a Celery worker for one or more SpineCloud queues."""

from __future__ import annotations

from typing import Annotated

import typer

from spinecloud_shared.task_names import QUEUES


def worker(
    queue: Annotated[
        list[str], typer.Option("--queue", "-q", help=f"Queue(s) to consume: {', '.join(QUEUES)}")
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Processes (one per GPU)")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
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
         "--loglevel", loglevel, "--prefetch-multiplier", "1"]
    )  # fmt: skip
