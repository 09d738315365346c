"""End to end, with real components only: a CT arrives by C-STORE, a DICOM-SEG comes back.

storescu pushes a study into Orthanc; nothing else is called. Orthanc's Lua script (and the
gateway's ``/changes`` poller) tell the gateway, which records the study and queues a job; a
Celery inference worker segments the series with the default model and stores a DICOM-SEG
into the same study. A clinician then finds and retrieves it with dicomweb-client through the
gateway, other callers see nothing, and the audit log holds every retrieval. The study is
pushed twice, arrives while the gateway is down, and is processed by a worker that is
SIGKILLed mid-job: each time exactly one job and one SEG.

The stack is started by the tests (``tests/fixtures/e2e.py``) or, with
``SPINECLOUD_E2E_GATEWAY_URL`` and friends set, is an external (docker compose) stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from spinecloud_inference.dicom_seg import read_dicom_seg
from spinecloud_shared.db.models import InferenceJob, JobStatus, Role
from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.dicom_uids import assign_missing_uids
from spinecloud_shared.dicom_write import write_datasets
from tests.fixtures.e2e import (
    E2EStack,
    api_token,
    audit_rows,
    external_stack,
    jobs_of_study,
    local_stack,
    write_small_study,
)
from tests.fixtures.services import PostgresDatabases
from tests.integration.conftest import require_tool

pytestmark = pytest.mark.integration

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2EStack]:
    """The stack under test: external when ``SPINECLOUD_E2E_GATEWAY_URL`` is set, else local
    (then, and only then, on the local PostgreSQL and Redis of the test fixtures)."""
    require_tool("storescu")
    external = external_stack()
    if external is not None:
        yield external
        return
    require_tool("Orthanc")
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    redis_db: str = request.getfixturevalue("_redis_test_db")
    with local_stack(tmp_path_factory.mktemp("e2e"), databases, redis_db) as local:
        yield local


@pytest.fixture(scope="module")
def storescu() -> str:
    """The dcmtk C-STORE client."""
    return require_tool("storescu")


@dataclass
class Arrived:
    """A study pushed by C-STORE and segmented: its files, UIDs, job and SEG."""

    files: list[Path]
    study_uid: str
    series_uid: str
    job: InferenceJob
    seg_orthanc_id: str

    @property
    def seg_series_uid(self) -> str:
        return str(self.job.outputs["seg_series_instance_uid"])

    @property
    def seg_sop_uid(self) -> str:
        return str(self.job.outputs["seg_sop_instance_uid"])


def _uids(files: list[Path]) -> tuple[str, str]:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def _finished_job(stack: E2EStack, study_uid: str) -> InferenceJob | None:
    """The study's only job once it has finished; fails at once if it failed."""
    jobs = jobs_of_study(stack.database_url, study_uid)
    assert len(jobs) <= 1, f"{len(jobs)} jobs for one series"
    if not jobs or jobs[0].status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return None
    job = jobs[0]
    assert job.status is JobStatus.SUCCEEDED, f"{job.error_code}: {job.error_message}"
    return job


def _wait_segmented(stack: E2EStack, files: list[Path]) -> Arrived:
    """Wait, calling nothing but Orthanc and the database, until the SEG is in the study."""
    study_uid, series_uid = _uids(files)
    job: InferenceJob = stack.wait_for(lambda: _finished_job(stack, study_uid))
    segs = stack.wait_for(lambda: stack.seg_instances(study_uid))
    assert len(segs) == 1
    return Arrived(files, study_uid, series_uid, job, segs[0])


def _push_new_study(
    stack: E2EStack, storescu: str, folder: Path, name: str, fov_mm: float = 138.0
) -> list[Path]:
    files = write_small_study(folder, key=f"e2e-{name}-{uuid.uuid4().hex}", fov_mm=fov_mm)
    stack.push(storescu, files)
    return files


@pytest.fixture(scope="module")
def arrived(stack: E2EStack, storescu: str, tmp_path_factory: pytest.TempPathFactory) -> Arrived:
    """A phantom CT pushed with storescu and segmented without any further call."""
    files = _push_new_study(stack, storescu, tmp_path_factory.mktemp("arrived"), "arrival")
    return _wait_segmented(stack, files)


@dataclass
class Caller:
    """An API token: its id (the audit log's actor), its header, a dicomweb-client using it."""

    token_id: str
    headers: dict[str, str]
    client: DICOMwebClient


def _caller(stack: E2EStack, role: Role, project: str | None, name: str) -> Caller:
    token_id, secret = api_token(stack.database_url, role, project, name)
    headers = {"Authorization": f"Bearer {secret}"}
    client = DICOMwebClient(f"{stack.gateway_url}/dicom-web", headers=headers)
    return Caller(token_id, headers, client)


@pytest.fixture(scope="module")
def clinician(stack: E2EStack, arrived: Arrived) -> Caller:
    """A clinician of the project the study was recorded in."""
    project = stack.project_of(arrived.study_uid)
    return _caller(stack, Role.CLINICIAN, project, "e2e-clinician")


@pytest.fixture(scope="module")
def outsider(stack: E2EStack) -> Caller:
    """A clinician of another project."""
    return _caller(stack, Role.CLINICIAN, f"e2e-other-{uuid.uuid4().hex[:8]}", "e2e-outsider")


# --------------------------------------------------------------------------- arrival


def test_pushed_study_gets_a_seg_in_the_same_study(stack: E2EStack, arrived: Arrived) -> None:
    job = arrived.job
    assert (job.series_instance_uid, job.source, job.attempts) == (arrived.series_uid, "orthanc", 1)
    assert job.outputs["seg_orthanc_id"] == arrived.seg_orthanc_id
    answer = httpx.get(
        f"{stack.orthanc_url}/instances/{arrived.seg_orthanc_id}/file",
        auth=stack.orthanc_auth,
        timeout=30,
    )
    seg = pydicom.dcmread(BytesIO(answer.content))
    assert (seg.SOPClassUID, seg.Modality) == (SEG_SOP_CLASS, "SEG")
    assert seg.StudyInstanceUID == arrived.study_uid
    referenced = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == arrived.series_uid
    ct = read_dicom_series(arrived.files[0].parent)
    labels = read_dicom_seg(seg, ct)
    assert labels.same_grid(ct)
    assert np.count_nonzero(labels.array) > 0, "the SEG marks no voxel"


@pytest.mark.slow
@pytest.mark.realdata
def test_real_ct_series_gets_a_seg(
    stack: E2EStack, storescu: str, totalseg_example: Path, tmp_path: Path
) -> None:
    """The real JPEG 2000 series (UIDs given in a copy under tmp_path) is segmented too."""
    paths = sorted((totalseg_example / "ct_dicom").iterdir())
    datasets = assign_missing_uids(paths, key=f"e2e-real-{uuid.uuid4().hex}")
    files = write_datasets(datasets, tmp_path / "real")
    stack.push(storescu, files, jpeg2000=True)
    arrived = _wait_segmented(stack, files)
    seg = pydicom.dcmread(
        BytesIO(
            httpx.get(
                f"{stack.orthanc_url}/instances/{arrived.seg_orthanc_id}/file",
                auth=stack.orthanc_auth,
                timeout=60,
            ).content
        )
    )
    ct = read_dicom_series(tmp_path / "real")
    labels = read_dicom_seg(seg, ct)
    assert labels.shape == ct.shape == (512, 512, 20)
    assert labels.same_grid(ct)


# --------------------------------------------------------------------------- DICOMweb


def test_clinician_finds_and_retrieves_the_ct_and_the_seg(
    stack: E2EStack, arrived: Arrived, clinician: Caller
) -> None:
    client = clinician.client
    found = client.search_for_studies(search_filters={"StudyInstanceUID": arrived.study_uid})
    assert [s["0020000D"]["Value"][0] for s in found] == [arrived.study_uid]
    series = {
        s["0020000E"]["Value"][0]: s["00080060"]["Value"][0]
        for s in client.search_for_series(arrived.study_uid)
    }
    assert series == {arrived.series_uid: "CT", arrived.seg_series_uid: "SEG"}

    ct = client.retrieve_series(arrived.study_uid, arrived.series_uid)
    assert len(ct) == len(arrived.files)
    original = pydicom.dcmread(arrived.files[0])
    same = next(ds for ds in ct if ds.SOPInstanceUID == original.SOPInstanceUID)
    assert same.PixelData == original.PixelData

    segs = client.retrieve_series(arrived.study_uid, arrived.seg_series_uid)
    assert [str(ds.SOPInstanceUID) for ds in segs] == [arrived.seg_sop_uid]
    assert segs[0].Modality == "SEG"
    assert segs[0].ReferencedSeriesSequence[0].SeriesInstanceUID == arrived.series_uid

    # The audit log holds each retrieval, by this token, of this study.
    rows = audit_rows(
        stack.database_url,
        actor_id=clinician.token_id,
        study_instance_uid=arrived.study_uid,
        action="dicomweb.retrieve",
    )
    retrieved = {(r.resource_type, r.resource_id, r.outcome, r.status_code) for r in rows}
    assert retrieved >= {
        ("series", arrived.series_uid, "success", 200),
        ("series", arrived.seg_series_uid, "success", 200),
    }
    searches = audit_rows(stack.database_url, actor_id=clinician.token_id, action="dicomweb.search")
    assert {r.resource_type for r in searches} == {"studies"}
    assert all(r.client_ip and r.request_id for r in [*rows, *searches])


def test_the_jobs_api_links_to_the_seg(
    stack: E2EStack, arrived: Arrived, clinician: Caller, outsider: Caller
) -> None:
    """The worker's outputs reach the clinician through the jobs API, as a working link."""
    listed = httpx.get(
        f"{stack.gateway_url}/api/v1/jobs",
        params={"study_instance_uid": arrived.study_uid},
        headers=clinician.headers,
    )
    assert [(j["id"], j["status"]) for j in listed.json()["items"]] == [
        (arrived.job.id, "succeeded")
    ]
    job_url = f"{stack.gateway_url}/api/v1/jobs/{arrived.job.id}"
    job = httpx.get(job_url, headers=clinician.headers).json()
    seg_url = job["seg_dicomweb_url"]
    assert seg_url == (
        f"{stack.gateway_url}/dicom-web/studies/{arrived.study_uid}/series/{arrived.seg_series_uid}"
    )
    accept = 'multipart/related; type="application/dicom"'
    answer = httpx.get(seg_url, headers={**clinician.headers, "Accept": accept}, timeout=60)
    assert answer.status_code == 200
    assert arrived.seg_sop_uid.encode() in answer.content
    assert httpx.get(job_url, headers=outsider.headers).status_code == 404
    reads = audit_rows(stack.database_url, actor_id=clinician.token_id, action="job.read")
    assert [(r.resource_id, r.outcome) for r in reads] == [(arrived.job.id, "success")]


def test_without_a_token_nothing_is_served(stack: E2EStack, arrived: Arrived) -> None:
    anonymous = DICOMwebClient(f"{stack.gateway_url}/dicom-web")
    for call in (
        lambda: anonymous.search_for_series(arrived.study_uid),
        lambda: anonymous.retrieve_series(arrived.study_uid, arrived.seg_series_uid),
        lambda: anonymous.retrieve_series(arrived.study_uid, arrived.series_uid),
    ):
        with pytest.raises(requests.HTTPError) as caught:
            call()
        response = caught.value.response
        assert response is not None and response.status_code == 401
        assert arrived.series_uid not in response.text


def test_another_project_sees_nothing(stack: E2EStack, arrived: Arrived, outsider: Caller) -> None:
    client = outsider.client
    filters = {"StudyInstanceUID": arrived.study_uid}
    assert client.search_for_studies(search_filters=filters) == []
    assert client.search_for_series(search_filters=filters) == []
    for series_uid in (arrived.series_uid, arrived.seg_series_uid):
        with pytest.raises(requests.HTTPError) as caught:
            client.retrieve_series(arrived.study_uid, series_uid)
        response = caught.value.response
        assert response is not None and response.status_code in (403, 404)
        assert series_uid not in response.text
    # The refusals are audited too, as refusals.
    rows = audit_rows(
        stack.database_url, actor_id=outsider.token_id, study_instance_uid=arrived.study_uid
    )
    assert len(rows) == 2
    assert {(r.outcome, r.status_code) for r in rows} == {("not_found", 404)}


# --------------------------------------------------------------------------- idempotency


def test_pushing_the_same_study_again_makes_no_second_job_or_seg(
    stack: E2EStack, storescu: str, arrived: Arrived
) -> None:
    orthanc_id = stack.orthanc_study_id(arrived.study_uid)
    assert orthanc_id is not None
    before = stack.last_change()
    stack.push(storescu, arrived.files)
    # Orthanc reports the study stable again; wait until the gateway's poller has handled
    # that report (the Lua script posted it at the same moment).
    stable = stack.wait_for(lambda: stack.stable_study_changes(orthanc_id, before))
    stack.wait_for(lambda: stack.poller_cursor() >= max(stable))
    jobs = jobs_of_study(stack.database_url, arrived.study_uid)
    assert [(j.id, j.status, j.attempts) for j in jobs] == [
        (arrived.job.id, JobStatus.SUCCEEDED, 1)
    ]
    assert stack.seg_instances(arrived.study_uid) == [arrived.seg_orthanc_id]


# --------------------------------------------------------------------------- resilience


def test_study_arriving_while_the_gateway_is_down_is_processed(
    stack: E2EStack, storescu: str, tmp_path: Path
) -> None:
    stack.control.stop_gateway()
    try:
        files = _push_new_study(stack, storescu, tmp_path / "down", "down")
        study_uid, _ = _uids(files)
        stack.wait_for(lambda: stack.study_is_stable(study_uid))
        assert jobs_of_study(stack.database_url, study_uid) == []  # nobody else makes jobs
    finally:
        stack.control.start_gateway()
    arrived = _wait_segmented(stack, files)
    assert arrived.job.attempts == 1


def test_worker_killed_mid_job_the_job_completes_once(
    stack: E2EStack, storescu: str, tmp_path: Path
) -> None:
    # A wider field of view (four sliding windows) gives the kill time to land mid-job.
    files = _push_new_study(stack, storescu, tmp_path / "kill", "kill", fov_mm=210.0)
    study_uid, _ = _uids(files)

    def running() -> bool:
        jobs = jobs_of_study(stack.database_url, study_uid)
        return bool(jobs) and jobs[0].status is not JobStatus.QUEUED

    stack.wait_for(running, interval_s=0.02)
    stack.control.kill_worker()
    [job] = jobs_of_study(stack.database_url, study_uid)
    assert job.status is JobStatus.RUNNING, "the job ended before the kill; nothing was tested"

    stack.control.start_worker()
    arrived = _wait_segmented(stack, files)
    assert arrived.job.id == job.id and arrived.job.attempts >= 2
    assert stack.seg_instances(study_uid) == [arrived.job.outputs["seg_orthanc_id"]]
