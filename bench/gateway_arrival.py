"""Benchmark: from the last C-STORE of a study to its DICOM-SEG being found by QIDO-RS.

Starts the whole arrival path itself (``_stack.arrival_site``): Orthanc with ``StableAge``
set to ``--stable-age`` (1 s) and the deployed Lua script, the gateway as a uvicorn process
(the Lua script posts to it), an inference worker (``spinecloud worker -q inference``, Celery)
with the default model, a private PostgreSQL database and Redis database. Each study is a
tiny phantom CT (20 slices of 41 x 41) pushed with ``storescu -v``; the benchmark then asks the
gateway every 50 ms for the study's SEG series (QIDO-RS, clinician token).

The time from the last C-STORE (the last store response ``storescu -v`` prints) to the first
QIDO answer that lists the SEG is broken down with timestamps from the same clock:

* stable wait: last store response -> the Lua script's POST reaches the gateway (gateway
  JSON log: end time minus ``duration_ms``); StableAge, Orthanc's stability check, the POST;
* gateway: that POST -> the study recorded, the job row committed and the task sent (the
  end of the same log line; recording runs after the 202);
* queue wait: task sent -> the worker marks the job running (``started_at``);
* job: ``started_at`` -> ``finished_at``, of which the stages timed on the job row
  (``timings``: fetch, decode, load, preprocess, forward, ...) are the job's own time;
  the rest is the worker's bookkeeping (outputs on disk, database);
* SEG visible: ``finished_at`` -> first QIDO hit (negative when the SEG, stored before the
  job is marked succeeded, is found first).

"Platform" is the total minus StableAge minus the job's own time (target: under 2 s), also
shown with the whole job run (timed stages plus bookkeeping) taken out. The
first study warms the worker up (torch, model load) and is not counted. Never asserts a
time. Quick check: ``.venv/bin/python bench/gateway_arrival.py`` (2 studies); recorded run:
``--studies 5``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from _stack import (
    Site,
    arrival_site,
    header,
    load,
    push_timed,
    storescu,
    tiny_study,
    wait_until,
    workdir,
)
from sqlalchemy import select

from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import InferenceJob, JobStatus

ARRIVAL_ROUTE = "/internal/orthanc/stable-study"


@dataclass
class Arrival:
    """Timestamps (epoch seconds) of one study's way through the platform."""

    pushed: float
    notified: float
    queued: float
    started: float
    finished: float
    visible: float
    stages_s: dict[str, float]

    def segments(self, stable_age_s: float) -> dict[str, float]:
        """The breakdown in seconds (see the module doc)."""
        own = sum(self.stages_s.values())
        total = self.visible - self.pushed
        return {
            "stable wait": self.notified - self.pushed,
            "gateway (record, enqueue)": self.queued - self.notified,
            "queue wait": self.started - self.queued,
            "job stages (own time)": own,
            "worker bookkeeping": self.finished - self.started - own,
            "SEG visible after finish": self.visible - self.finished,
            "total": total,
            "platform (total - StableAge - own)": total - stable_age_s - own,
            "platform (total - StableAge - job run)": (
                total - stable_age_s - (self.finished - self.started)
            ),
        }


def _arrival_posts(site: Site, since: float) -> list[tuple[float, float]]:
    """(start, end) of the Lua script's POSTs that began after ``since``, from the log.

    The log does not say which study a POST was for; the caller makes sure only one study
    can become stable after ``since`` (the previous study's SEG makes it stable once more).
    """
    posts = []
    for line in site.gateway.log_lines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("route") != ARRIVAL_ROUTE:
            continue
        end = datetime.fromisoformat(entry["time"]).timestamp()
        start = end - float(entry["duration_ms"]) / 1000
        if start >= since:
            posts.append((start, end))
    return posts


def _job(site: Site, study_uid: str) -> InferenceJob | None:
    with session_scope(site.database_url) as session:
        query = select(InferenceJob).where(InferenceJob.study_instance_uid == study_uid)
        jobs = list(session.scalars(query))
        session.expunge_all()
    if len(jobs) > 1:
        raise SystemExit(f"{len(jobs)} jobs for one study: arrival is not idempotent")
    return jobs[0] if jobs else None


def one_study(
    site: Site, tmp: Path, dcmsend: str, timeout_s: float, stable_age_s: float
) -> Arrival:
    """Push a new study, wait for its SEG in QIDO, collect the timestamps.

    Waits StableAge + 2 s afterwards: storing the SEG makes the study unstable again, and
    its second stable report must not be taken for the next study's.
    """
    key = f"bench-arrival-{uuid.uuid4().hex}"
    files = tiny_study(tmp / key, key=key)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pushed = push_timed(dcmsend, site.orthanc, files)
    wait_until(lambda: site.seg_series(study_uid), timeout_s=timeout_s, interval_s=0.05)
    visible = time.time()
    job = wait_until(
        lambda: (j := _job(site, study_uid)) is not None and j.status in _DONE and j,
        timeout_s=60,
    )
    if job.status is not JobStatus.SUCCEEDED or job.started_at is None or not job.finished_at:
        raise SystemExit(f"job {job.id} ended {job.status}: {job.error_code}")
    time.sleep(stable_age_s + 2.0)
    posts = _arrival_posts(site, pushed)
    if not posts:
        raise SystemExit("no arrival POST from Orthanc's Lua script in the gateway log")
    notified, queued = posts[0]
    return Arrival(
        pushed=pushed,
        notified=notified,
        queued=queued,
        started=job.started_at.timestamp(),
        finished=job.finished_at.timestamp(),
        visible=visible,
        stages_s={k.removesuffix("_s"): float(v) for k, v in job.timings.items()},
    )


_DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def main() -> None:
    """Start the site, warm it up with one study, measure ``--studies`` more, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=2, help="measured studies")
    parser.add_argument("--stable-age", type=int, default=1, help="Orthanc StableAge, s")
    parser.add_argument("--timeout", type=float, default=300.0, help="per study, s")
    args = parser.parse_args()
    print(header("Study arrival: last C-STORE -> SEG found by QIDO-RS through the gateway"))
    dcmsend = storescu()
    with workdir("bench-arrival-") as tmp, arrival_site(tmp, stable_age_s=args.stable_age) as site:
        warm = one_study(site, tmp, dcmsend, args.timeout, args.stable_age)
        print(f"  warm-up: {warm.visible - warm.pushed:.1f} s (model load included)", flush=True)
        arrivals = []
        for number in range(args.studies):
            arrivals.append(one_study(site, tmp, dcmsend, args.timeout, args.stable_age))
            total = arrivals[-1].visible - arrivals[-1].pushed
            print(f"  study {number + 1}: {total:.2f} s ({load()})", flush=True)
    _report(arrivals, args.stable_age)


def _report(arrivals: list[Arrival], stable_age_s: float) -> None:
    rows = [a.segments(stable_age_s) for a in arrivals]
    stage_rows = [a.stages_s for a in arrivals]
    print(f"{'segment (s)':<36}{'median':>8}{'min':>8}{'max':>8}")
    for name in rows[0]:
        values = [r[name] for r in rows]
        print(f"{name:<36}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    stages = list(stage_rows[0])
    print("job stages (s, median): " + ", ".join(
        f"{s} {statistics.median(r.get(s, 0.0) for r in stage_rows):.2f}" for s in stages
    ))  # fmt: skip
    platform = statistics.median(r["platform (total - StableAge - own)"] for r in rows)
    outside = statistics.median(r["platform (total - StableAge - job run)"] for r in rows)
    print(
        f"platform adds {platform:.2f} s beyond StableAge ({stable_age_s:g} s) and the job's "
        f"timed stages, {outside:.2f} s beyond StableAge and the whole job run "
        f"(target < 2 s); {len(rows)} studies"
    )


if __name__ == "__main__":
    main()
