"""The real SpineCloud stack, started by the gateway benchmarks themselves.

A private PostgreSQL database and Redis database number (leased like the tests lease theirs,
so benchmarks and concurrent test sessions never share data), a private Orthanc
(``LocalOrthanc``, optionally with the deployed Lua script), the gateway as a ``spinecloud
serve`` (uvicorn) process and an inference worker as a ``spinecloud worker`` (Celery)
process. Starting, waiting for and stopping Orthanc and the processes is
``spinecloud_gateway.stack``'s, as for ``spinecloud stack up``; the database, server and
phantom helpers of the tests are imported, not copied: ``tests.fixtures.services`` and
``tests.integration.test_gateway_support``.

Also: gateway process memory sampling (``/proc``), the machine and its load (``lscpu``,
``/proc/loadavg``), and percentiles, so every benchmark prints the same header.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from spinecloud_gateway.settings import RoutingRule  # noqa: E402
from spinecloud_gateway.stack import (  # noqa: E402
    LUA_SCRIPT,
    ManagedProcess,
    gateway_command,
    launch,
    service_env,
    start_orthanc,
    wait_http,
    worker_command,
)
from spinecloud_shared.cli.worker import node_name  # noqa: E402
from spinecloud_shared.db.migrate import upgrade  # noqa: E402
from spinecloud_shared.db.models import Role  # noqa: E402
from spinecloud_shared.orthanc.local import LocalOrthanc, free_port  # noqa: E402
from spinecloud_shared.phantom import PhantomSpec, generate_phantom, write_phantom_dicom  # noqa: E402
from spinecloud_shared.queue import TASK_MODULES_ENV, create_celery_app  # noqa: E402
from spinecloud_shared.settings import Settings  # noqa: E402
from spinecloud_shared.task_names import INFERENCE_QUEUE  # noqa: E402
from tests.fixtures.services import (  # noqa: E402
    DEFAULT_POSTGRES_ADMIN_URL,
    DEFAULT_REDIS_SERVER_URL,
    POSTGRES_ADMIN_URL_ENV,
    REDIS_SERVER_URL_ENV,
    REDIS_TEST_DBS,
    CeleryWorker,
    PostgresDatabases,
)
from tests.integration.test_gateway_support import (  # noqa: E402
    bearer,
    make_token,
    orthanc_study_id,
    push,
    write_study,
)

__all__ = [
    "BENCH_RULE",
    "DEFAULT_MODEL",
    "LUA_SCRIPT",
    "GatewayProcess",
    "Role",
    "RssSampler",
    "Site",
    "arrival_site",
    "bearer",
    "gateway_process",
    "header",
    "inference_worker",
    "load",
    "make_token",
    "orthanc_server",
    "orthanc_study_id",
    "percentile",
    "private_database",
    "private_redis",
    "push",
    "push_timed",
    "queue_depth",
    "rss_mb",
    "storescu",
    "tiny_study",
    "wait_until",
    "workdir",
    "write_study",
]

#: The model shipped with the inference package (trained on phantoms, fast on CPU).
DEFAULT_MODEL = ("spine-segresnet-demo", "0.1.0")
#: Routes the small phantom studies of ``write_study`` (20 slices) to the default model.
BENCH_RULE = RoutingRule(
    name="bench-ct", min_slices=10, model_name=DEFAULT_MODEL[0], model_version=DEFAULT_MODEL[1]
)


# --------------------------------------------------------------------------- machine


def header(title: str) -> str:
    """Benchmark title line plus the machine (``lscpu`` model, cores) and its load now."""
    model, cpus = "unknown CPU", os.cpu_count() or 0
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        names = [ln.split(":", 1)[1] for ln in lscpu.splitlines() if ln.startswith("Model name")]
        model = names[0].strip() if names else model
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{title}\nmachine: {model}, {cpus} CPUs; {load()}"


def load() -> str:
    """The load averages (1, 5, 15 min) as ``uptime`` prints them."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average: {one}, {five}, {fifteen}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(values[0] if q <= 0 else max(values) if q >= 100 else cuts[int(q) - 1])


def storescu() -> str:
    """The dcmtk C-STORE client, or exit with what to install."""
    found = shutil.which("storescu")
    if not found:
        raise SystemExit("storescu is not installed (apt-get install dcmtk)")
    return found


def tiny_study(folder: Path, key: str) -> list[Path]:
    """A tiny phantom CT study (20 axial slices of 41 x 41 at 4 mm, L4-L5) for arrivals.

    Small enough that the default model segments it in about a second on a CPU, so that
    arrival benchmarks measure the platform rather than the network's forward pass.
    """
    spec = PhantomSpec(
        seed=1, levels=("L4", "L5"), spacing_mm=(4.0, 4.0, 4.0), margin_mm=2.0, noise_hu=0.0,
        fov_mm=(160.0, 160.0),
    )  # fmt: skip
    return write_phantom_dicom(generate_phantom(spec), folder, key=key)


def push_timed(dcmsend: str, orthanc: LocalOrthanc, files: Sequence[Path]) -> float:
    """C-STORE ``files`` with ``storescu -v``; the time its last store response was read.

    The process may take a while longer to release the association and exit, on a loaded
    machine more than Orthanc's StableAge, so its exit is not the end of the push.
    """
    # Line-buffered output (coreutils' stdbuf), so each response is read when it is printed.
    command = ["stdbuf", "-oL", "-eL", dcmsend, "-v", "-aec", orthanc.aet]
    command += ["127.0.0.1", str(orthanc.dicom_port)]
    last = float("nan")
    with subprocess.Popen(
        [*command, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if "Received Store Response" in line:
                last = time.time()
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return last


# --------------------------------------------------------------------------- servers


@contextmanager
def private_database() -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped at the end."""
    admin_url = os.environ.get(POSTGRES_ADMIN_URL_ENV, DEFAULT_POSTGRES_ADMIN_URL)
    databases = PostgresDatabases(admin_url)
    try:
        url = databases.create()
        upgrade(url)
        yield url
    finally:
        databases.drop_all()


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis database number of our own (the tests' lease keys), empty at start and end."""
    server = os.environ.get(REDIS_SERVER_URL_ENV, DEFAULT_REDIS_SERVER_URL).rstrip("/")
    client = redis.Redis.from_url(f"{server}/0", socket_connect_timeout=3)
    owner = f"{socket.gethostname()}:{os.getpid()}:bench"
    try:
        for number in REDIS_TEST_DBS:
            key = f"spinecloud:test-lease:db{number}"
            if client.set(key, owner, nx=True, ex=3600):
                url = f"{server}/{number}"
                redis.Redis.from_url(url).flushdb()
                try:
                    yield url
                finally:
                    redis.Redis.from_url(url).flushdb()
                    client.delete(key)
                return
        raise SystemExit(f"every Redis test database on {server} is leased")
    finally:
        client.close()


@contextmanager
def orthanc_server(
    workdir: Path, *, stable_age_s: int = 2, notify: tuple[int, str] | None = None
) -> Iterator[LocalOrthanc]:
    """A private Orthanc; with ``notify=(gateway_port, service_token)`` it runs the Lua script."""
    with start_orthanc(
        workdir,
        http_port=free_port(),
        dicom_port=free_port(),
        gateway_url=f"http://127.0.0.1:{notify[0]}" if notify else None,
        service_token=notify[1] if notify else None,
        stable_age_s=stable_age_s,
    ) as orthanc:
        yield orthanc


def _service_env(database_url: str, redis_url: str, orthanc: LocalOrthanc) -> dict[str, str]:
    """Environment of a SpineCloud process on these servers (the repository importable)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return service_env(
        os.environ,
        redis_url=redis_url,
        orthanc=orthanc,
        SPINECLOUD_ENVIRONMENT="test",
        SPINECLOUD_DATABASE_URL=database_url,
        PYTHONPATH=pythonpath,
    )


@dataclass
class GatewayProcess:
    """The gateway's uvicorn process (one worker, so its pid is the server).

    ``uvicorn --factory spinecloud_gateway.app:app_from_env`` is what ``spinecloud serve``
    runs, without loading the other commands of the CLI (torch), as in the gateway image.
    """

    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        """Base URL of the gateway."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def log_lines(self) -> list[str]:
        """The JSON log lines written so far."""
        return self.process.log().splitlines()


@contextmanager
def gateway_process(
    database_url: str,
    redis_url: str,
    orthanc: LocalOrthanc,
    workdir: Path,
    *,
    port: int | None = None,
    rules: Sequence[RoutingRule] = (),
    default_project: str = "bench",
) -> Iterator[GatewayProcess]:
    """The gateway served by uvicorn in its own process, JSON logs to ``workdir``.

    Start-up may take long on a loaded machine (imports), hence the generous timeout.
    """
    port = port or free_port()
    env = _service_env(database_url, redis_url, orthanc)
    env.update(
        SPINECLOUD_ROUTING_RULES="[" + ",".join(r.model_dump_json() for r in rules) + "]",
        SPINECLOUD_DEFAULT_PROJECT=default_project,
        SPINECLOUD_LOG_LEVEL="INFO",
    )
    command = gateway_command("127.0.0.1", port)
    process = launch("gateway", command, env=env, log_path=workdir / "gateway.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process, timeout_s=240)
        yield GatewayProcess(process, port)
    finally:
        process.stop()


@contextmanager
def inference_worker(
    database_url: str, redis_url: str, orthanc: LocalOrthanc, workdir: Path, concurrency: int = 1
) -> Iterator[CeleryWorker]:
    """A ``spinecloud worker -q inference`` process (Celery, prefork), ready when yielded."""
    env = _service_env(database_url, redis_url, orthanc)
    env.update(
        {
            TASK_MODULES_ENV: "spinecloud_inference.tasks",
            "SPINECLOUD_DATA_DIR": str(workdir / "data"),
            "SPINECLOUD_ARTIFACT_DIR": str(workdir / "artifacts"),
        }
    )
    command = worker_command([INFERENCE_QUEUE], concurrency)
    process = launch("worker", command, env=env, log_path=workdir / "worker.log")
    client = create_celery_app(Settings(redis_url=redis_url))
    node = node_name([INFERENCE_QUEUE]).replace("%h", socket.gethostname())
    worker = CeleryWorker(process.popen, node, process.log_path, client)
    try:
        worker.wait_ready(timeout_s=300)
        yield worker
    finally:
        worker.stop()


def queue_depth(redis_url: str) -> int:
    """Messages waiting in the inference queue (what ``spinecloud_queue_depth`` reports)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(INFERENCE_QUEUE))
    finally:
        client.close()


# --------------------------------------------------------------------------- sampling


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (``VmRSS``); NaN once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    line = next(ln for ln in status.splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024.0


@dataclass
class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread while in a ``with`` block.

    Entering again appends to the same samples, so one sampler spans several transfers.
    """

    pid: int
    interval_s: float = 0.02
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._stop.clear()
        self.samples.append(rss_mb(self.pid))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(rss_mb(self.pid))

    @property
    def peak(self) -> float:
        """Highest sample (MB)."""
        return max(self.samples)

    @property
    def start(self) -> float:
        """First sample (MB)."""
        return self.samples[0]


def wait_until(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until truthy; SystemExit after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise SystemExit(f"condition not met within {timeout_s} s")


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder for one benchmark run (Orthanc storage, logs, phantoms)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- the whole site


@dataclass
class Site:
    """Everything running for an arrival benchmark, and a reader's token for QIDO."""

    database_url: str
    redis_url: str
    orthanc: LocalOrthanc
    gateway: GatewayProcess
    worker: CeleryWorker
    reader_token: str

    def seg_series(self, study_uid: str) -> list[Any]:
        """QIDO-RS through the gateway: the study's SEG series ([] while none or unknown)."""
        answer = httpx.get(
            f"{self.gateway.url}/dicom-web/studies/{study_uid}/series",
            params={"Modality": "SEG"},
            headers={**bearer(self.reader_token), "Accept": "application/dicom+json"},
            timeout=30,
        )
        if answer.status_code == 404:  # the gateway has not recorded the study yet
            return []
        answer.raise_for_status()
        return list(answer.json()) if answer.content.strip() else []


@contextmanager
def arrival_site(tmp: Path, *, stable_age_s: int = 1, concurrency: int = 1) -> Iterator[Site]:
    """The whole arrival path: Orthanc with the Lua script posting to the gateway process,
    the gateway routing the small phantoms to the default model, an inference worker."""
    with ExitStack() as stack:
        db = stack.enter_context(private_database())
        redis_url = stack.enter_context(private_redis())
        port = free_port()
        service = make_token(db, Role.SERVICE, None, name="orthanc-lua")
        orthanc = stack.enter_context(
            orthanc_server(tmp / "orthanc", stable_age_s=stable_age_s, notify=(port, service))
        )
        gateway = stack.enter_context(
            gateway_process(db, redis_url, orthanc, tmp, port=port, rules=[BENCH_RULE])
        )
        worker = stack.enter_context(
            inference_worker(db, redis_url, orthanc, tmp, concurrency=concurrency)
        )
        reader = make_token(db, Role.CLINICIAN, "bench", name="bench-reader")
        yield Site(db, redis_url, orthanc, gateway, worker, reader)
