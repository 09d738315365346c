"""``spinecloud stack up``: the whole site as local processes, ready, and gone after Ctrl-C.

Runs the real command as a subprocess on free ports with its own state folder (SQLite there),
its own ``redis-server`` (a port where nothing answers) and one worker (``metrics``, the
lightest). Every process the command starts inherits a marker variable, so the test finds
any that outlives the stop by reading ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from spinecloud_shared.orthanc.local import free_port
from tests.fixtures.services import wait_for
from tests.integration.conftest import require_tool

pytestmark = pytest.mark.integration

SPINECLOUD = Path(sys.executable).parent / "spinecloud"
MARKER = "SPINECLOUD_TEST_STACK_MARKER"
START_TIMEOUT_S = 400.0


def _marked(value: str) -> list[int]:
    """Processes (other than this one) whose environment holds MARKER=value."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_stack_up_is_ready_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    require_tool("Orthanc")
    require_tool("redis-server")
    state = tmp_path / "var"
    gateway, orthanc, dicom, redis_port = (free_port() for _ in range(4))
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINECLOUD_")}
    env[MARKER] = marker
    command = [
        str(SPINECLOUD), "stack", "up", "--state-dir", str(state),
        "--gateway-port", str(gateway), "--orthanc-port", str(orthanc),
        "--dicom-port", str(dicom), "--redis-url", redis_url, "--queue", "metrics",
        "--stable-age", "1", "--timeout", str(START_TIMEOUT_S),
    ]  # fmt: skip
    log = tmp_path / "stack-up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(
            lambda: (state / "stack.json").exists() or up.poll() is not None,
            timeout_s=START_TIMEOUT_S * 2,
        )
        assert up.poll() is None, log.read_text()
        started = json.loads((state / "stack.json").read_text())
        assert set(started["processes"]) == {"gateway", "worker-metrics"}

        ready = httpx.get(f"http://127.0.0.1:{gateway}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "orthanc": "ok"}

        # Orthanc answers on the port it was given, protected, with SpineCloud's configuration.
        assert httpx.get(f"http://127.0.0.1:{orthanc}/system", timeout=10).status_code == 401
        config = json.loads((state / "orthanc" / "orthanc.json").read_text())
        auth = next(iter(config["RegisteredUsers"].items()))
        system = httpx.get(f"http://127.0.0.1:{orthanc}/system", auth=auth, timeout=10)
        assert system.json()["DicomPort"] == dicom
        plugins = httpx.get(f"http://127.0.0.1:{orthanc}/plugins", auth=auth, timeout=10).json()
        assert "dicom-web" in plugins
        assert config["OverwriteInstances"] is True
        assert [Path(p).name for p in config["LuaScripts"]] == ["spinecloud-stable-study.lua"]
        assert redis.Redis.from_url(redis_url).ping()
        assert "create-token --role admin" in log.read_text()
        assert _marked(marker), "the started processes carry the marker"
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
            try:
                up.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
        leftovers = _marked(marker)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert up.returncode == 0, log.read_text()
    assert leftovers == [], log.read_text()
    assert not (state / "stack.json").exists()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
