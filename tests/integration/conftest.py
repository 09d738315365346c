"""Integration fixtures: Orthanc from the Debian package (one for the session, one per module
that needs its own), a migrated PostgreSQL database per module (``gateway_db``), and the
registry API modules' gateway client, site storage and tokens."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from spinecloud_gateway.app import create_app
from spinecloud_shared.db.models import Role
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from tests.fixtures.services import PostgresDatabases
from tests.integration.test_gateway_support import (
    fresh_database,
    gateway_settings,
    make_token,
)


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip locally, fail in CI, when it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; scripts/bootstrap.sh installs it")
    pytest.skip(f"{name} is not installed (scripts/bootstrap.sh installs it)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """A real Orthanc 1.10 with DICOMweb and GDCM, on free loopback ports, for this session."""
    require_tool("Orthanc")
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc"))
    with server:
        yield server


@pytest.fixture()
def orthanc_client(orthanc: LocalOrthanc) -> OrthancClient:
    """A REST client for the session's Orthanc."""
    return OrthancClient(orthanc.url, orthanc.username, orthanc.password)


@pytest.fixture(scope="module")
def private_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """An Orthanc of the test module's own, for modules that count or break what is stored."""
    require_tool("Orthanc")
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture()
def private_client(private_orthanc: LocalOrthanc) -> OrthancClient:
    """A REST client for the module's own Orthanc."""
    return OrthancClient(private_orthanc.url, private_orthanc.username, private_orthanc.password)


@pytest.fixture()
def storescu() -> str:
    """The dcmtk C-STORE client."""
    return require_tool("storescu")


@pytest.fixture(scope="module")
def gateway_db(postgres_databases: PostgresDatabases) -> str:
    """The test module's own PostgreSQL database, migrated to head (modules keep data apart)."""
    return fresh_database(postgres_databases)


# ---------------------------------------------------------- registry API modules' fixtures
# For the models, trainings and evaluations API modules (other modules define their own
# ``client``, ``site`` or ``tokens``, which take precedence): each names its projects with a
# module constant ``PROJECT`` ("models" gives the projects "models-a" and "models-b").


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site's storage (data_dir) for the module's gateway, with empty pred/ and ref/."""
    root = tmp_path_factory.mktemp("site")
    for folder in ("pred", "ref"):
        (root / folder).mkdir()
    return root


@pytest.fixture()
def client(
    gateway_db: str, redis_url: str, site: Path, request: pytest.FixtureRequest
) -> Iterator[TestClient]:
    """The gateway on the module's database and the test's Redis; default project ``<P>-a``."""
    project = f"{request.module.PROJECT}-a"
    settings = gateway_settings(gateway_db, redis_url, default_project=project, data_dir=site)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def tokens(gateway_db: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Researchers of projects ``<P>-a`` and ``<P>-b``, a clinician of a, an unscoped admin."""
    a, b = f"{request.module.PROJECT}-a", f"{request.module.PROJECT}-b"
    return {
        "a": make_token(gateway_db, Role.RESEARCHER, a),
        "b": make_token(gateway_db, Role.RESEARCHER, b),
        "clinician": make_token(gateway_db, Role.CLINICIAN, a),
        "admin": make_token(gateway_db, Role.ADMIN, None),
    }
