"""Liveness, readiness (database, Redis, Orthanc) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from spinecloud_gateway.api.deps import StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.core.errors import problem_response

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Liveness or readiness answer."""

    status: str
    checks: dict[str, str] = {}


def _check_database(state: GatewayState) -> None:
    with state.sessions() as session:
        session.execute(text("SELECT 1"))


def _check_redis(state: GatewayState) -> None:
    client = redis.Redis.from_url(
        state.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        client.ping()
    finally:
        client.close()


def _check_orthanc(state: GatewayState) -> None:
    state.orthanc.ping()


@router.get("/healthz", summary="The process is alive")
def healthz() -> Health:
    """Always ok while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="The gateway can serve: database, Redis and Orthanc answer",
    responses={503: {"description": "A dependency is down (problem+json)"}},
)
def readyz(state: StateDep) -> Any:
    """Ready when every dependency answers; 503 problem naming the ones that do not."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", _check_database),
        ("redis", _check_redis),
        ("orthanc", _check_orthanc),
    ):
        try:
            check(state)
            checks[name] = "ok"
        except Exception as exc:  # every failure is reported, none raised
            checks[name] = f"unavailable ({type(exc).__name__})"
    if all(value == "ok" for value in checks.values()):
        return Health(status="ready", checks=checks)
    problem = {
        "type": "https://spinecloud.invalid/problems/not_ready",
        "title": "not ready",
        "detail": "A dependency of the gateway does not answer.",
        "code": "not_ready",
        "checks": checks,
    }
    return problem_response(problem, 503)


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep) -> Response:
    """Prometheus exposition of this application's registry."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
