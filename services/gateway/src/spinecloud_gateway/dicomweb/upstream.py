"""Streaming requests to Orthanc's DICOMweb plugin and streaming its answers back.

Bodies are never held whole: request bodies (STOW-RS) are passed as an async iterator,
responses are returned as ``StreamingResponse`` with the upstream's content type (multipart
boundary included) and encoding untouched.

Two clients, one per kind of traffic. Searches (QIDO-RS) and stores (STOW-RS) go through the
application's ``httpx.AsyncClient``. Retrievals (WADO-RS, the bulk of the bytes: a 300-slice
CT series is ~160 MB) go through :class:`RetrievalClient`, an ``aiohttp`` session: reading a
body with httpx's async client costs ~9 CPU s/GB (an anyio cancel scope and timer per 64 KiB
read, pauses and resumes of the transport, copies), aiohttp's C parser and stream reader a
small fraction of that, which decides the proxy's throughput on a machine with few cores
(``docs/benchmarks.md``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import Self

import aiohttp
import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from yarl import URL

from spinecloud_gateway.core.errors import (
    BadRequestError,
    ConflictError,
    NotAcceptableError,
    UnsupportedMediaTypeError,
)
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.errors import NotFoundError, SpineCloudError, UpstreamError

__all__ = [
    "RetrievalClient",
    "open_upstream",
    "raise_for_retrieval",
    "raise_for_upstream",
    "retrieval_response",
    "streaming_response",
]

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

#: Bytes gathered from Orthanc before each write to the client (a smaller last piece aside),
#: and the read buffer of the retrieval client. Sending many small pieces costs a pass through
#: the middleware stack, a chunk header and a socket write each. A larger read buffer (256 KiB)
#: was slower: measured on 2 cores, Orthanc then spent 2-3 times the CPU per GB it spends
#: with 64 KiB and the proxy's throughput fell (``docs/benchmarks.md``). Bounded, so the
#: proxy's memory stays flat whatever the size of the series.
STREAM_CHUNK_BYTES = 64 * 1024

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
    forwarded = _forwarded_headers(request, headers)
    upstream = client.build_request(
        request.method, path, params=request.url.query, headers=forwarded, content=body
    )
    try:
        return await client.send(upstream, stream=True)
    except httpx.TransportError as exc:
        raise UpstreamError(
            f"Orthanc's DICOMweb service is unreachable ({type(exc).__name__})."
        ) from exc


def _forwarded_headers(
    request: Request, headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The request headers Orthanc needs (content negotiation, body framing), plus ``headers``."""
    forwarded = {k: v for k, v in request.headers.items() if k.lower() in _REQUEST_HEADERS}
    forwarded.setdefault("accept-encoding", "identity")
    forwarded.update(headers or {})
    return forwarded


def _refusal(status: int) -> SpineCloudError:
    """The problem for an upstream error answer with ``status`` (400 or more)."""
    if status == 404:
        return NotFoundError("Not found.")
    if status >= 500:
        return UpstreamError(f"Orthanc's DICOMweb service answered {status}.")
    error = _REFUSALS.get(status, BadRequestError)
    return error(f"Orthanc refused the request ({status}).")


async def raise_for_upstream(response: httpx.Response) -> None:
    """Close and raise a problem for an upstream error answer; nothing for success."""
    if response.status_code < 400:
        return
    await response.aclose()
    raise _refusal(response.status_code)


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


def _basic(username: str, password: str) -> str:
    """An HTTP basic ``Authorization`` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class RetrievalClient:
    """An ``aiohttp`` session to Orthanc's DICOMweb root for WADO-RS retrievals.

    Opened and closed with the application (the DICOMweb router's lifespan). Answers are not
    decompressed (``Content-Encoding`` passes through, as the client asked) and are read with
    a buffer of ``STREAM_CHUNK_BYTES`` (reading pauses while it is full: bounded memory).
    """

    def __init__(self, base_url: str, auth: tuple[str, str] | None, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers={"Authorization": _basic(*auth)} if auth else None,
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=timeout_s),
            auto_decompress=False,
            read_bufsize=STREAM_CHUNK_BYTES,
            raise_for_status=False,
        )

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Self:
        """A client for the Orthanc of ``settings`` (call inside the running event loop)."""
        secret = settings.orthanc_password
        password = secret.get_secret_value() if secret else None
        user = settings.orthanc_username
        return cls(
            settings.orthanc_url.rstrip("/") + "/dicom-web",
            (user, password) if user and password else None,
            timeout_s=settings.orthanc_timeout_s,
        )

    async def open(self, request: Request, path: str) -> aiohttp.ClientResponse:
        """GET ``path`` (with ``request``'s query) under the DICOMweb root; body unread.

        The caller must release the response: ``raise_for_retrieval`` does it for an error
        answer, ``retrieval_response`` after sending.
        """
        query = request.url.query
        url = URL(self.base_url + path + (f"?{query}" if query else ""), encoded=True)
        try:
            return await self._session.get(url, headers=_forwarded_headers(request))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(
                f"Orthanc's DICOMweb service is unreachable ({type(exc).__name__})."
            ) from exc

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self._session.close()


def raise_for_retrieval(response: aiohttp.ClientResponse) -> None:
    """Release and raise a problem for an upstream error answer; nothing for success."""
    if response.status >= 400:
        response.release()
        raise _refusal(response.status)


async def _released(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body of ``upstream`` in pieces of STREAM_CHUNK_BYTES; the connection is released
    (back to the pool when read to the end, closed otherwise) however the iteration ends:
    at its end, or when the abandoned generator is closed (a client that went away)."""
    try:
        async for piece in coalesced(upstream.content.iter_any(), STREAM_CHUNK_BYTES):
            yield piece
    finally:
        upstream.release()


def retrieval_response(upstream: aiohttp.ClientResponse) -> StreamingResponse:
    """The upstream answer streamed to the client in pieces of STREAM_CHUNK_BYTES."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RESPONSE_HEADERS}
    return StreamingResponse(
        _released(upstream),
        status_code=upstream.status,
        headers=headers,
    )
