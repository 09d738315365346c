"""The gateway application factory.

``create_app(settings)`` wires settings, database, Celery, OIDC, Orthanc, middleware, error
handlers and routers; the lifespan migrates the database, opens the DICOMweb client and, when
enabled, runs the ``/changes`` poller. ``uvicorn --factory spinecloud_gateway.app:app_from_env``
builds it from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from anyio import to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from spinecloud_gateway.api.routes import (
    audit,
    datasets,
    dicomweb,
    evaluations,
    health,
    internal,
    jobs,
    models,
    studies,
    trainings,
)
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import AuditRecorder
from spinecloud_gateway.auth.oidc import OidcVerifier
from spinecloud_gateway.core.errors import install_error_handlers
from spinecloud_gateway.core.logging import configure_logging
from spinecloud_gateway.core.metrics import GatewayMetrics
from spinecloud_gateway.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from spinecloud_gateway.poller import run_forever
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.studies.orthanc import OrthancReader
from spinecloud_shared.db import migrate
from spinecloud_shared.db.session import get_sessionmaker
from spinecloud_shared.queue import create_celery_app

__all__ = ["app_from_env", "create_app"]


def _verifier(settings: GatewaySettings) -> OidcVerifier | None:
    if not (settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url):
        return None
    return OidcVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        jwks_url=settings.oidc_jwks_url,
        algorithms=settings.oidc_algorithms,
        cache_s=settings.oidc_jwks_cache_s,
        leeway_s=settings.oidc_leeway_s,
    )


def _dicomweb_client(settings: GatewaySettings) -> httpx.AsyncClient:
    password = settings.orthanc_password.get_secret_value() if settings.orthanc_password else None
    auth = (settings.orthanc_username, password) if settings.orthanc_username and password else None
    return httpx.AsyncClient(
        base_url=settings.orthanc_url.rstrip("/") + "/dicom-web",
        auth=auth,
        timeout=httpx.Timeout(settings.orthanc_timeout_s, connect=10.0),
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: GatewayState = app.state.gateway
    if state.settings.migrate_on_startup:
        await to_thread.run_sync(migrate.upgrade, state.settings.resolved_database_url)
    state.dicomweb = _dicomweb_client(state.settings)
    poller = None
    if state.settings.poller_enabled:
        poller = asyncio.create_task(
            run_forever(
                sessions=state.sessions,
                reader=state.orthanc,
                settings=state.settings,
                celery=state.celery,
            )
        )
    try:
        yield
    finally:
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await state.dicomweb.aclose()
        state.dicomweb = None


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """A gateway application for ``settings`` (default: read from the environment)."""
    settings = settings or GatewaySettings()
    sessions = get_sessionmaker(settings.resolved_database_url)
    metrics = GatewayMetrics(sessions, settings.redis_url)
    state = GatewayState(
        settings=settings,
        sessions=sessions,
        celery=create_celery_app(settings),
        verifier=_verifier(settings),
        audit=AuditRecorder(sessions),
        metrics=metrics,
        orthanc=OrthancReader.from_settings(settings),
    )
    app = FastAPI(
        title="SpineCloud gateway",
        version="0.1.0",
        summary="Inference jobs, audit log and an authenticated DICOMweb proxy.",
        lifespan=_lifespan,
    )
    app.state.gateway = state
    install_error_handlers(app)
    for router in (
        health.router,
        jobs.router,
        studies.router,
        audit.router,
        internal.router,
        dicomweb.router,
        datasets.router,
        models.router,
        trainings.router,
        evaluations.router,
    ):
        app.include_router(router)

    def limit_for(path: str) -> int:
        if path.startswith("/dicom-web/"):
            return settings.max_stow_bytes
        return settings.max_request_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    if settings.viewer_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.viewer_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Content-Type", "Content-Location"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """The application configured from ``SPINECLOUD_*`` variables, with JSON logging."""
    settings = GatewaySettings()
    configure_logging(settings.log_level)
    return create_app(settings)
