"""Authentication against a real JWKS server, API tokens, roles, and the admin commands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from spinecloud_gateway.app import create_app
from spinecloud_gateway.auth import service as auth
from spinecloud_gateway.cli import admin_app
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import ApiToken, Role, User
from tests.integration.test_gateway_support import (
    AUDIENCE,
    ISSUER,
    OidcProvider,
    bearer,
    gateway_settings,
    make_token,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcProvider]:
    """A local OIDC key set served over HTTP."""
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture()
def client(gateway_db: str, redis_url: str, oidc: OidcProvider) -> Iterator[TestClient]:
    """The gateway with OIDC pointed at the local JWKS server (no Orthanc needed here)."""
    app = create_app(gateway_settings(gateway_db, redis_url, oidc=oidc))
    with TestClient(app) as test_client:
        yield test_client


def _status(client: TestClient, token: str, path: str = "/api/v1/jobs") -> int:
    return client.get(path, headers=bearer(token)).status_code


def test_valid_rs256_and_es256_tokens_are_accepted(
    client: TestClient,
    oidc: OidcProvider,
    gateway_db: str,
) -> None:
    assert _status(client, oidc.token("alice")) == 200
    assert _status(client, oidc.token("alice", alg="ES256")) == 200
    with session_scope(gateway_db) as session:
        user = session.scalars(select(User).where(User.subject == "alice")).one()
        assert (user.issuer, user.role) == (ISSUER, Role.CLINICIAN)


def test_the_jwks_is_fetched_once_and_cached(client: TestClient, oidc: OidcProvider) -> None:
    before = oidc.requests
    for _ in range(3):
        assert _status(client, oidc.token("carol")) == 200
    assert oidc.requests - before <= 1


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600},
        {"aud": "another-service"},
        {"iss": "https://evil.example/realms/hospital"},
        {"nbf": int(time.time()) + 3600},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "not-yet-valid"],
)
def test_invalid_jwts_are_refused(
    client: TestClient, oidc: OidcProvider, claims: dict[str, Any]
) -> None:
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300, **claims},
        oidc.rsa_key,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    response = client.get("/api/v1/jobs", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == "unauthenticated"


def test_forged_and_malformed_tokens_are_refused(client: TestClient, oidc: OidcProvider) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _status(client, oidc.token("mallory", key=stranger)) == 401
    assert _status(client, oidc.token("mallory") + "x") == 401
    assert _status(client, "not-a-jwt") == 401
    assert _status(client, "sc_00000000_" + "A" * 43) == 401
    assert client.get("/api/v1/jobs").status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Basic YTpi"}).status_code == 401


def test_roles_and_memberships(client: TestClient, oidc: OidcProvider, gateway_db: str) -> None:
    with session_scope(gateway_db) as session:
        project = auth.ensure_project(session, "auth-proj")
        auth.add_member(session, issuer=ISSUER, subject="dana", project=project, role=Role.ADMIN)
    assert _status(client, oidc.token("dana"), "/api/v1/audit") == 200
    assert _status(client, oidc.token("erin"), "/api/v1/audit") == 403
    service = make_token(gateway_db, Role.SERVICE, None)
    assert _status(client, service, "/api/v1/jobs") == 403  # machines that feed do not read


def test_api_tokens_work_until_revoked(client: TestClient, gateway_db: str) -> None:
    token = make_token(gateway_db, Role.RESEARCHER, "auth-proj")
    assert _status(client, token) == 200
    with session_scope(gateway_db) as session:
        prefix = token.split("_")[1]
        row = session.scalars(select(ApiToken).where(ApiToken.prefix == prefix)).one()
        assert row.last_used_at is not None
        assert token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
        auth.revoke_token(session, prefix)
    assert _status(client, token) == 401


def test_admin_commands_create_list_and_revoke(
    gateway_db: str, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINECLOUD_DATABASE_URL", gateway_db)
    runner = CliRunner()
    created = runner.invoke(
        admin_app, ["create-token", "--role", "admin", "--project", "cli-proj", "--name", "ci"]
    )
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("sc_")
    assert _status(client, token, "/api/v1/audit") == 200
    listed = runner.invoke(admin_app, ["list-tokens"])
    assert listed.exit_code == 0
    assert token.split("_")[1] in listed.output and token not in listed.output
    revoked = runner.invoke(admin_app, ["revoke-token", token.split("_")[1]])
    assert revoked.exit_code == 0, revoked.output
    assert _status(client, token, "/api/v1/audit") == 401
    member = runner.invoke(
        admin_app,
        [
            "add-member",
            "--subject",
            "frank",
            "--project",
            "cli-proj",
            "--role",
            "researcher",
            "--issuer",
            ISSUER,
        ],
    )
    assert member.exit_code == 0, member.output
