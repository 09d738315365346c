"""The DICOMweb proxy, served by uvicorn, used by dicomweb-client, in front of a real Orthanc.

A phantom CT is pushed with storescu and recorded in project "dw-a". A clinician of that
project finds and retrieves it; a clinician of "dw-b" gets nothing; without a token every
request is refused; every retrieval lands in the audit log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from spinecloud_gateway.app import create_app
from spinecloud_shared.db.models import Role
from spinecloud_shared.orthanc.local import LocalOrthanc
from tests.integration.conftest import require_tool
from tests.integration.test_gateway_support import (
    GatewayServer,
    bearer,
    gateway_settings,
    make_token,
    orthanc_study_id,
    push,
    write_study,
)

pytestmark = pytest.mark.integration


VIEWER = "http://viewer.spinecloud.test"


class Context:
    """The running gateway, the pushed study and the tokens of the test module."""

    def __init__(self, server: GatewayServer, files: list[Path], tokens: dict[str, str]) -> None:
        self.server = server
        self.files = files
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        self.study_uid = str(first.StudyInstanceUID)
        self.series_uid = str(first.SeriesInstanceUID)
        self.sop_uids = {
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
        }
        self.tokens = tokens

    def dicomweb(self, token: str | None) -> DICOMwebClient:
        headers = bearer(token) if token else None
        return DICOMwebClient(f"{self.server.url}/dicom-web", headers=headers)

    def audit(self, **params: Any) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.server.url}/api/v1/audit",
            params={**params, "limit": 500},
            headers=bearer(self.tokens["admin"]),
        )
        answer.raise_for_status()
        return list(answer.json()["items"])


@pytest.fixture(scope="module")
def ctx(
    tmp_path_factory: pytest.TempPathFactory,
    gateway_db: str,
    _redis_test_db: str,
    orthanc: LocalOrthanc,
) -> Iterator[Context]:
    storescu = require_tool("storescu")
    settings = gateway_settings(
        gateway_db, _redis_test_db, orthanc, default_project="dw-a", viewer_origins=[VIEWER]
    )
    tokens = {
        "a": make_token(gateway_db, Role.CLINICIAN, "dw-a"),
        "b": make_token(gateway_db, Role.CLINICIAN, "dw-b"),
        "admin": make_token(gateway_db, Role.ADMIN, None),
        "service": make_token(gateway_db, Role.SERVICE, None),
    }
    files = write_study(tmp_path_factory.mktemp("dw") / "ct", key=f"dw-{uuid.uuid4().hex}")
    push(storescu, orthanc, files)
    with GatewayServer(create_app(settings)) as server:
        context = Context(server, files, tokens)
        arrival = httpx.post(
            f"{server.url}/internal/orthanc/stable-study?wait=true",
            json={"orthanc_study_id": orthanc_study_id(orthanc, context.study_uid)},
            headers=bearer(tokens["service"]),
        )
        assert arrival.status_code == 200, arrival.text
        yield context


def test_project_member_finds_and_retrieves_the_study(ctx: Context) -> None:
    client = ctx.dicomweb(ctx.tokens["a"])
    found = client.search_for_studies(search_filters={"StudyInstanceUID": ctx.study_uid})
    assert [s["0020000D"]["Value"][0] for s in found] == [ctx.study_uid]
    series = client.search_for_series(ctx.study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [ctx.series_uid]
    datasets = client.retrieve_series(ctx.study_uid, ctx.series_uid)
    assert {str(ds.SOPInstanceUID) for ds in datasets} == ctx.sop_uids
    original = pydicom.dcmread(ctx.files[0])
    same = next(ds for ds in datasets if ds.SOPInstanceUID == original.SOPInstanceUID)
    assert same.PixelData == original.PixelData
    metadata = client.retrieve_study_metadata(ctx.study_uid)
    assert len(metadata) == len(ctx.files)
    # Orthanc's DICOMweb 1.7 refuses type="*/*": ask for uncompressed frames explicitly.
    frames = client.retrieve_instance_frames(
        ctx.study_uid,
        ctx.series_uid,
        str(original.SOPInstanceUID),
        [1],
        media_types=("application/octet-stream",),
    )
    assert frames[0] == original.PixelData


def test_rendered_frames_pass_through(ctx: Context) -> None:
    sop = pydicom.dcmread(ctx.files[0], stop_before_pixels=True).SOPInstanceUID
    series = f"{ctx.server.url}/dicom-web/studies/{ctx.study_uid}/series/{ctx.series_uid}"
    url = f"{series}/instances/{sop}/rendered"
    answer = httpx.get(url, headers={**bearer(ctx.tokens["a"]), "Accept": "image/png"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG")


def test_without_a_token_everything_is_refused(ctx: Context) -> None:
    client = ctx.dicomweb(None)
    for call in (
        client.search_for_studies,
        lambda: client.retrieve_series(ctx.study_uid, ctx.series_uid),
    ):
        with pytest.raises(requests.HTTPError) as caught:
            call()
        response = caught.value.response
        assert response is not None and response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


def test_another_project_sees_nothing(ctx: Context) -> None:
    client = ctx.dicomweb(ctx.tokens["b"])
    assert client.search_for_studies(search_filters={"StudyInstanceUID": ctx.study_uid}) == []
    assert all(s["0020000D"]["Value"][0] != ctx.study_uid for s in client.search_for_series())
    for call in (
        lambda: client.retrieve_series(ctx.study_uid, ctx.series_uid),
        lambda: client.retrieve_study_metadata(ctx.study_uid),
    ):
        with pytest.raises(requests.HTTPError) as caught:
            call()
        response = caught.value.response
        assert response is not None and response.status_code == 404
        assert ctx.series_uid not in response.text


def test_retrievals_and_refusals_are_audited(ctx: Context) -> None:
    ctx.dicomweb(ctx.tokens["a"]).retrieve_series(ctx.study_uid, ctx.series_uid)
    with pytest.raises(requests.HTTPError):
        ctx.dicomweb(ctx.tokens["b"]).retrieve_series(ctx.study_uid, ctx.series_uid)
    events = ctx.audit(study_instance_uid=ctx.study_uid)
    retrievals = [e for e in events if e["action"] == "dicomweb.retrieve"]
    assert any(
        e["resource_type"] == "series"
        and e["resource_id"] == ctx.series_uid
        and e["outcome"] == "success"
        for e in retrievals
    )
    refused = [e for e in events if e["outcome"] == "not_found"]
    assert refused and {e["status_code"] for e in refused} == {404}
    assert {e["actor_id"] for e in retrievals} != {None}
    assert all(e["client_ip"] == "127.0.0.1" for e in events)


def test_stow_stores_into_the_callers_project(ctx: Context, tmp_path: Path) -> None:
    files = write_study(tmp_path / "stow", key=f"stow-{uuid.uuid4().hex}", seed=2)
    datasets = [pydicom.dcmread(f) for f in files[:3]]
    answer = ctx.dicomweb(ctx.tokens["a"]).store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == 3
    study_uid = str(datasets[0].StudyInstanceUID)
    found = ctx.dicomweb(ctx.tokens["a"]).search_for_studies(
        search_filters={"StudyInstanceUID": study_uid}
    )
    assert len(found) == 1
    assert (
        ctx.dicomweb(ctx.tokens["b"]).search_for_studies(
            search_filters={"StudyInstanceUID": study_uid}
        )
        == []
    )


def test_stow_of_non_dicom_is_a_client_error(ctx: Context) -> None:
    url = f"{ctx.server.url}/dicom-web/studies"
    headers = bearer(ctx.tokens["a"])
    body = b"--XX\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n--XX--\r\n"
    multipart = {
        **headers,
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=XX',
    }
    answer = httpx.post(url, content=body, headers=multipart)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    wrong_type = httpx.post(
        url, content=b"{}", headers={**headers, "Content-Type": "application/json"}
    )
    assert wrong_type.status_code == 415


def test_cors_preflight_for_the_viewer(ctx: Context) -> None:
    preflight = httpx.options(
        f"{ctx.server.url}/dicom-web/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    other = httpx.options(
        f"{ctx.server.url}/dicom-web/studies",
        headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers
