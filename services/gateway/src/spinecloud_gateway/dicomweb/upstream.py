"""Streaming requests to Orthanc's DICOMweb plugin and streaming its answers back.

Bodies are never held whole: request bodies (STOW-RS) are passed as an async iterator,
responses (WADO-RS) are returned as ``StreamingResponse`` over ``aiter_raw`` with the
upstream's content type (multipart boundary included) and encoding untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from spinecloud_gateway.core.errors import (
    BadRequestError,
    ConflictError,
    NotAcceptableError,
    UnsupportedMediaTypeError,
)
from spinecloud_shared.errors import NotFoundError, SpineCloudError, UpstreamError

__all__ = ["open_upstream", "raise_for_upstream", "streaming_response"]

_REQUEST_HEADERS = ("accept", "content-type", "content-length", "accept-encoding")
_RESPONSE_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-location",
    "etag",
    "last-modified",
    "warning",
)

#: Bytes gathered from Orthanc before each write to the client. httpcore hands the body on in
#: pieces of at most 64 KiB; sending each one costs a pass through the middleware stack, a
#: chunk header of uvicorn's and a socket write, and makes the client parse many chunks.
#: Bounded, so the proxy's memory stays flat whatever the size of the series.
STREAM_CHUNK_BYTES = 256 * 1024

_REFUSALS: dict[int, type[SpineCloudError]] = {
    406: NotAcceptableError,
    409: ConflictError,
    415: UnsupportedMediaTypeError,
}


async def open_upstream(
    client: httpx.AsyncClient,
    request: Request,
    path: str,
    *,
    body: AsyncIterator[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send ``request``'s method and query to ``path`` under the DICOMweb root; stream it.

    The caller must close the response (``streaming_response`` does it after sending).
    """
    forwarded = {k: v for k, v in request.headers.items() if k.lower() in _REQUEST_HEADERS}
    forwarded.setdefault("accept-encoding", "identity")
    forwarded.update(headers or {})
    upstream = client.build_request(
        request.method, path, params=request.url.query, headers=forwarded, content=body
    )
    try:
        return await client.send(upstream, stream=True)
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"Orthanc's DICOMweb service is unreachable ({type(exc).__name__})."
        ) from exc


async def raise_for_upstream(response: httpx.Response) -> None:
    """Close and raise a problem for an upstream error answer; nothing for success."""
    if response.status_code < 400:
        return
    await response.aclose()
    if response.status_code == 404:
        raise NotFoundError("Not found.")
    if response.status_code >= 500:
        raise UpstreamError(f"Orthanc's DICOMweb service answered {response.status_code}.")
    error = _REFUSALS.get(response.status_code, BadRequestError)
    raise error(f"Orthanc refused the request ({response.status_code}).")


async def coalesced(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """``chunks`` regrouped into pieces of at least ``size`` bytes (the last may be smaller).

    A piece is sent as soon as it is complete, so at most ``size`` plus one upstream chunk is
    held at a time.
    """
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending.clear()
            held = 0
    if held:
        yield b"".join(pending)


def streaming_response(upstream: httpx.Response) -> StreamingResponse:
    """The upstream answer streamed to the client in pieces of STREAM_CHUNK_BYTES, closed
    when done."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RESPONSE_HEADERS}
    return StreamingResponse(
        coalesced(upstream.aiter_raw(), STREAM_CHUNK_BYTES),
        status_code=upstream.status_code,
        headers=headers,
        background=BackgroundTask(upstream.aclose),
    )
