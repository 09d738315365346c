"""Benchmark: ``spinecloud segment`` with the default model on a CT series, end to end, by stage.

The main job as a newcomer runs it: a phantom CT written as a DICOM series (LPS axial slices,
int16, Explicit VR Little Endian) into a temporary folder, then ``spinecloud segment FOLDER -o
OUT --device cpu`` in a fresh process with the default model (``spine-segresnet-demo``). The
command is run through the ``spinecloud`` entry point inside a worker process that wraps the
functions of each stage with timers (wall and process CPU seconds; the wrappers add nothing
measurable), so one run gives the wall time, the stages and the peak memory:

* ``startup``: interpreter start, imports, command-line parsing and everything not in a stage;
* ``read/decode``: reading, validating, sorting and decoding the series (``read_input``);
* ``load model``: finding, verifying and loading the model (pipeline stage ``load``);
* ``preprocess``: input checks, reorientation, resampling and normalisation;
* ``forward``: the sliding-window pass; inside it, ``network`` is the time spent in the
  network's forward calls and ``sliding window`` the rest (padding, blending, argmax);
* ``postprocess``: back onto the source grid, cleaning, summary and plausibility checks;
* ``SEG encode`` and ``write`` (NIfTI, centroids, summary and preview).

Platform overhead is the wall time minus the network forward calls, as a share of the wall
time. Peak memory is the worker's RSS high-water mark (``ru_maxrss``). ``--plain`` also runs
the unwrapped ``spinecloud segment`` command as a peer, to show the wrappers cost nothing.
``--profile FILE`` writes a cProfile of the worker (the tool used to find the bottlenecks);
``--overlap F`` passes ``--overlap F`` to the command (default: the command's, 0.5).

``--job`` measures the job as the Celery worker runs it instead (what the platform target
describes: a long-lived worker, model loaded, no interpreter start): in one process, the
worker's own ``worker_job.run_segment_job`` with an Orthanc stand-in that returns the series'
files from disk and accepts the SEG, and a stand-in database session, first on a small
warm-up series (imports, model load, first forward), then on the measured series. Its stages
are the ones the worker records on the job row (``fetch``, ``decode``, ``load``,
``preprocess``, ``forward``, ``postprocess``, ``encode``, ``write``, ``store``), plus the
network calls inside ``forward``; ``fetch`` is a disk read here, not HTTP.

``--paper`` runs an untrained SegResNet of the ``paper`` preset (32 filters, 1.5 mm, 96^3
windows, DESIGN.md Models) instead of the demo model: the training package's bundle writer
saves it with random weights into the temporary folder (never committed). Its network is
about a hundred times the demo's work per window, so the overhead share is measured on a
network of the size the target concerns. Slow on two CPU cores (4-8 min per series).

Sizes: ``--shape X Y Z`` (default 128 x 128 x 75, a quick check); the recorded run uses
``--shape 512 512 300``. The field of view is always about 410 x 410 x 300 mm (spacing 0.8 x 0.8
x 1.0 mm at the documented size), so a smaller shape is the same body at a coarser spacing.
Targets (never asserted): under 60 s, overhead at most 20 %, peak RSS under 8 GB on CPU.
Run: ``.venv/bin/python bench/inference_e2e.py --shape 512 512 300``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

FOV_MM = (409.6, 409.6, 300.0)
TARGET_S, TARGET_OVERHEAD, TARGET_RSS_GB = 60.0, 0.20, 8.0
#: The small series (shape, field of view in mm) the ``--job`` mode runs first, so that the
#: measured job finds a warm worker; small in millimetres too, so that the paper model's
#: warm-up is a few windows, not a whole study.
WARMUP_SHAPE, WARMUP_FOV_MM = (64, 64, 48), (160.0, 160.0, 96.0)
LEVELS = ("T10", "sacrum")
#: Stages in the order they run: (key, label).
STAGES = (
    ("startup", "startup (imports, CLI)"),
    ("read", "read/decode"),
    ("load", "load model"),
    ("preprocess", "preprocess/resample"),
    ("forward", "forward"),
    ("network", "  network calls"),
    ("window", "  sliding window"),
    ("postprocess", "postprocess"),
    ("seg", "SEG encode"),
    ("write", "write (NIfTI, JSON, PNG)"),
)


# --------------------------------------------------------------------------- data


def phantom_series(
    shape: tuple[int, int, int],
    folder: Path,
    seed: int = 0,
    fov_mm: tuple[float, float, float] = FOV_MM,
) -> float:
    """Write a phantom CT of exactly ``shape`` as a DICOM series; the seconds it took.

    The phantom covers T10 to the sacrum; it is cropped (or padded with air) along z to
    ``shape[2]`` slices around its middle. In-plane the field of view is fitted so that the
    phantom generator's grid has exactly ``shape[0] x shape[1]`` voxels.
    """
    from spinecloud_shared.dicom_write import write_ct_series
    from spinecloud_shared.phantom import PhantomSpec, generate_phantom
    from spinecloud_shared.volume import Volume

    start = time.perf_counter()
    spacing = tuple(f / n for f, n in zip(fov_mm, shape, strict=True))
    # The generator's axis has ceil(fov / step) + 1 samples: (n - 1.5) steps give n.
    fov = ((shape[0] - 1.5) * spacing[0], (shape[1] - 1.5) * spacing[1])
    spec = PhantomSpec(
        seed=seed,
        levels=LEVELS,
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        orientation="LPS",
        fov_mm=fov,
    )
    ct = generate_phantom(spec).ct
    array, n_z = ct.array, shape[2]
    first = (array.shape[2] - n_z) // 2
    if first < 0:
        pad = (-first, n_z - array.shape[2] + first)
        array = np.pad(array, ((0, 0), (0, 0), pad), constant_values=-1000)
    else:
        array = array[:, :, first : first + n_z]
    affine = ct.affine_ras.copy()
    affine[:3, 3] = (affine @ np.array([0.0, 0.0, float(first), 1.0]))[:3]
    volume = Volume(np.ascontiguousarray(array[:, :, :n_z]), affine)
    if volume.shape != shape:
        raise SystemExit(f"phantom grid {volume.shape} is not the requested {shape}")
    write_ct_series(volume, folder, key=f"bench-inference-e2e:{shape}:{seed}")
    return time.perf_counter() - start


def paper_bundle(models_dir: Path) -> str:
    """Write an untrained ``paper``-preset SegResNet bundle under ``models_dir``; its reference.

    Random weights (seeded), the training package's own ``write_bundle``: the same artefact a
    training run of the paper preset leaves, minus the training.
    """
    import torch

    from spinecloud_shared.models.manifest import Lineage
    from spinecloud_training.bundle import BundleInfo, write_bundle
    from spinecloud_training.data import DEFAULT_CHANNELS
    from spinecloud_training.presets import PAPER
    from spinecloud_training.segresnet import build_network

    name, version = "bench-paper-segresnet", "0.0.1"
    torch.manual_seed(0)
    network = build_network(PAPER, len(DEFAULT_CHANNELS))
    info = BundleInfo(
        name=name,
        version=version,
        description="untrained paper-preset SegResNet (bench/inference_e2e.py, random weights)",
        channels=DEFAULT_CHANNELS,
        lineage=Lineage(dataset="none: random weights for a timing benchmark"),
        metrics={},
    )
    write_bundle(models_dir / name / version, network.state_dict(), PAPER, info)
    return f"{name}@{version}"


# --------------------------------------------------------------------------- worker


class _Timers:
    """Wall and CPU seconds summed per stage key."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - wall
            self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - cpu

    def wrap(self, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.timed(key):
                return function(*args, **kwargs)

        return timed_call


def _instrument(timers: _Timers) -> None:
    """Put timers around the functions of each stage (module attributes the code looks up)."""
    from spinecloud_inference import cli, outputs, pipeline
    from spinecloud_inference.backends import monai_bundle

    cli.read_input = timers.wrap("read", cli.read_input)
    pipeline.load_model = timers.wrap("load", pipeline.load_model)
    pipeline.check_input = timers.wrap("preprocess", pipeline.check_input)
    pipeline.prepare = timers.wrap("preprocess", pipeline.prepare)
    for name in ("to_source_grid", "clean_labels", "summarise", "check_plausibility"):
        setattr(pipeline, name, timers.wrap("postprocess", getattr(pipeline, name)))
    outputs.write_dicom_seg = timers.wrap("seg", outputs.write_dicom_seg)
    outputs.write_nifti = timers.wrap("write_nifti", outputs.write_nifti)
    outputs.write_preview = timers.wrap("write_preview", outputs.write_preview)
    write_outputs = outputs.write_outputs
    outputs.write_outputs = timers.wrap("outputs", write_outputs)
    call = monai_bundle._CountingPredictor.__call__
    monai_bundle._CountingPredictor.__call__ = timers.wrap("network", call)  # type: ignore[method-assign]
    predict = monai_bundle.MonaiBundleBackend.predict
    monai_bundle.MonaiBundleBackend.predict = timers.wrap("forward", predict)  # type: ignore[method-assign]


def worker(series: Path, out: Path, model: str, profile: Path | None, extra: list[str]) -> None:
    """Run ``spinecloud segment`` in this process with stage timers; print them as JSON."""
    from spinecloud_shared.cli.app import main as spinecloud

    timers = _Timers()
    _instrument(timers)
    sys.argv = ["spinecloud", "segment", str(series), "-o", str(out), "--device", "cpu"]
    sys.argv += ["--model", model, *extra]
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        spinecloud()
    except SystemExit as exc:
        if exc.code:
            raise
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"wall": timers.wall, "cpu": timers.cpu, "peak_rss_mb": peak_mb}))


class _FakeOrthanc:
    """Stands in for the Orthanc client: the series' files from a folder; the SEG is kept."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stored: list[bytes] = []

    def series_files(self, orthanc_id: str) -> list[bytes]:
        return [path.read_bytes() for path in sorted(self.folder.iterdir()) if path.is_file()]

    def find_series(self, series_instance_uid: str) -> str:
        return "bench-series"

    def store(self, data: bytes) -> dict[str, Any]:
        self.stored.append(data)
        return {"ID": "bench-seg"}


def _fake_session_factory(folder: Path, model_ref: str) -> tuple[Any, dict[str, Any]]:
    """A session factory whose job and series rows are plain objects; and the job's fields."""
    from types import SimpleNamespace

    import pydicom

    from spinecloud_shared.db.models import InferenceJob, JobStatus, Series

    first = pydicom.dcmread(
        next(p for p in sorted(folder.iterdir()) if p.is_file()), stop_before_pixels=True
    )
    name, version = model_ref.split("@")
    job = SimpleNamespace(
        status=JobStatus.RUNNING,
        series_id="bench-series",
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(first.StudyInstanceUID),
        model_name=name,
        model_version=version,
        timings=None,
        findings=None,
        outputs=None,
    )
    series = SimpleNamespace(orthanc_id="bench-series")

    class Session:
        def get(self, model: Any, key: str) -> Any:
            return {InferenceJob: job, Series: series}.get(model)

    @contextmanager
    def factory() -> Iterator[Session]:
        yield Session()

    return factory, job.__dict__


def job_worker(warmup: Path, series: Path, out: Path, model: str, models_dir: Path | None) -> None:
    """Run the worker's job function on the warm-up series, then (timed) on ``series``."""
    from spinecloud_inference import worker_job
    from spinecloud_inference.backends import monai_bundle

    timers = _Timers()
    call = monai_bundle._CountingPredictor.__call__
    monai_bundle._CountingPredictor.__call__ = timers.wrap("network", call)  # type: ignore[method-assign]
    if model == "spine-segresnet-demo":
        model = "spine-segresnet-demo@0.1.0"
    results = []
    for folder, tag in ((warmup, "warmup"), (series, "measured")):
        factory, row = _fake_session_factory(folder, model)
        timers.wall.pop("network", None)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        worker_job.run_segment_job(
            f"bench-{tag}",
            session_factory=factory,
            orthanc=_FakeOrthanc(folder),  # type: ignore[arg-type]
            models_dir=models_dir,
            artifact_dir=out / tag,
        )
        wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        results.append(
            {
                "tag": tag,
                "wall": wall,
                "cpu": cpu,
                "network": timers.wall.get("network", 0.0),
                "stages": row["timings"],
            }
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"jobs": results, "peak_rss_mb": peak_mb}))


_JOB_STAGES = (
    "fetch",
    "decode",
    "load",
    "preprocess",
    "forward",
    "postprocess",
    "encode",
    "write",
    "store",
)


def _report_job(result: dict[str, Any], peak_mb: float) -> None:
    """Per-stage table of the measured (warm) job as the worker records it."""
    total, network = result["wall"], result["network"]
    stages = {k.removesuffix("_s"): float(v) for k, v in result["stages"].items()}
    print(f"{'stage (job row)':<26}{'wall s':>9}{'share':>8}")
    for key in _JOB_STAGES:
        value = stages.get(key, 0.0)
        print(f"{key:<26}{value:>9.2f}{100 * value / total:>7.1f}%")
        if key == "forward":
            print(f"{'  network calls':<26}{network:>9.2f}{100 * network / total:>7.1f}%")
    other = total - sum(stages.get(k, 0.0) for k in _JOB_STAGES)
    print(f"{'other (checks, DB rows)':<26}{other:>9.2f}{100 * other / total:>7.1f}%")
    print(f"{'total (job wall)':<26}{total:>9.2f}{100.0:>7.1f}%   CPU {result['cpu']:.2f} s")
    overhead = (total - network) / total
    print(
        f"platform overhead (all but the network calls): {total - network:.1f} s = "
        f"{100 * overhead:.1f} % of the job's wall time (target at most "
        f"{100 * TARGET_OVERHEAD:.0f} %); network {network:.1f} s"
    )
    print(f"peak RSS {peak_mb / 1024:.2f} GB (target under {TARGET_RSS_GB:.0f} GB)")


# --------------------------------------------------------------------------- driver


def _run(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stdout of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _stages(measured: dict[str, float], total: float) -> dict[str, float]:
    """Stage key -> seconds (wall or CPU), with the derived stages filled in."""
    got = dict(measured)
    outputs = got.pop("outputs", 0.0)
    stages = {key: got.get(key, 0.0) for key, _ in STAGES}
    stages["window"] = stages["forward"] - stages["network"]
    stages["write"] = outputs - stages["seg"]
    counted = sum(v for k, v in stages.items() if k not in ("network", "window", "startup"))
    stages["startup"] = total - counted
    return stages


def _report(wall: dict[str, float], cpu: dict[str, float], total: float, peak_mb: float) -> None:
    print(f"{'stage':<26}{'wall s':>9}{'share':>8}{'CPU s':>9}{'CPU share':>10}")
    cpu_total = sum(v for k, v in cpu.items() if k not in ("network", "window"))
    for key, label in STAGES:
        print(
            f"{label:<26}{wall[key]:>9.2f}{100 * wall[key] / total:>7.1f}%"
            f"{cpu[key]:>9.2f}{100 * cpu[key] / cpu_total:>9.1f}%"
        )
    print(f"{'total':<26}{total:>9.2f}{100.0:>7.1f}%{cpu_total:>9.2f}{100.0:>9.1f}%")
    overhead = (total - wall["network"]) / total
    cpu_overhead = (cpu_total - cpu["network"]) / cpu_total
    print(
        f"wall {total:.1f} s = {total / TARGET_S:.2f}x the {TARGET_S:.0f} s target; "
        f"network forward calls {wall['network']:.1f} s"
    )
    print(
        f"platform overhead (all but the network calls): {100 * overhead:.1f} % of wall, "
        f"{100 * cpu_overhead:.1f} % of CPU time (target at most {100 * TARGET_OVERHEAD:.0f} %); "
        f"overhead / network = {(total - wall['network']) / max(wall['network'], 1e-9):.2f}x"
    )
    print(
        f"peak RSS {peak_mb / 1024:.2f} GB (target under {TARGET_RSS_GB:.0f} GB: "
        f"{peak_mb / 1024 / TARGET_RSS_GB:.2f}x the limit)"
    )


def _job_mode(
    tmp: Path, series: Path, shape: tuple[int, int, int], model: str, models: list[str]
) -> None:
    """``--job``: the worker's job function, warmed up on a small series, then measured."""
    warmup = tmp / "warmup"
    phantom_series(WARMUP_SHAPE, warmup, seed=1, fov_mm=WARMUP_FOV_MM)
    command = [sys.executable, __file__, "--job-worker", str(warmup), str(series)]
    command += ["--out", f"{tmp}/out", "--model", model, *models]
    _wall, _cpu, stdout = _run(command)
    result = json.loads(stdout.strip().splitlines()[-1])
    print(
        f"worker job (run_segment_job in-process, warm: after a {WARMUP_SHAPE} "
        f"({WARMUP_FOV_MM} mm) warm-up "
        f"job taking {result['jobs'][0]['wall']:.1f} s), {shape} CT series, model {model}, CPU"
    )
    _report_job(result["jobs"][-1], result["peak_rss_mb"])


def main() -> None:
    """Write the series, run the instrumented command (and the plain one), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 75))
    parser.add_argument("--model", default="spine-segresnet-demo")
    parser.add_argument("--series", type=Path, help="reuse (or create) this series folder")
    parser.add_argument("--plain", action="store_true", help="also run the unwrapped command")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the worker here")
    parser.add_argument("--overlap", type=float, help="pass --overlap to spinecloud segment")
    parser.add_argument("--job", action="store_true", help="time the worker's job, warm")
    parser.add_argument("--paper", action="store_true", help="untrained paper-size SegResNet")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--job-worker", type=Path, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        extra = [] if args.overlap is None else ["--overlap", str(args.overlap)]
        if args.models_dir is not None:
            extra += ["--models-dir", str(args.models_dir)]
        worker(args.worker, args.out, args.model, args.profile, extra)
        return
    if args.job_worker:
        warmup, measured = args.job_worker
        job_worker(warmup, measured, args.out, args.model, args.models_dir)
        return
    shape = (args.shape[0], args.shape[1], args.shape[2])
    with tempfile.TemporaryDirectory() as tmp:
        series = args.series or Path(tmp) / "series"
        if not (series.is_dir() and any(series.iterdir())):
            seconds = phantom_series(shape, series)
            print(f"wrote a {shape} phantom CT series to {series} in {seconds:.1f} s")
        models: list[str] = []
        if args.paper:
            args.model = paper_bundle(Path(tmp) / "models")
            models = ["--models-dir", f"{tmp}/models"]
            print(f"wrote the untrained paper-preset bundle {args.model} under {tmp}/models")
        if args.job:
            _job_mode(Path(tmp), series, shape, args.model, models)
            return
        command = [sys.executable, __file__, "--worker", str(series), "--out", f"{tmp}/out"]
        command += ["--model", args.model, *models]
        if args.overlap is not None:
            command += ["--overlap", str(args.overlap)]
        if args.profile:
            command += ["--profile", str(args.profile)]
        wall, cpu_s, stdout = _run(command)
        result = json.loads(stdout.strip().splitlines()[-1])
        print(f"spinecloud segment, {shape} CT series, model {args.model}, --device cpu")
        _report(
            _stages(result["wall"], wall),
            _stages(result["cpu"], cpu_s),
            wall,
            result["peak_rss_mb"],
        )
        if args.plain:
            spinecloud = Path(sys.executable).parent / "spinecloud"
            plain_cmd = [str(spinecloud), "segment", str(series), "-o", f"{tmp}/plain"]
            plain_cmd += ["--device", "cpu", "--model", args.model, *models]
            if args.overlap is not None:
                plain_cmd += ["--overlap", str(args.overlap)]
            plain_wall, plain_cpu, _ = _run(plain_cmd)
            print(
                f"plain `spinecloud segment` (peer, no timers): {plain_wall:.1f} s wall, "
                f"{plain_cpu:.1f} s CPU; instrumented / plain = {wall / plain_wall:.2f}x"
            )


if __name__ == "__main__":
    main()
