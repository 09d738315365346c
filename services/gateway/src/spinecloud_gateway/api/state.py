"""What the application holds for its lifetime, built once in :func:`create_app`."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from spinecloud_gateway.audit.service import AuditRecorder
from spinecloud_gateway.auth.oidc import OidcVerifier
from spinecloud_gateway.core.metrics import GatewayMetrics
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.studies.orthanc import OrthancReader

__all__ = ["GatewayState"]


@dataclass
class GatewayState:
    """Settings, database sessions, the Celery client, the OIDC verifier, HTTP clients."""

    settings: GatewaySettings
    sessions: sessionmaker[Session]
    celery: Celery
    verifier: OidcVerifier | None
    audit: AuditRecorder
    metrics: GatewayMetrics
    orthanc: OrthancReader
    #: Async client to Orthanc's DICOMweb root, opened in the lifespan (streaming proxy).
    dicomweb: httpx.AsyncClient | None = None
