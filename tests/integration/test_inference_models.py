"""Trained models and bad input through one real inference worker.

A tiny SegResNet bundle and a tiny nnU-Net v2 model are trained on phantoms in this run (the
training package's own functions, a few iterations on CPU); the nnU-Net model is also exported
with nnU-Net's ``export_pretrained_model`` and installed as a manifest-plus-zip artefact. One
real Celery worker process (real Redis, PostgreSQL, Orthanc) serves every job of the module:

- each model's job stores a DICOM-SEG that dciodvfy accepts and whose voxels are exactly what
  ``segment_volume`` gives in this process; the zip artefact gives the folder model's output;
- bad input fails with its own code and sentence, stores no SEG, and the same worker process
  takes the next job: a series too small, all air, all metal, a corrupt instance, a model whose
  labels are not vertebrae;
- Orthanc faults are injected by a small real HTTP proxy in front of the real Orthanc (the
  worker talks to the proxy): 500 answers are retried with backoff and then fail with
  ``upstream_unavailable``; a store that fails leaves no SEG; a refused connection is retried
  until Orthanc is back, and the job then succeeds.
"""

from __future__ import annotations

import os

# nnU-Net reads these once, at import: no worker pools on a small CPU machine.
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pydicom
import pytest
import redis
import torch
from celery import Celery

from spinecloud_inference.backends.nnunet import adopt_model
from spinecloud_inference.dicom_seg import read_dicom_seg
from spinecloud_inference.pipeline import segment_volume
from spinecloud_shared import labels
from spinecloud_shared.db import session_scope
from spinecloud_shared.db.models import InferenceJob, JobStatus, Series, Study
from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import (
    CorruptFileError,
    ImageTooSmallError,
    MetalImageError,
    ModelLabelError,
    NoBodyInImageError,
    UpstreamError,
)
from spinecloud_shared.models.manifest import read_manifest, write_manifest
from spinecloud_shared.orthanc.client import OrthancClient
from spinecloud_shared.orthanc.local import LocalOrthanc
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.queue import create_celery_app, enqueue
from spinecloud_shared.settings import Settings
from spinecloud_shared.task_names import INFERENCE_QUEUE, SEGMENT_SERIES
from spinecloud_shared.volume import Volume
from tests.fixtures.services import REPO_ROOT, CeleryWorker, wait_for
from tests.integration.conftest import require_tool

# The first test's setup trains both models (about two minutes on an idle 2-core machine, far
# more when other test sessions share it); pytest-timeout counts setup, so the limit is wider.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

TIMEOUT_S = 240.0
#: The worker's retry policy: delays 0.5, 1, 2, 4 s, then the job fails.
RETRY_MAX = 4
RETRY_BASE_S = 0.5
SEGRESNET = ("tiny-segresnet", "0.1")
NNUNET = ("tiny-nnunet", "0.1")
NNUNET_ZIP = ("tiny-nnunet-zip", "0.1")
ORGANS = ("organs-nnunet", "1")
LEVELS = ("L4", "sacrum")


# --------------------------------------------------------------------------- phantoms, models


def _phantom(seed: int, orientation: str = "RAS") -> Phantom:
    """A small lower-spine phantom (L4 to the sacrum) at 4 mm."""
    spec = PhantomSpec(
        seed=seed,
        levels=LEVELS,
        spacing_mm=(4.0, 4.0, 4.0),
        fov_mm=(120.0, 100.0),
        orientation=orientation,
    )
    return generate_phantom(spec)


def _sources(seeds: tuple[int, ...]) -> list[Any]:
    from spinecloud_training.data import CaseSource

    def loader(seed: int) -> Callable[[], tuple[Volume, Volume]]:
        def load() -> tuple[Volume, Volume]:
            phantom = _phantom(seed)
            return phantom.ct, phantom.labels

        return load

    return [CaseSource(f"phantom-{seed}", loader(seed)) for seed in seeds]


def _install(folder: Path, models_dir: Path, name: str, version: str) -> Path:
    """Copy an artefact folder to ``<models_dir>/NAME/VERSION`` (where the worker looks)."""
    target = models_dir / name / version
    shutil.copytree(folder, target)
    return target


def _train_segresnet(work: Path) -> Path:
    """A SegResNet bundle (init_filters 4, 4 mm, 32^3 patches) after a few iterations."""
    from spinecloud_training.data import DataSplit
    from spinecloud_training.presets import DEMO, NetworkConfig
    from spinecloud_training.segresnet import TrainRequest, train_segresnet

    preset = DEMO.with_overrides(
        network=NetworkConfig(init_filters=4, norm_groups=4),
        spacing_mm=(4.0, 4.0, 4.0),
        patch_size=(32, 32, 32),
        num_samples=1,
        iterations=4,
        val_every=4,
        checkpoint_every=4,
        sw_batch_size=4,
    )
    request = TrainRequest(
        preset=preset,
        data=DataSplit("phantoms (test)", _sources((0, 1)), _sources((2,))),
        output_dir=work / "bundle",
        work_dir=work / "checkpoints",
        name=SEGRESNET[0],
        version=SEGRESNET[1],
        command="pytest tests/integration/test_inference_models.py",
    )
    result = train_segresnet(request)
    assert result.completed and result.bundle_dir is not None
    return result.bundle_dir


@dataclass(frozen=True)
class TrainedNnUNet:
    """A trained nnU-Net model folder (with manifest) and nnU-Net's own export zip of it."""

    model_folder: Path
    plain_zip: Path


def _train_nnunet(work: Path) -> TrainedNnUNet:
    """nnU-Net v2 3d_fullres, fold "all", 1 epoch of 2 iterations; exported as nnU-Net does."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    from spinecloud_training.nnunet.raw_dataset import write_raw_dataset
    from spinecloud_training.nnunet.train import (
        NnUNetFolders,
        TrainSettings,
        model_manifest,
        nnunet_environment,
        plan_and_preprocess,
        train,
        write_model_manifest,
    )

    folders = NnUNetFolders(work)
    ids = sorted(_phantom(0).level_ids)
    raw = write_raw_dataset(_sources((0, 1, 2)), folders.raw, dataset_id=502, canonical_ids=ids)
    plan_and_preprocess(folders, 502)
    settings = TrainSettings(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1)
    model_folder = train(folders, raw.name, fold="all", settings=settings, device="cpu")
    manifest = model_manifest(model_folder, name=NNUNET[0], version=NNUNET[1], folds=["all"])
    write_model_manifest(model_folder, manifest)
    plain_zip = work / "nnunet_export.zip"
    with nnunet_environment(folders):
        export_pretrained_model(
            raw.name, str(plain_zip), configurations=("3d_fullres",), folds=("all",)
        )
    return TrainedNnUNet(model_folder, plain_zip)


def _zip_artefact(trained: TrainedNnUNet, folder: Path) -> Path:
    """nnU-Net's export zip as a SpineCloud artefact: ``spinecloud.json`` beside ``model.zip``."""
    folder.mkdir(parents=True)
    shutil.copy(trained.plain_zip, folder / "model.zip")
    manifest = read_manifest(trained.model_folder).model_copy(
        update={"name": NNUNET_ZIP[0], "weights_sha256": {"model.zip": ""}}
    )
    write_manifest(manifest, folder)
    return folder


def _organs_artefact(trained: TrainedNnUNet, work: Path, destination: Path) -> Path:
    """The same network published as an organ model: its label names are not vertebrae."""
    copy = work / "organs"
    shutil.copytree(trained.model_folder, copy)
    (copy / "spinecloud.json").unlink()
    dataset_path = copy / "dataset.json"
    dataset = json.loads(dataset_path.read_text())
    organs = ["liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach"]
    values = sorted(v for v in dataset["labels"].values() if v)
    dataset["labels"] = {"background": 0} | dict(zip(organs, values, strict=False))
    dataset_path.write_text(json.dumps(dataset))
    return adopt_model(copy, destination, name=ORGANS[0], version=ORGANS[1])


@dataclass(frozen=True)
class Models:
    """The worker's data folder and each model's installed artefact folder."""

    data_dir: Path
    folders: dict[str, Path]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Both models trained on phantoms, installed under ``<data_dir>/models`` for the worker."""
    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("trained")
    data_dir = tmp_path_factory.mktemp("worker-data")
    models_dir = data_dir / "models"
    trained = _train_nnunet(work / "nnunet")
    folders = {
        SEGRESNET[0]: _install(_train_segresnet(work / "segresnet"), models_dir, *SEGRESNET),
        NNUNET[0]: _install(trained.model_folder, models_dir, *NNUNET),
        NNUNET_ZIP[0]: _zip_artefact(trained, models_dir / NNUNET_ZIP[0] / NNUNET_ZIP[1]),
        ORGANS[0]: _organs_artefact(trained, work, models_dir / ORGANS[0] / ORGANS[1]),
    }
    return Models(data_dir, folders)


# --------------------------------------------------------------------------- fault proxy


class ProxyMode(StrEnum):
    """What the proxy does with a request."""

    PASS = "pass"
    ERROR = "error"  # 500 for every request
    STORE_ERROR = "store_error"  # 500 for POST /instances, the rest passes


class FaultProxy:
    """A real HTTP server in front of Orthanc that forwards, answers 500, or is closed.

    Closed means no socket listens on its port: clients get "connection refused". The port is
    kept and listened on again by ``reopen``.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = ProxyMode.PASS
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._client = httpx.Client(timeout=60.0)
        self.reopen()

    @property
    def url(self) -> str:
        """Where clients send their requests."""
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            hop_by_hop: ClassVar[set[str]] = {
                "connection",
                "keep-alive",
                "transfer-encoding",
                "content-length",
                "content-encoding",
            }

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                store = self.command == "POST" and self.path.rstrip("/") == "/instances"
                if proxy.mode is ProxyMode.ERROR or (proxy.mode is ProxyMode.STORE_ERROR and store):
                    self._answer(500, {"Content-Type": "text/plain"}, b"injected failure")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                response = proxy._client.request(
                    self.command, proxy.upstream + self.path, headers=headers, content=body
                )
                kept = {
                    k: v for k, v in response.headers.items() if k.lower() not in self.hop_by_hop
                }
                self._answer(response.status_code, kept, response.content)

            def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the worker's log says what it saw."""

        return Handler

    def reopen(self) -> None:
        """Listen (again, on the same port once one was chosen) and serve in a thread."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop listening: connections to the port are refused until ``reopen``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
        self._client.close()


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def proxy(private_orthanc: LocalOrthanc) -> Iterator[FaultProxy]:
    """The fault-injecting proxy the worker uses as its Orthanc."""
    with FaultProxy(private_orthanc.url) as server:
        yield server


@pytest.fixture()
def healthy_proxy(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy, forwarding, at the start and end of the test whatever the test did."""
    proxy.mode = ProxyMode.PASS
    if proxy._server is None:
        proxy.reopen()
    try:
        yield proxy
    finally:
        proxy.mode = ProxyMode.PASS
        if proxy._server is None:
            proxy.reopen()


@pytest.fixture(scope="module")
def module_redis_url(_redis_test_db: str) -> Iterator[str]:
    """This session's Redis database, emptied before and after the module's worker runs."""
    connection = redis.Redis.from_url(_redis_test_db)
    connection.flushdb()
    try:
        yield _redis_test_db
    finally:
        connection.flushdb()
        connection.close()


@dataclass
class Worker:
    """The module's inference worker and the pid of its pool process at the start."""

    process: CeleryWorker
    app: Celery
    pool_pids: list[int]

    def assert_alive(self) -> None:
        """The same worker (main and pool processes) is still up and answers a ping."""
        assert self.process.popen.poll() is None, self.process.log()
        assert self.process.ping(timeout_s=5.0), self.process.log()
        assert self.process.pool_pids() == self.pool_pids, "the pool process was replaced"


@pytest.fixture(scope="module")
def worker(
    models: Models,
    proxy: FaultProxy,
    private_orthanc: LocalOrthanc,
    module_redis_url: str,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    """One real ``celery worker`` on the inference queue for the whole module."""
    logs = tmp_path_factory.mktemp("worker-logs")
    env = dict(os.environ)
    for key in ("SPINECLOUD_TASK_MODULES", "SPINECLOUD_EXTRA_TASK_MODULES", "nnUNet_def_n_proc"):
        env.pop(key, None)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        SPINECLOUD_TASK_MODULES="spinecloud_inference.tasks",
        SPINECLOUD_REDIS_URL=module_redis_url,
        SPINECLOUD_DATABASE_URL=postgres_url,
        SPINECLOUD_DATA_DIR=str(models.data_dir),
        SPINECLOUD_ARTIFACT_DIR=str(logs / "artifacts"),
        SPINECLOUD_ORTHANC_URL=proxy.url,
        SPINECLOUD_ORTHANC_USERNAME=private_orthanc.username,
        SPINECLOUD_ORTHANC_PASSWORD=private_orthanc.password,
        SPINECLOUD_INFERENCE_RETRY_MAX=str(RETRY_MAX),
        SPINECLOUD_INFERENCE_RETRY_BASE_S=str(RETRY_BASE_S),
        SPINECLOUD_INFERENCE_NNUNET_PROCESSES="1",
    )
    unique = f"inference-{uuid.uuid4().hex[:8]}"
    log_path = logs / f"{unique}.log"
    command = [
        sys.executable, "-m", "celery", "-A", "spinecloud_shared.queue:celery_app", "worker",
        "-Q", INFERENCE_QUEUE, "--concurrency", "1", "--pool", "prefork", "-n", f"{unique}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client_app = create_celery_app(Settings(redis_url=module_redis_url))
    process = CeleryWorker(popen, f"{unique}@{socket.gethostname()}", log_path, client_app)
    try:
        process.wait_ready(timeout_s=180.0)
        yield Worker(process, client_app, process.pool_pids())
    finally:
        process.stop()


# --------------------------------------------------------------------------- jobs


def _push(client: OrthancClient, ct: Volume, folder: Path, key: str) -> Path:
    """Write ``ct`` as a DICOM CT series into ``folder`` and store it in Orthanc."""
    paths = write_ct_series(ct, folder, key=key)
    client.store_many(path.read_bytes() for path in paths)
    return folder


def _create_job(url: str, client: OrthancClient, folder: Path, model: tuple[str, str]) -> str:
    """Study, Series and InferenceJob rows as the gateway creates them."""
    first = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    with session_scope(url) as session:
        study = session.query(Study).filter_by(study_instance_uid=study_uid).one_or_none()
        if study is None:
            study = Study(study_instance_uid=study_uid)
            session.add(study)
            session.flush()
        series = session.query(Series).filter_by(series_instance_uid=series_uid).one_or_none()
        if series is None:
            series = Series(
                series_instance_uid=series_uid,
                orthanc_id=client.find_series(series_uid),
                study_id=study.id,
                modality="CT",
            )
            session.add(series)
            session.flush()
        job = InferenceJob(
            series_id=series.id,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            model_name=model[0],
            model_version=model[1],
        )
        session.add(job)
        session.flush()
        return str(job.id)


def _job(url: str, job_id: str) -> InferenceJob:
    with session_scope(url) as session:
        return session.get_one(InferenceJob, job_id)


def _finished(url: str, job_id: str) -> InferenceJob | None:
    job = _job(url, job_id)
    return job if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) else None


def _enqueue(app: Celery, job_id: str) -> None:
    enqueue(SEGMENT_SERIES, {"job_id": job_id}, queue=INFERENCE_QUEUE, app=app)


def _run(url: str, worker: Worker, job_id: str) -> InferenceJob:
    _enqueue(worker.app, job_id)
    job: InferenceJob = wait_for(lambda: _finished(url, job_id), timeout_s=TIMEOUT_S)
    return job


def _seg_instances(client: OrthancClient, study_uid: str) -> list[str]:
    query: dict[str, Any] = {
        "Level": "Instance",
        "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"},
    }
    return list(client.api.post_tools_find(query).json())


def _requeue(url: str, job_id: str) -> None:
    with session_scope(url) as session:
        session.get_one(InferenceJob, job_id).mark(JobStatus.QUEUED)


def _assert_failed(job: InferenceJob, code: str, client: OrthancClient) -> None:
    """Failed with ``code`` and a sentence, and no SEG stored in the job's study."""
    assert job.status is JobStatus.FAILED, (job.status, job.error_code, job.error_message)
    assert job.error_code == code, job.error_message
    assert job.error_message, "a failure must carry a sentence"
    assert _seg_instances(client, job.study_instance_uid) == []


def _segment_good_series(
    url: str, worker: Worker, client: OrthancClient, folder: Path, key: str
) -> InferenceJob:
    """The worker still takes work: a good series segmented and stored."""
    series = _push(client, _phantom(31).ct, folder, key)
    job = _run(url, worker, _create_job(url, client, series, SEGRESNET))
    assert job.status is JobStatus.SUCCEEDED, job.error_message
    assert len(_seg_instances(client, job.study_instance_uid)) == 1
    return job


# --------------------------------------------------------------------------- models


def test_both_backends_serve_through_one_worker_as_the_pipeline_does(
    worker: Worker,
    healthy_proxy: FaultProxy,
    models: Models,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    dciodvfy = require_tool("dciodvfy")
    folder = _push(private_client, _phantom(21, "LPS").ct, tmp_path / "ct", "models-lps")
    source = read_dicom_series(folder)
    direct: dict[str, Volume] = {}
    seg_ids: list[str] = []
    # The zip artefact must serve exactly what the folder model serves: its SEG is compared
    # with the folder model's direct result.
    for model, served_as in ((SEGRESNET, SEGRESNET), (NNUNET, NNUNET), (NNUNET_ZIP, NNUNET)):
        job = _run(postgres_url, worker, _create_job(postgres_url, private_client, folder, model))
        assert job.status is JobStatus.SUCCEEDED, (model, job.error_code, job.error_message)
        seg_id = job.outputs["seg_orthanc_id"]
        seg_bytes = private_client.instance_file(seg_id)
        seg_path = tmp_path / f"{model[0]}.dcm"
        seg_path.write_bytes(seg_bytes)
        report = subprocess.run(
            [dciodvfy, str(seg_path)], capture_output=True, text=True, timeout=120, check=False
        )
        assert not [line for line in (report.stdout + report.stderr).splitlines()
                    if line.startswith("Error")], report.stderr  # fmt: skip
        seg = pydicom.dcmread(BytesIO(seg_bytes))
        stored = read_dicom_seg(seg, source)
        if served_as[0] not in direct:
            model_folder = models.folders[served_as[0]]
            direct[served_as[0]] = segment_volume(source, model_folder, device="cpu").labels
        expected = direct[served_as[0]]
        assert stored.same_grid(expected)
        np.testing.assert_array_equal(stored.array, expected.array)
        present = set(np.unique(expected.array).tolist()) - {0}
        assert present, f"{model[0]} found no vertebra; the SEG would be empty"
        names = {str(item.SegmentLabel) for item in seg.SegmentSequence}
        assert names == {labels.by_id(i).name for i in present}
        assert job.attempts == 1 and job.outputs["seg_sop_instance_uid"] == seg.SOPInstanceUID
        seg_ids.append(seg_id)
    # Three model keys, three SEGs in the study.
    assert sorted(_seg_instances(private_client, job.study_instance_uid)) == sorted(seg_ids)
    assert len(set(seg_ids)) == 3
    worker.assert_alive()


# --------------------------------------------------------------------------- bad input


def _too_small(ct: Volume) -> Volume:
    """Three 4 mm slices: 12 mm, less than a vertebra."""
    return Volume(ct.array[:, :, 10:13].copy(), ct.affine_ras)


def _all_air(ct: Volume) -> Volume:
    return ct.with_array(np.full(ct.shape, -1000, dtype=np.int16))


def _all_metal(ct: Volume) -> Volume:
    return ct.with_array(np.full(ct.shape, 3071, dtype=np.int16))


@pytest.mark.parametrize(
    ("case", "change", "code"),
    [
        ("too-small", _too_small, ImageTooSmallError.code),
        ("all-air", _all_air, NoBodyInImageError.code),
        ("all-metal", _all_metal, MetalImageError.code),
    ],
)
def test_unsuitable_series_fail_with_their_code(
    case: str,
    change: Callable[[Volume], Volume],
    code: str,
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = _push(private_client, change(_phantom(22).ct), tmp_path / case, f"bad-{case}")
    job = _run(postgres_url, worker, _create_job(postgres_url, private_client, folder, SEGRESNET))
    _assert_failed(job, code, private_client)
    assert job.attempts == 1
    worker.assert_alive()


def test_corrupt_instance_fails_and_the_worker_takes_the_next_job(
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "corrupt"
    paths = write_ct_series(_phantom(23).ct, folder, key="bad-corrupt")
    broken = pydicom.dcmread(paths[len(paths) // 2])
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
    broken.save_as(paths[len(paths) // 2])
    private_client.store_many(path.read_bytes() for path in paths)
    job = _run(postgres_url, worker, _create_job(postgres_url, private_client, folder, SEGRESNET))
    _assert_failed(job, CorruptFileError.code, private_client)
    assert "pixel data" in (job.error_message or "")
    worker.assert_alive()
    _segment_good_series(postgres_url, worker, private_client, tmp_path / "next", "after-corrupt")
    worker.assert_alive()


def test_model_whose_labels_are_not_vertebrae_fails(
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = _push(private_client, _phantom(24).ct, tmp_path / "ct", "organs-model")
    job = _run(postgres_url, worker, _create_job(postgres_url, private_client, folder, ORGANS))
    _assert_failed(job, ModelLabelError.code, private_client)
    assert "no output channel maps to a vertebra" in (job.error_message or "")
    worker.assert_alive()


# --------------------------------------------------------------------------- Orthanc faults


def _retry_delays(worker: Worker) -> list[float]:
    """The countdowns of the Orthanc retries the worker logged so far, in order."""
    found = re.findall(r"retry: Retry in ([0-9.]+)s: UpstreamError", worker.process.log())
    return [float(value) for value in found]


def test_orthanc_500_is_retried_with_backoff_then_fails(
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = _push(private_client, _phantom(25).ct, tmp_path / "ct", "orthanc-500")
    job_id = _create_job(postgres_url, private_client, folder, SEGRESNET)
    before = len(_retry_delays(worker))
    healthy_proxy.mode = ProxyMode.ERROR
    job = _run(postgres_url, worker, job_id)
    _assert_failed(job, UpstreamError.code, private_client)
    assert "500" in (job.error_message or "")
    assert job.attempts == RETRY_MAX + 1
    delays = _retry_delays(worker)[before:]
    assert delays == [RETRY_BASE_S * 2**n for n in range(RETRY_MAX)]
    worker.assert_alive()


def test_failed_store_leaves_no_seg_and_a_rerun_stores_one(
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = _push(private_client, _phantom(26).ct, tmp_path / "ct", "store-500")
    job_id = _create_job(postgres_url, private_client, folder, SEGRESNET)
    healthy_proxy.mode = ProxyMode.STORE_ERROR
    job = _run(postgres_url, worker, job_id)
    _assert_failed(job, UpstreamError.code, private_client)
    assert job.attempts == RETRY_MAX + 1
    healthy_proxy.mode = ProxyMode.PASS
    _requeue(postgres_url, job_id)
    again = _run(postgres_url, worker, job_id)
    assert again.status is JobStatus.SUCCEEDED, again.error_message
    assert _seg_instances(private_client, again.study_instance_uid) == [
        again.outputs["seg_orthanc_id"]
    ]
    worker.assert_alive()


def test_refused_connection_is_retried_until_orthanc_is_back(
    worker: Worker,
    healthy_proxy: FaultProxy,
    private_client: OrthancClient,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    folder = _push(private_client, _phantom(27).ct, tmp_path / "ct", "orthanc-down")
    job_id = _create_job(postgres_url, private_client, folder, SEGRESNET)
    healthy_proxy.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(healthy_proxy.url)
    _enqueue(worker.app, job_id)
    wait_for(lambda: _job(postgres_url, job_id).attempts >= 2, timeout_s=TIMEOUT_S)
    assert _job(postgres_url, job_id).status is JobStatus.RUNNING
    healthy_proxy.reopen()
    job: InferenceJob = wait_for(lambda: _finished(postgres_url, job_id), timeout_s=TIMEOUT_S)
    assert job.status is JobStatus.SUCCEEDED, (job.error_code, job.error_message)
    assert job.attempts >= 2
    assert _seg_instances(private_client, job.study_instance_uid) == [job.outputs["seg_orthanc_id"]]
    worker.assert_alive()
