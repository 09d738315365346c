"""Reading studies and the change log from Orthanc's REST API (through pyorthanc).

Orthanc 1.10: ``/changes`` has no ``type=`` filter, so callers filter ``ChangeType``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pyorthanc

from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.errors import NotFoundError, UpstreamError

__all__ = ["Change", "OrthancReader", "SeriesInfo", "StudyInfo"]


@dataclass(frozen=True)
class SeriesInfo:
    """A series as Orthanc describes it."""

    orthanc_id: str
    series_instance_uid: str
    modality: str | None
    number_of_instances: int
    body_part: str | None
    description: str | None
    series_number: int | None
    #: The series' Manufacturer (an Orthanc series main tag): who wrote a SEG.
    manufacturer: str | None = None


@dataclass(frozen=True)
class StudyInfo:
    """A study and its series as Orthanc describes them."""

    orthanc_id: str
    study_instance_uid: str
    description: str | None
    series: list[SeriesInfo]


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change log."""

    seq: int
    change_type: str
    resource_type: str
    orthanc_id: str


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


class OrthancReader:
    """The few Orthanc REST calls study arrival needs."""

    def __init__(self, api: pyorthanc.Orthanc) -> None:
        self.api = api

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> OrthancReader:
        """A reader for the Orthanc named in the settings."""
        password = (
            settings.orthanc_password.get_secret_value() if settings.orthanc_password else None
        )
        api = pyorthanc.Orthanc(
            settings.orthanc_url,
            username=settings.orthanc_username,
            password=password,
            return_raw_response=True,
            timeout=settings.orthanc_timeout_s,
        )
        return cls(api)

    def _get(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            response = cast(httpx.Response, call(*args, **kwargs))
        except httpx.TransportError as exc:
            raise UpstreamError(f"Orthanc is unreachable ({type(exc).__name__}).") from exc
        if response.status_code == 404:
            raise NotFoundError(f"Orthanc has no {what}.")
        if response.status_code >= 400:
            raise UpstreamError(f"Orthanc answered {response.status_code} for {what}.")
        return response.json()

    def study(self, orthanc_id: str) -> StudyInfo:
        """The study with this Orthanc id and its series."""
        if not orthanc_id.replace("-", "").isalnum():
            raise NotFoundError("Orthanc has no such study.")
        study = self._get("such study", self.api.get_studies_id, orthanc_id)
        series = self._get("such study", self.api.get_studies_id_series, orthanc_id)
        tags = study.get("MainDicomTags", {})
        return StudyInfo(
            orthanc_id=study["ID"],
            study_instance_uid=tags["StudyInstanceUID"],
            description=tags.get("StudyDescription"),
            series=[self._series(item) for item in series],
        )

    @staticmethod
    def _series(item: dict[str, Any]) -> SeriesInfo:
        tags = item.get("MainDicomTags", {})
        return SeriesInfo(
            orthanc_id=item["ID"],
            series_instance_uid=tags["SeriesInstanceUID"],
            modality=tags.get("Modality"),
            number_of_instances=len(item.get("Instances", [])),
            body_part=tags.get("BodyPartExamined"),
            description=tags.get("SeriesDescription"),
            series_number=_int_or_none(tags.get("SeriesNumber")),
            manufacturer=tags.get("Manufacturer"),
        )

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """Changes after ``since``: (changes, last sequence number, whether the log is done)."""
        answer = self._get(
            "change log", self.api.get_changes, params={"since": since, "limit": limit}
        )
        changes = [
            Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]), str(c["ID"]))
            for c in answer.get("Changes", [])
        ]
        return changes, int(answer.get("Last", since)), bool(answer.get("Done", True))

    def ping(self) -> None:
        """UpstreamError unless Orthanc answers ``/system``."""
        self._get("system information", self.api.get_system)
