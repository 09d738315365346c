"""Orthanc REST access through pyorthanc, with SpineCloud's errors.

Only what the platform needs: store instances, find a series, and download its instances as
bytes for ``spinecloud_shared.dicom_series``. Transport failures and 5xx answers become
UpstreamError (transient, so jobs retry); unknown ids become NotFoundError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import httpx
import pyorthanc

from spinecloud_shared.errors import InvalidInputError, NotFoundError, UpstreamError
from spinecloud_shared.settings import Settings, get_settings


def _check(response: httpx.Response, what: str) -> httpx.Response:
    status = response.status_code
    if status < 400:
        return response
    if status == 404:
        raise NotFoundError(f"Orthanc has no {what}.")
    if status in (400, 415):
        raise InvalidInputError(f"Orthanc refused {what}: {response.text[:200]}")
    if status in (401, 403):
        raise UpstreamError(f"Orthanc refused SpineCloud's credentials ({status}) for {what}.")
    raise UpstreamError(f"Orthanc answered {status} for {what}.")


class OrthancClient:
    """A connection to one Orthanc server."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        # Raw responses: pyorthanc's own errors drop the status code's meaning.
        self.api = pyorthanc.Orthanc(
            url, username=username, password=password, return_raw_response=True, timeout=timeout_s
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> OrthancClient:
        """A client for the Orthanc named in the settings."""
        settings = settings or get_settings()
        password = (
            settings.orthanc_password.get_secret_value() if settings.orthanc_password else None
        )
        return cls(settings.orthanc_url, settings.orthanc_username, password)

    def _response(self, what: str, func: Callable[..., Any], *args: Any) -> httpx.Response:
        try:
            response = func(*args)
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"Orthanc is unreachable ({type(exc).__name__}) for {what}."
            ) from exc
        return _check(cast(httpx.Response, response), what)

    def _call(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        return self._response(what, func, *args).json()

    def store(self, dicom_bytes: bytes) -> dict[str, Any]:
        """Store one DICOM instance; returns Orthanc's answer (ID, ParentSeries, Status)."""
        return cast(
            dict[str, Any], self._call("the instance", self.api.post_instances, dicom_bytes)
        )

    def store_many(self, files: Iterable[bytes]) -> list[dict[str, Any]]:
        """Store several instances one by one."""
        return [self.store(data) for data in files]

    def series_instances(self, series_id: str) -> list[str]:
        """Orthanc ids of a series' instances."""
        answer = self._call(f"series {series_id}", self.api.get_series_id, series_id)
        return list(cast(dict[str, Any], answer)["Instances"])

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance, as bytes."""
        return self._response(
            f"instance {instance_id}", self.api.get_instances_id_file, instance_id
        ).content

    def series_files(self, series_id: str) -> list[bytes]:
        """Every instance file of a series, as bytes (input for dicom_series.read_ct_series)."""
        return [self.instance_file(i) for i in self.series_instances(series_id)]

    def find_series(self, series_instance_uid: str) -> str:
        """Orthanc id of the series with this SeriesInstanceUID."""
        query = {"Level": "Series", "Query": {"SeriesInstanceUID": series_instance_uid}}
        found = cast(list[str], self._call("the series lookup", self.api.post_tools_find, query))
        if not found:
            raise NotFoundError(f"Orthanc has no series with UID {series_instance_uid}.")
        return found[0]
