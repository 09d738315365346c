"""Benchmark: many small studies pushed at once are all segmented, none lost.

Starts the whole arrival path itself (``_stack.arrival_site``: Orthanc with StableAge 1 s and
the Lua script, the gateway as a uvicorn process, an inference worker with the default model,
private PostgreSQL and Redis databases). Writes ``--studies`` tiny phantom CT studies
(``_stack.tiny_study``: 20 slices of 41 x 41, each its own patient) and pushes them all at
once, one ``storescu`` process per study, at most ``--parallel`` at a time. Meanwhile it
samples, every 0.5 s, the inference queue's depth (Redis list length, what the gateway's
``spinecloud_queue_depth`` reports) and the jobs by status.

Reports: the queue depth over time, per-study latency (the last store response of the
study's ``storescu`` -> its job's ``finished_at``) percentiles, throughput, and failures,
which must be zero: push errors, studies with no job (lost), more than one job
(duplicated), failed jobs, and studies whose SEG QIDO-RS through the gateway does not find
at the end. Never asserts a time; exits non-zero when anything was lost or failed.

Quick check: ``.venv/bin/python bench/gateway_load.py`` (10 studies); recorded run:
``--studies 50``.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from _stack import (
    Site,
    arrival_site,
    header,
    load,
    percentile,
    push_timed,
    queue_depth,
    storescu,
    tiny_study,
    workdir,
)
from sqlalchemy import func, select

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import FINISHED_STATUSES, InferenceJob

SAMPLE_S = 0.5


@dataclass
class Sample:
    """One look at the queue: seconds since the pushes began, depth, jobs by status."""

    at_s: float
    depth: int
    jobs: dict[str, int]


@dataclass
class Sampler:
    """Samples queue depth and job counts in a thread until stopped."""

    site: Site
    origin: float
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sample every ``SAMPLE_S`` until ``stop`` is set."""
        query = select(InferenceJob.status, func.count()).group_by(InferenceJob.status)
        while not self.stop.is_set():
            with session_scope(self.site.database_url) as session:
                jobs = {str(status): int(n) for status, n in session.execute(query)}
            depth = queue_depth(self.site.redis_url)
            self.samples.append(Sample(time.time() - self.origin, depth, jobs))
            self.stop.wait(SAMPLE_S)


def _push_one(dcmsend: str, site: Site, files: list[Path]) -> float | str:
    """Push one study; the time it ended, or the error."""
    try:
        return push_timed(dcmsend, site.orthanc, files)
    except subprocess.SubprocessError as exc:
        return f"{type(exc).__name__}: {exc}"


def _jobs(site: Site) -> list[InferenceJob]:
    with session_scope(site.database_url) as session:
        jobs = list(session.scalars(select(InferenceJob)))
        session.expunge_all()
    return jobs


def main() -> None:
    """Write the studies, push them all at once, wait, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=0, help="storescu at once; 0: all")
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=0.0, help="s; 0: 120 + 30 per study")
    args = parser.parse_args()
    timeout_s = args.timeout or 120 + 30 * args.studies
    print(header(f"Load: {args.studies} small studies pushed at once"))
    dcmsend = storescu()
    with (
        workdir("bench-load-") as tmp,
        arrival_site(tmp, stable_age_s=1, concurrency=args.concurrency) as site,
    ):
        studies: dict[str, list[Path]] = {}
        for _ in range(args.studies):
            key = f"bench-load-{uuid.uuid4().hex}"
            files = tiny_study(tmp / key, key=key)
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            studies[uid] = files
        print(f"  {len(studies)} studies written ({load()})", flush=True)
        origin = time.time()
        sampler = Sampler(site, origin)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        with ThreadPoolExecutor(max_workers=args.parallel or args.studies) as pool:
            results = pool.map(lambda f: _push_one(dcmsend, site, f), studies.values())
            ends = dict(zip(studies, results, strict=True))
        pushed_s = time.time() - origin
        print(f"  pushed in {pushed_s:.1f} s ({load()})", flush=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            jobs = _jobs(site)
            if len(jobs) >= len(studies) and all(j.status in FINISHED_STATUSES for j in jobs):
                break
            time.sleep(1.0)
        sampler.stop.set()
        thread.join()
        jobs = _jobs(site)
        missing_seg = [uid for uid in studies if not site.seg_series(uid)]
        print(f"  done ({load()})", flush=True)
    failures = _report(origin, ends, jobs, sampler.samples, missing_seg)
    raise SystemExit(1 if failures else 0)


def _report(
    origin: float,
    ends: dict[str, float | str],
    jobs: list[InferenceJob],
    samples: list[Sample],
    missing_seg: list[str],
) -> int:
    """Print the queue over time, latencies and failures; the number of failures."""
    print(f"{'t (s)':>7}{'queue':>7}{'queued':>8}{'running':>9}{'done':>6}{'failed':>8}")
    step = max(1, len(samples) // 20)
    for sample in samples[::step] + ([samples[-1]] if len(samples) % step != 1 else []):
        jobs_by = sample.jobs
        print(
            f"{sample.at_s:>7.1f}{sample.depth:>7}{jobs_by.get('queued', 0):>8}"
            f"{jobs_by.get('running', 0):>9}{jobs_by.get('succeeded', 0):>6}"
            f"{jobs_by.get('failed', 0):>8}"
        )
    per_study = Counter(j.study_instance_uid for j in jobs)
    latencies = [
        j.finished_at.timestamp() - end
        for j in jobs
        if j.finished_at is not None and isinstance(end := ends.get(j.study_instance_uid), float)
    ]
    push_errors = [uid for uid, end in ends.items() if isinstance(end, str)]
    lost = [uid for uid in ends if per_study[uid] == 0]
    duplicated = [uid for uid, n in per_study.items() if n > 1]
    failed = [j for j in jobs if str(j.status) != "succeeded"]
    if latencies:
        print(
            "latency push end -> job finished (s): "
            + ", ".join(f"p{q} {percentile(latencies, q):.1f}" for q in (50, 90, 95, 99))
            + f", max {max(latencies):.1f}"
        )
        last = max(j.finished_at.timestamp() for j in jobs if j.finished_at is not None)
        print(f"all {len(latencies)} done {last - origin:.1f} s after the first push began: "
              f"{60 * len(latencies) / (last - origin):.1f} studies/min")  # fmt: skip
    print(
        f"failures: push {len(push_errors)}, lost {len(lost)}, duplicated {len(duplicated)}, "
        f"jobs not succeeded {len(failed)}, SEG not found {len(missing_seg)}"
    )
    for job in failed:
        print(f"  job {job.id}: {job.status} {job.error_code} {job.error_message}")
    return len(push_errors) + len(lost) + len(duplicated) + len(failed) + len(missing_seg)


if __name__ == "__main__":
    main()
