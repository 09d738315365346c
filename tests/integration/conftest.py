"""Integration fixtures: a private Orthanc started from the Debian package."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc


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
