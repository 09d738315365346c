"""Benchmark: WADO-RS retrieval of a whole CT series through the gateway versus from Orthanc.

Starts its own stack (``_stack``): a private Orthanc with the DICOMweb plugin, PostgreSQL
database and Redis database, and the gateway as a ``spinecloud serve`` (uvicorn) process. For
each size in ``--slices`` it writes a phantom CT series of ``--rows`` x ``--rows`` pixels
(int16, uncompressed, so ~0.5 MB per 512 x 512 instance), stores it in Orthanc, records the
study in the gateway (the internal arrival endpoint, no routing rule, so no job), and then
retrieves ``GET /studies/{study}/series/{series}`` (``multipart/related;
type="application/dicom"``) ``--repeat`` times from each peer, alternating:

* ``orthanc``: Orthanc's DICOMweb plugin directly (basic auth), the reference;
* ``gateway``: the same path through the gateway's proxy (bearer token of a clinician of the
  study's project: token lookup, project check and audit record included).

Bodies are streamed and discarded; bytes and multipart parts are counted and must agree
between peers. Prints MB/s and instances/s (median of the repeats), the gateway/Orthanc
ratio (target: at least 0.8), and the gateway process's RSS sampled every 20 ms during its
transfers: the value before the first transfer, the peak, and the growth. Flat memory means
the growth does not rise with the series size. Never asserts a time.

Quick check: ``.venv/bin/python bench/gateway_wado.py`` (64 and 128 slices).
Recorded run: ``.venv/bin/python bench/gateway_wado.py --slices 50 150 300 --repeat 5``.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from _stack import (
    GatewayProcess,
    Role,
    RssSampler,
    bearer,
    gateway_process,
    header,
    load,
    make_token,
    orthanc_server,
    orthanc_study_id,
    private_database,
    private_redis,
    workdir,
)
from scipy import ndimage

from spinecloud_shared.dicom_write import SeriesIdentity, ct_series_datasets, encode_dataset
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

ACCEPT = 'multipart/related; type="application/dicom"'
MB = 1e6


@dataclass
class Series:
    """One stored series: its UIDs, instance count and size on disk."""

    study_uid: str
    series_uid: str
    instances: int
    file_bytes: int


@dataclass
class Transfer:
    """One retrieval: seconds, body bytes, multipart parts, CPU seconds used per process."""

    seconds: float
    body_bytes: int
    parts: int
    cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Peer:
    """The retrievals of one peer for one series."""

    name: str
    transfers: list[Transfer] = field(default_factory=list)

    @property
    def mb_s(self) -> float:
        """Median throughput in MB/s (10^6 bytes)."""
        return statistics.median(t.body_bytes / MB / t.seconds for t in self.transfers)

    @property
    def inst_s(self) -> float:
        """Median instances per second."""
        return statistics.median(t.parts / t.seconds for t in self.transfers)

    def cpu_s_per_gb(self, process: str) -> float:
        """Median CPU seconds ``process`` spent per GB (10^9 bytes) moved."""
        return statistics.median(t.cpu_s[process] / (t.body_bytes / 1e9) for t in self.transfers)


def phantom_volume(rows: int, slices: int) -> Volume:
    """A phantom CT zoomed to ``rows`` x ``rows`` x ``slices`` (same field of view)."""
    spec = PhantomSpec(seed=6, levels=("T12", "sacrum"), spacing_mm=(3.0, 3.0, 3.0), noise_hu=0)
    ct = generate_phantom(spec).ct
    target = (rows, rows, slices)
    factors = [t / s for t, s in zip(target, ct.shape, strict=True)]
    array = ndimage.zoom(ct.array.astype(np.float32), factors, order=1)
    array = np.rint(array).astype(np.int16)
    affine = ct.affine_ras.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1 / f for f in factors])
    return Volume(array, affine, dict(ct.meta))


def store_series(orthanc: LocalOrthanc, rows: int, slices: int) -> Series:
    """Write the phantom series in memory and POST it instance by instance to Orthanc."""
    identity = SeriesIdentity.from_key(f"bench-wado-{rows}-{slices}-{time.time_ns()}")
    datasets = ct_series_datasets(phantom_volume(rows, slices), identity)
    total = 0
    with httpx.Client(auth=(orthanc.username, orthanc.password), timeout=60) as client:
        for dataset in datasets:
            body = encode_dataset(dataset)
            total += len(body)
            client.post(f"{orthanc.url}/instances", content=body).raise_for_status()
    return Series(identity.study_instance_uid, identity.series_instance_uid, slices, total)


def retrieve(
    client: httpx.Client, url: str, headers: dict[str, str], pids: dict[str, int]
) -> Transfer:
    """GET a multipart series, discard it while counting bytes and boundaries.

    Also the CPU time each process of ``pids`` (and this client) used meanwhile: unlike
    throughput, CPU seconds per GB hardly depend on what else the machine runs.
    """
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    with client.stream("GET", url, headers={**headers, "Accept": ACCEPT}) as answer:
        answer.raise_for_status()
        boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
        delimiter = b"--" + boundary.encode()
        size, count, tail = 0, 0, b""
        for chunk in answer.iter_raw():
            size += len(chunk)
            window = tail + chunk
            count += window.count(delimiter)
            tail = window[-(len(delimiter) - 1) :]
    seconds = time.perf_counter() - started
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return Transfer(seconds, size, count - 1, used)  # count - 1: the closing delimiter


def measure(
    gateway: GatewayProcess,
    orthanc: LocalOrthanc,
    token: str,
    series: Series,
    repeat: int,
) -> tuple[Peer, Peer, RssSampler]:
    """Alternate retrievals from Orthanc and through the gateway; sample gateway memory."""
    path = f"/studies/{series.study_uid}/series/{series.series_uid}"
    direct, proxied = Peer("orthanc"), Peer("gateway")
    pids = {"orthanc": orthanc_pid(orthanc), "gateway": gateway.pid, "client": os.getpid()}
    via_orthanc = (f"{orthanc.dicomweb_url}{path}", basic(orthanc), pids)
    via_gateway = (f"{gateway.url}/dicom-web{path}", bearer(token), pids)
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        retrieve(client, *via_gateway)  # warm-up of both (page cache, connections)
        retrieve(client, *via_orthanc)
        sampler = RssSampler(gateway.pid)
        for _ in range(repeat):
            direct.transfers.append(retrieve(client, *via_orthanc))
            with sampler:
                proxied.transfers.append(retrieve(client, *via_gateway))
    for peer in (direct, proxied):
        got = {(t.body_bytes, t.parts) for t in peer.transfers}
        if {parts for _, parts in got} != {series.instances}:
            raise SystemExit(f"{peer.name}: expected {series.instances} instances, got {got}")
    if {t.body_bytes for t in direct.transfers} != {t.body_bytes for t in proxied.transfers}:
        raise SystemExit("the gateway's body differs in size from Orthanc's")
    return direct, proxied, sampler


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def orthanc_pid(orthanc: LocalOrthanc) -> int:
    """Process id of the Orthanc server (``LocalOrthanc`` keeps its Popen private)."""
    process = orthanc._process
    if process is None:
        raise SystemExit("Orthanc is not running")
    return process.pid


def basic(orthanc: LocalOrthanc) -> dict[str, str]:
    """The Authorization header of Orthanc's basic credentials."""
    secret = base64.b64encode(f"{orthanc.username}:{orthanc.password}".encode()).decode()
    return {"Authorization": f"Basic {secret}"}


def main() -> None:
    """Start the stack, store each series, retrieve it from both peers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(header("WADO-RS series retrieval: gateway proxy vs Orthanc DICOMweb"))
    rows = []
    with (
        workdir("bench-wado-") as tmp,
        private_database() as db,
        private_redis() as redis_url,
        orthanc_server(tmp / "orthanc") as orthanc,
        gateway_process(db, redis_url, orthanc, tmp) as gateway,
    ):
        service = make_token(db, Role.SERVICE, None, name="bench-service")
        reader = make_token(db, Role.CLINICIAN, "bench", name="bench-reader")
        for slices in args.slices:
            series = store_series(orthanc, args.rows, slices)
            arrival = httpx.post(
                f"{gateway.url}/internal/orthanc/stable-study?wait=true",
                json={"orthanc_study_id": orthanc_study_id(orthanc, series.study_uid)},
                headers=bearer(service),
                timeout=60,
            )
            arrival.raise_for_status()
            direct, proxied, rss = measure(gateway, orthanc, reader, series, args.repeat)
            rows.append((series, direct, proxied, rss))
            print(f"  {slices} slices done ({load()})", flush=True)
    _report(rows, args.rows)


def _report(rows: list[tuple[Series, Peer, Peer, RssSampler]], size: int) -> None:
    print(
        f"{'slices':>6}{'MB':>8}{'Orthanc MB/s':>14}{'inst/s':>8}{'gateway MB/s':>14}"
        f"{'inst/s':>8}{'ratio':>7}{'RSS before':>12}{'RSS peak':>10}{'growth':>8}"
    )
    for series, direct, proxied, rss in rows:
        body_mb = proxied.transfers[0].body_bytes / MB
        print(
            f"{series.instances:>6}{body_mb:>8.1f}{direct.mb_s:>14.1f}{direct.inst_s:>8.0f}"
            f"{proxied.mb_s:>14.1f}{proxied.inst_s:>8.0f}{proxied.mb_s / direct.mb_s:>6.2f}x"
            f"{rss.start:>10.1f}MB{rss.peak:>8.1f}MB{rss.peak - rss.start:>6.1f}MB"
        )
    print(f"({size} x {size} int16 instances; medians; RSS of the gateway process)")
    print("CPU seconds per GB moved (user + system), same transfers:")
    print(f"{'slices':>6}{'peer':>10}{'Orthanc':>9}{'gateway':>9}{'client':>8}")
    for series, direct, proxied, _ in rows:
        for peer in (direct, proxied):
            costs = [peer.cpu_s_per_gb(p) for p in ("orthanc", "gateway", "client")]
            print(f"{series.instances:>6}{peer.name:>10}" + "".join(f"{c:>9.2f}" for c in costs))
    ratios = [proxied.mb_s / direct.mb_s for _, direct, proxied, _ in rows]
    print(f"gateway/Orthanc throughput: min {min(ratios):.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
