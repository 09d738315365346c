"""Study arrival end to end: storescu -> Orthanc (Lua OnStableStudy) -> gateway -> one job.

Orthanc runs with a one-second StableAge and the deployed Lua script, which reads the
gateway URL and a service token from its environment. The gateway runs under uvicorn on the
port the script posts to. When the gateway is down, the /changes poller catches up.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import func, select

from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.app import create_app
from spinecloud_gateway.poller import poll_once
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import InferenceJob, OrthancCursor, Role
from spinecloud_shared.orthanc.local import LocalOrthanc, free_port
from tests.fixtures.services import wait_for
from tests.integration.conftest import require_tool
from tests.integration.test_gateway_support import (
    GatewayServer,
    gateway_settings,
    make_token,
    orthanc_study_id,
    push,
    write_study,
)

pytestmark = pytest.mark.integration


LUA_SCRIPT = (
    Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "spinecloud-stable-study.lua"
)


@dataclass
class Site:
    """An Orthanc with the Lua script, and the port its script posts to."""

    orthanc: LocalOrthanc
    gateway_port: int
    database_url: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, gateway_db: str) -> Iterator[Site]:
    require_tool("Orthanc")
    port = free_port()
    token = make_token(gateway_db, Role.SERVICE, None, name="orthanc-lua")
    orthanc = LocalOrthanc(
        tmp_path_factory.mktemp("orthanc-lua"),
        stable_age_s=1,
        extra_config={"LuaScripts": [str(LUA_SCRIPT)]},
    )
    with pytest.MonkeyPatch.context() as env:  # Orthanc inherits the environment it starts in
        env.setenv("SPINECLOUD_GATEWAY_URL", f"http://127.0.0.1:{port}/")
        env.setenv("SPINECLOUD_SERVICE_TOKEN", token)
        orthanc.start()
    try:
        yield Site(orthanc, port, gateway_db)
    finally:
        orthanc.stop()


def _jobs_of(database_url: str, study_uid: str) -> int:
    with session_scope(database_url) as session:
        query = select(func.count()).where(InferenceJob.study_instance_uid == study_uid)
        return int(session.scalar(query) or 0)


def _stable(site: Site, study_uid: str) -> bool:
    """Whether Orthanc reports the study stable."""
    orthanc = site.orthanc
    study = httpx.get(
        f"{orthanc.url}/studies/{orthanc_study_id(orthanc, study_uid)}",
        auth=(orthanc.username, orthanc.password),
    ).json()
    return bool(study.get("IsStable"))


def _new_study(tmp_path: Path, storescu: str, site: Site, name: str) -> str:
    files = write_study(tmp_path / name, key=f"{name}-{uuid.uuid4().hex}")
    push(storescu, site.orthanc, files)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_lua_reports_a_stable_study_exactly_once(
    site: Site, tmp_path: Path, storescu: str, redis_url: str
) -> None:
    settings = gateway_settings(site.database_url, redis_url, site.orthanc, default_project="lua")
    with GatewayServer(create_app(settings), port=site.gateway_port):
        files = write_study(tmp_path / "lua", key=f"lua-{uuid.uuid4().hex}")
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        push(storescu, site.orthanc, files)
        wait_for(lambda: _jobs_of(site.database_url, study_uid), timeout_s=20)
        push(storescu, site.orthanc, files)  # the same study again
        time.sleep(3.0)  # longer than StableAge: a second report would have arrived
        assert _jobs_of(site.database_url, study_uid) == 1
    log = (site.orthanc.workdir / "orthanc.log").read_text(errors="replace")
    assert "SPINECLOUD_GATEWAY_URL or SPINECLOUD_SERVICE_TOKEN is not set" not in log


def test_poller_catches_up_after_downtime(
    site: Site, tmp_path: Path, storescu: str, redis_url: str
) -> None:
    study_uid = _new_study(tmp_path, storescu, site, "down")  # nothing listens on the port
    wait_for(lambda: _stable(site, study_uid), timeout_s=20)
    time.sleep(0.5)  # let the Lua callback fail against the closed port
    assert _jobs_of(site.database_url, study_uid) == 0
    settings = gateway_settings(site.database_url, redis_url, site.orthanc, default_project="lua")
    state: GatewayState = create_app(settings).state.gateway
    kwargs = {
        "sessions": state.sessions,
        "reader": state.orthanc,
        "settings": settings,
        "celery": state.celery,
    }
    first = poll_once(**kwargs)
    assert _jobs_of(site.database_url, study_uid) == 1
    assert first.studies >= 1 and first.jobs_created >= 1
    second = poll_once(**kwargs)
    assert (second.studies, second.jobs_created) == (0, 0)
    with session_scope(site.database_url) as session:
        cursor = session.get(OrthancCursor, "orthanc")
        assert cursor is not None and cursor.last_seq == second.last_seq >= first.last_seq


def test_poller_loop_in_the_lifespan(
    site: Site, tmp_path: Path, storescu: str, redis_url: str
) -> None:
    study_uid = _new_study(tmp_path, storescu, site, "loop")
    wait_for(lambda: _stable(site, study_uid), timeout_s=20)
    settings = gateway_settings(
        site.database_url,
        redis_url,
        site.orthanc,
        default_project="lua",
        poller_enabled=True,
        poller_interval_s=0.2,
    )
    with GatewayServer(create_app(settings), port=free_port()):
        wait_for(lambda: _jobs_of(site.database_url, study_uid), timeout_s=15)
    assert _jobs_of(site.database_url, study_uid) == 1
    assert os.environ.get("SPINECLOUD_SERVICE_TOKEN") is None  # the token stayed in Orthanc's env
