"""Shared support for the gateway integration tests (no tests of its own; each module gets
its own database from the ``gateway_db`` fixture of the integration conftest, so its data
stays its own).

A local OIDC provider (an RSA/EC key and a JWKS served over real HTTP from a thread), the
gateway under uvicorn in a thread, a fresh PostgreSQL database per module, API tokens, and
phantom CT studies pushed into Orthanc with storescu.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from pydantic import SecretStr

from spinecloud_gateway.auth import service as auth
from spinecloud_gateway.settings import GatewaySettings, RoutingRule
from spinecloud_shared.db import session_scope, upgrade
from spinecloud_shared.db.models import Role
from spinecloud_shared.orthanc.local import LocalOrthanc, free_port
from spinecloud_shared.phantom import PhantomSpec, generate_phantom, write_phantom_dicom
from tests.fixtures.services import PostgresDatabases

ISSUER = "https://idp.spinecloud.test/realms/hospital"
AUDIENCE = "spinecloud-gateway"
#: A rule that accepts the small phantoms (20 slices) written by :func:`write_study`.
TEST_RULE = RoutingRule(name="test-ct", min_slices=10, model_name="spine-segresnet-demo")


class OidcProvider:
    """Signing keys and a JWKS endpoint on 127.0.0.1 (a real HTTP server in a thread)."""

    def __init__(self) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks: dict[str, Any] = {
            "keys": [
                self._jwk(self.rsa_key, "rsa-1", "RS256"),
                self._jwk(self.ec_key, "ec-1", "ES256"),
            ]
        }
        self.requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                body = json.dumps(provider.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def token(self, subject: str, alg: str = "RS256", key: Any = None, **claims: Any) -> str:
        """A signed JWT; ``claims`` override the defaults (iss, aud, exp in 5 min)."""
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300}
        payload.update(claims)
        kid = "rsa-1" if alg == "RS256" else "ec-1"
        signing_key = key or (self.rsa_key if alg == "RS256" else self.ec_key)
        return jwt.encode(payload, signing_key, algorithm=alg, headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class GatewayServer:
    """The gateway served by uvicorn in a thread on a free loopback port."""

    app: FastAPI
    port: int = field(default_factory=free_port)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayServer:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("the gateway did not start under uvicorn")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def gateway_settings(
    database_url: str,
    redis_url: str,
    orthanc: LocalOrthanc | None = None,
    oidc: OidcProvider | None = None,
    **overrides: Any,
) -> GatewaySettings:
    """Settings for a test gateway on these servers."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        "routing_rules": [TEST_RULE],
        "default_project": "radiology",
    }
    if orthanc is not None:
        values.update(
            orthanc_url=orthanc.url,
            orthanc_username=orthanc.username,
            orthanc_password=SecretStr(orthanc.password),
        )
    else:
        values.update(orthanc_url=f"http://127.0.0.1:{free_port()}")
    if oidc is not None:
        values.update(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=oidc.jwks_url)
    values.update(overrides)
    return GatewaySettings(**values)


def make_token(database_url: str, role: Role, project: str | None, name: str = "test") -> str:
    """A new API token (project created when new)."""
    with session_scope(database_url) as session:
        target = auth.ensure_project(session, project) if project else None
        _row, secret = auth.create_token(session, name=name, role=role, project=target)
    return secret


def write_study(folder: Path, key: str | None = None, seed: int = 1) -> list[Path]:
    """A small phantom CT series (20 axial slices of 96 x 63) with UIDs derived from ``key``."""
    spec = PhantomSpec(
        seed=seed, levels=("L4", "L5"), spacing_mm=(4.0, 4.0, 4.0), margin_mm=2.0, noise_hu=0.0
    )
    folder.mkdir(parents=True, exist_ok=True)
    return write_phantom_dicom(generate_phantom(spec), folder, key=key or uuid.uuid4().hex)


def push(storescu: str, orthanc: LocalOrthanc, files: list[Path]) -> None:
    """C-STORE ``files`` into ``orthanc``."""
    command = [storescu, "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port)]
    subprocess.run([*command, *map(str, files)], check=True, capture_output=True, timeout=60)


def orthanc_study_id(orthanc: LocalOrthanc, study_uid: str) -> str:
    """Orthanc's id of the study with this StudyInstanceUID."""
    answer = httpx.post(
        f"{orthanc.url}/tools/lookup", content=study_uid, auth=(orthanc.username, orthanc.password)
    ).json()
    return str(next(item["ID"] for item in answer if item["Type"] == "Study"))


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def fresh_database(databases: PostgresDatabases) -> str:
    """A new PostgreSQL database migrated to head (one per test module keeps data apart)."""
    url = databases.create()
    upgrade(url)
    return url
