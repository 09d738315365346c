"""ASGI middleware: request ids, access logs and latency, and request body limits.

Plain ASGI (not ``BaseHTTPMiddleware``) so streamed DICOMweb bodies pass through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spinecloud_gateway.core.context import request_id_var
from spinecloud_gateway.core.errors import PROBLEM_JSON
from spinecloud_gateway.core.metrics import GatewayMetrics

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

logger = logging.getLogger("spinecloud_gateway.access")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _route_template(scope: Scope) -> str:
    """The matched route's path template (no UIDs), set on the scope by the router."""
    return str(getattr(scope.get("route"), "path", "unmatched"))


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-ID`` in, or a new one), logs and times it."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = str(scope["method"])
            self.metrics.request_latency.labels(method, route, str(status)).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses bodies over a limit with 413 problem+json, by Content-Length or while reading.

    ``limit_for(path)`` gives the limit of a path (STOW-RS may be much larger than JSON).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope["path"]))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_413(send, limit)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await _send_413(send, limit)


class _TooLarge(HTTPException):
    """Raised inside the app's receive when the streamed body passes the limit.

    An HTTPException, so that FastAPI's body parsing passes it on as a 413 problem.
    """

    def __init__(self) -> None:
        super().__init__(413, "The request body is larger than the configured limit.")


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "type": "https://spinecloud.invalid/problems/payload_too_large",
            "title": "payload too large",
            "status": 413,
            "detail": f"The request body is larger than {limit} bytes.",
            "code": "payload_too_large",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
