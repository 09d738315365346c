"""A SpineCloud site as local processes: what ``spinecloud stack up`` and the benchmarks start.

One place for starting, waiting for and stopping the pieces of a site without Docker:

- Orthanc from the Debian package (``LocalOrthanc``) with the configuration SpineCloud ships in
  ``deploy/orthanc/``: the ``OnStableStudy`` Lua script that reports arrivals to the gateway
  with a service token, the DICOMweb plugin, ``OverwriteInstances``;
- ``redis-server``, when nothing answers at the Redis URL already;
- the gateway, as ``spinecloud serve`` runs it (uvicorn, one process);
- one ``spinecloud worker`` per queue (Celery).

Each process runs in a session of its own (so a Ctrl-C meant for ``stack up`` reaches only
``stack up``, which then stops the others in order) and writes its own log file. Stopping sends
SIGTERM to the process's group and SIGKILL to whatever of the group is left after a grace
period, so no worker pool process outlives its parent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from spinecloud_gateway.auth import repository
from spinecloud_gateway.auth import service as auth
from spinecloud_shared.db import migrate, session_scope
from spinecloud_shared.db.models import Role
from spinecloud_shared.errors import ConfigurationError, UpstreamError
from spinecloud_shared.orthanc.local import LocalOrthanc

__all__ = [
    "GATEWAY_APP",
    "LUA_SCRIPT",
    "ManagedProcess",
    "Stack",
    "StackConfig",
    "gateway_command",
    "launch",
    "read_state",
    "run_stack",
    "service_env",
    "start_orthanc",
    "start_redis",
    "wait_http",
    "wait_log",
    "worker_command",
]

#: The uvicorn factory ``spinecloud serve`` runs.
GATEWAY_APP = "spinecloud_gateway.app:app_from_env"
#: The repository's ``deploy/orthanc`` script (this module is in services/gateway/src/...).
LUA_SCRIPT = (
    Path(__file__).resolve().parents[4] / "deploy" / "orthanc" / "spinecloud-stable-study.lua"
)
#: Name of the service token ``stack up`` creates for Orthanc's Lua script (one valid at a time).
SERVICE_TOKEN_NAME = "stack-orthanc"
STATE_FILE = "stack.json"
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """A child process in its own session, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id (also the id of its process group)."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """``sig`` to the process group; SIGKILL to what is left of it after ``timeout_s``."""
        if self.popen.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the process, if it lingers, and its children
        self.popen.wait(timeout=timeout_s)


def launch(
    name: str,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``command`` in a new session with stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name, popen, log_path)


def _tail(process: ManagedProcess | None, lines: int = 40) -> str:
    if process is None:
        return ""
    text = process.log().splitlines()[-lines:]
    return f"\nlast lines of {process.log_path}:\n" + "\n".join(text)


def wait_http(
    url: str,
    process: ManagedProcess | None = None,
    *,
    timeout_s: float = 240.0,
    accept: Callable[[httpx.Response], bool] = lambda answer: answer.status_code == 200,
) -> None:
    """Wait until ``url`` answers as ``accept`` wants; UpstreamError (with the process's log)
    when the process exits first or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            raise UpstreamError(
                f"{process.name} exited with {process.popen.returncode} before {url} answered"
                + _tail(process)
            )
        with suppress(httpx.TransportError):
            if accept(httpx.get(url, timeout=5)):
                return
        time.sleep(0.2)
    raise UpstreamError(f"{url} did not answer within {timeout_s:.0f} s" + _tail(process))


def wait_log(process: ManagedProcess, marker: str, *, timeout_s: float = 600.0) -> None:
    """Wait until ``marker`` appears in the process's log (a Celery worker's ``ready.``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if marker in process.log():
            return
        if not process.running():
            raise UpstreamError(
                f"{process.name} exited with {process.popen.returncode}" + _tail(process)
            )
        time.sleep(0.5)
    raise UpstreamError(f"{process.name} was not ready within {timeout_s:.0f} s" + _tail(process))


# --------------------------------------------------------------------------- commands


def gateway_command(host: str, port: int, *, workers: int = 1) -> list[str]:
    """What ``spinecloud serve`` runs, as a command line of this interpreter's uvicorn.

    Without the ``spinecloud`` root command, so the other services' commands (torch) are not
    imported; uvicorn picks uvloop and httptools, dependencies of the gateway.
    """
    return [
        sys.executable, "-m", "uvicorn", "--factory", GATEWAY_APP, "--host", host,
        "--port", str(port), "--workers", str(workers), "--no-access-log", "--proxy-headers",
    ]  # fmt: skip


def worker_command(queues: Sequence[str], concurrency: int = 1) -> list[str]:
    """``spinecloud worker`` for ``queues`` from this interpreter's environment."""
    command = [str(BIN / "spinecloud"), "worker"]
    for queue in queues:
        command += ["--queue", queue]
    return [*command, "--concurrency", str(concurrency)]


# --------------------------------------------------------------------------- servers


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


@contextmanager
def start_redis(url: str, folder: Path, log_path: Path) -> Iterator[ManagedProcess | None]:
    """A ``redis-server`` on the loopback port of ``url`` with its data in ``folder``; None
    (nothing started) when a server answers there already."""
    if redis_answers(url):
        yield None
        return
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise UpstreamError(f"Redis at {url} does not answer (only a loopback one is started)")
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        raise ConfigurationError("redis-server is not installed: apt-get install redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    command = [binary, "--bind", "127.0.0.1", "--port", str(parts.port or 6379)]
    command += ["--dir", str(folder), "--daemonize", "no", "--save", "60 1"]
    process = launch("redis", command, env=os.environ, log_path=log_path)
    try:
        deadline = time.monotonic() + 30
        while not redis_answers(url):
            if not process.running() or time.monotonic() > deadline:
                raise UpstreamError("redis-server did not start" + _tail(process))
            time.sleep(0.1)
        yield process
    finally:
        process.stop()


@contextmanager
def start_orthanc(
    folder: Path,
    *,
    http_port: int,
    dicom_port: int,
    gateway_url: str | None = None,
    service_token: str | None = None,
    stable_age_s: int = 2,
    lua_script: Path = LUA_SCRIPT,
) -> Iterator[LocalOrthanc]:
    """Orthanc with SpineCloud's configuration; with a gateway URL and service token it runs
    the arrival script (which reads both from its environment)."""
    extra: dict[str, object] = {"OverwriteInstances": True}
    environment: dict[str, str] = {}
    if gateway_url is not None and service_token is not None:
        if not lua_script.is_file():
            raise ConfigurationError(f"the Orthanc Lua script is missing: {lua_script}")
        extra["LuaScripts"] = [str(lua_script)]
        environment = {
            "SPINECLOUD_GATEWAY_URL": gateway_url,
            "SPINECLOUD_SERVICE_TOKEN": service_token,
        }
    orthanc = LocalOrthanc(
        folder,
        stable_age_s=stable_age_s,
        http_port=http_port,
        dicom_port=dicom_port,
        extra_config=extra,
        environment=environment,
    )
    with orthanc:
        yield orthanc


def service_env(
    base: Mapping[str, str], *, redis_url: str, orthanc: LocalOrthanc, **extra: str
) -> dict[str, str]:
    """Environment of a SpineCloud process of the site: ``base`` plus the servers' addresses."""
    env = dict(base)
    env.update(
        SPINECLOUD_REDIS_URL=redis_url,
        SPINECLOUD_ORTHANC_URL=orthanc.url,
        SPINECLOUD_ORTHANC_USERNAME=orthanc.username,
        SPINECLOUD_ORTHANC_PASSWORD=orthanc.password,
        **extra,
    )
    return env


# --------------------------------------------------------------------------- the stack


@dataclass
class StackConfig:
    """What ``spinecloud stack up`` starts, and where."""

    state_dir: Path = Path("var")
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    orthanc_port: int = 8042
    dicom_port: int = 4242
    redis_url: str = "redis://127.0.0.1:6379/0"
    queues: tuple[str, ...] = ("inference", "training", "metrics")
    stable_age_s: int = 10
    timeout_s: float = 600.0

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway (loopback when it listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.gateway_port}"


@dataclass
class Stack:
    """The running site: Orthanc, the processes started, the environment they share."""

    config: StackConfig
    orthanc: LocalOrthanc
    database_url: str
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def state(self) -> dict[str, object]:
        """What ``stack status`` and ``stack down`` read (``<state dir>/stack.json``)."""
        return {
            "pid": os.getpid(),
            "gateway_url": self.config.gateway_url,
            "orthanc_url": self.orthanc.url,
            "dicom_port": self.orthanc.dicom_port,
            "dicom_aet": self.orthanc.aet,
            "database_url": self.database_url,
            "redis_url": self.config.redis_url,
            "processes": {name: p.pid for name, p in self.processes.items()},
            "logs": {name: str(p.log_path) for name, p in self.processes.items()},
        }


def _service_token(database_url: str) -> str:
    """A new service token for Orthanc's script; earlier ``stack up`` tokens are revoked."""
    with session_scope(database_url) as session:
        for row in repository.tokens(session):
            if row.name == SERVICE_TOKEN_NAME and row.revoked_at is None:
                auth.revoke_token(session, row.id)
        _row, secret = auth.create_token(
            session, name=SERVICE_TOKEN_NAME, role=Role.SERVICE, project=None
        )
    return secret


def read_state(state_dir: Path) -> dict[str, object] | None:
    """The state file of a running ``stack up`` in ``state_dir``, or None."""
    path = state_dir / STATE_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@contextmanager
def run_stack(
    config: StackConfig, *, on_started: Callable[[str], None] = lambda _line: None
) -> Iterator[Stack]:
    """Start the site and yield it once every piece is ready; stop everything on exit
    (workers first, Orthanc and Redis last)."""
    state_dir = config.state_dir.resolve()
    logs = state_dir / "logs"
    base = dict(os.environ)
    base["SPINECLOUD_DATA_DIR"] = str(state_dir)
    # The settings of the processes: SPINECLOUD_DATABASE_URL when set, else SQLite in state_dir.
    database_url = (
        base.get("SPINECLOUD_DATABASE_URL") or f"sqlite:///{state_dir / 'spinecloud.sqlite3'}"
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.callback((state_dir / STATE_FILE).unlink, missing_ok=True)
        migrate.upgrade(database_url)
        token = _service_token(database_url)
        redis_server = stack.enter_context(
            start_redis(config.redis_url, state_dir / "redis", logs / "redis.log")
        )
        on_started(f"redis     {config.redis_url}" + ("" if redis_server else " (already running)"))
        orthanc = stack.enter_context(
            start_orthanc(
                state_dir / "orthanc",
                http_port=config.orthanc_port,
                dicom_port=config.dicom_port,
                gateway_url=config.gateway_url,
                service_token=token,
                stable_age_s=config.stable_age_s,
            )
        )
        on_started(f"orthanc   {orthanc.url} (DICOM {orthanc.aet}@127.0.0.1:{orthanc.dicom_port})")
        env = service_env(base, redis_url=config.redis_url, orthanc=orthanc)
        env["SPINECLOUD_DATABASE_URL"] = database_url
        site = Stack(config, orthanc, database_url)
        # Stopped in reverse order of start: workers, gateway, then Orthanc and Redis.
        gateway = launch(
            "gateway",
            gateway_command(config.host, config.gateway_port),
            env=env,
            log_path=logs / "gateway.log",
        )
        site.processes["gateway"] = gateway
        stack.callback(gateway.stop)
        for queue in config.queues:
            worker = launch(
                f"worker-{queue}",
                worker_command([queue]),
                env=env,
                log_path=logs / f"worker-{queue}.log",
            )
            site.processes[worker.name] = worker
            stack.callback(worker.stop)
        wait_http(f"{config.gateway_url}/readyz", gateway, timeout_s=config.timeout_s)
        on_started(f"gateway   {config.gateway_url} (ready)")
        for queue in config.queues:
            wait_log(site.processes[f"worker-{queue}"], " ready.", timeout_s=config.timeout_s)
            on_started(f"worker    {queue} (ready)")
        (state_dir / STATE_FILE).write_text(json.dumps(site.state(), indent=2))
        yield site
