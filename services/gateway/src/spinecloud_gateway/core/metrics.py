"""Prometheus metrics: request latency, and at scrape time queue depths and job counts.

Each application gets its own registry, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spinecloud_shared.db.models import InferenceJob
from spinecloud_shared.task_names import QUEUES

__all__ = ["GatewayMetrics", "StateCollector"]

logger = logging.getLogger(__name__)


class StateCollector(Collector):
    """Reads queue depths (Redis list lengths) and job counts (database) when scraped."""

    def __init__(self, sessions: sessionmaker[Session], redis_url: str) -> None:
        self.sessions = sessions
        self.redis_url = redis_url

    def collect(self) -> Iterator[Metric]:
        """Yield the two gauges; a server that does not answer leaves its gauge empty."""
        depth = GaugeMetricFamily(
            "spinecloud_queue_depth", "Messages waiting in a Celery queue", labels=["queue"]
        )
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            try:
                for queue in QUEUES:
                    depth.add_metric([queue], float(client.llen(queue)))
            finally:
                client.close()
        except redis.RedisError as exc:
            logger.warning("queue depth unavailable: %s", type(exc).__name__)
        yield depth
        jobs = GaugeMetricFamily(
            "spinecloud_inference_jobs",
            "Inference jobs by status and failure code",
            labels=["status", "error_code"],
        )
        query = select(InferenceJob.status, InferenceJob.error_code, func.count()).group_by(
            InferenceJob.status, InferenceJob.error_code
        )
        try:
            with self.sessions() as session:
                for status, code, count in session.execute(query):
                    jobs.add_metric([str(status), code or ""], float(count))
        except Exception as exc:  # a scrape must not fail because the database is down
            logger.warning("job counts unavailable: %s", type(exc).__name__)
        yield jobs


class GatewayMetrics:
    """The registry of one application and its request-latency histogram."""

    def __init__(self, sessions: sessionmaker[Session], redis_url: str) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "spinecloud_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(StateCollector(sessions, redis_url))
