"""Start a private Orthanc from the Debian package, on free loopback ports.

Used by integration tests and by ``spinecloud stack up`` on a machine without Docker: a
temporary configuration and storage folder, the DICOMweb and GDCM plugins, HTTP and DICOM
ports bound to 127.0.0.1 only, HTTP basic authentication with a generated password.

``OverwriteInstances`` is on, as in every SpineCloud deployment: a DICOM-SEG stored again by a
retried or redelivered inference job has the same SOPInstanceUID (derived from the job key) and
must replace the first one. Orthanc's default keeps the old instance and ignores the new one.
Pass ``extra_config={"OverwriteInstances": False}`` to get Orthanc's default back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from spinecloud_shared.errors import ConfigurationError, UpstreamError

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancDicomWeb.so", "libOrthancGdcm.so")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_executable() -> str:
    """Path of the Orthanc server binary, or ConfigurationError naming the package to install."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if not found:
        raise ConfigurationError(
            "Orthanc is not installed: apt-get install orthanc orthanc-dicomweb orthanc-gdcm"
        )
    return found


@dataclass
class LocalOrthanc:
    """A running Orthanc process with its own storage; use as a context manager."""

    workdir: Path
    aet: str = "SPINECLOUD"
    stable_age_s: int = 2
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    username: str = "spinecloud"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    extra_config: dict[str, Any] = field(default_factory=dict)
    #: Variables added to the server's environment (Lua scripts read theirs with os.getenv).
    environment: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb plugin's services."""
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this instance runs with."""
        plugins = [str(PLUGIN_DIR / name) for name in PLUGINS if (PLUGIN_DIR / name).exists()]
        return {
            "Name": "SpineCloud Orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "StableAge": self.stable_age_s,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": False,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "Gdcm": {"Enable": True},
            "OverwriteInstances": True,
            **self.extra_config,
        }

    def start(self, timeout_s: float = 30.0) -> LocalOrthanc:
        """Write the configuration, start the server and wait until its REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = (self.workdir / "orthanc.log").open("wb")
        self._process = subprocess.Popen(
            [orthanc_executable(), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.environment},
        )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise UpstreamError(
                    f"Orthanc exited at start-up; see {self.workdir / 'orthanc.log'}"
                )
            try:
                response = httpx.get(f"{self.url}/system", auth=(self.username, self.password))
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise UpstreamError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> LocalOrthanc:
        return self.start() if self._process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
