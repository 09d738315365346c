"""Gateway errors and the handlers that turn every failure into application/problem+json.

Domain errors carry their HTTP status (``SpineCloudError.http_status``); validation errors,
unknown routes and oversized bodies become 4xx problems; anything unexpected becomes a 500
problem without internals.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spinecloud_gateway.core.context import current_request_id
from spinecloud_shared.errors import SpineCloudError

__all__ = [
    "PROBLEM_JSON",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "NotAcceptableError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "UnsupportedMediaTypeError",
    "install_error_handlers",
    "problem_response",
]

logger = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class AuthenticationError(SpineCloudError):
    """No credentials, or credentials that are invalid, expired or revoked."""

    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(SpineCloudError):
    """Valid credentials whose role does not allow the operation."""

    code = "forbidden"
    http_status = 403


class ConflictError(SpineCloudError):
    """The operation does not fit the resource's current state (e.g. retry a running job)."""

    code = "conflict"
    http_status = 409


class PayloadTooLargeError(SpineCloudError):
    """The request body is larger than the configured limit."""

    code = "payload_too_large"
    http_status = 413


class BadRequestError(SpineCloudError):
    """A request the upstream or the gateway cannot make sense of."""

    code = "bad_request"
    http_status = 400


class NotAcceptableError(SpineCloudError):
    """No representation matches the request's Accept header."""

    code = "not_acceptable"
    http_status = 406


class UnsupportedMediaTypeError(SpineCloudError):
    """The request body's content type is not one this endpoint accepts."""

    code = "unsupported_media_type"
    http_status = 415


_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_response(
    problem: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A problem+json response carrying the request id."""
    body = {**problem, "status": status}
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _http_problem(status: int, detail: str) -> dict[str, Any]:
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    return {
        "type": f"https://spinecloud.invalid/problems/{code}",
        "title": code.replace("_", " "),
        "detail": detail,
        "code": code,
    }


class _Handlers:
    """The exception handlers (a class only to group them)."""

    auth_header: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="spinecloud"'}

    @classmethod
    async def domain(cls, _request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpineCloudError)
        if exc.http_status >= 500:
            logger.warning("request failed: %s (%s)", exc.code, exc.message)
        headers = cls.auth_header if exc.http_status == 401 else None
        return problem_response(exc.to_problem(), exc.http_status, headers)

    @classmethod
    async def validation(cls, _request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        problem = _http_problem(422, "The request is not valid.")
        problem.update(code="validation_error", title="validation error", errors=errors)
        problem["type"] = "https://spinecloud.invalid/problems/validation_error"
        return problem_response(problem, 422)

    @classmethod
    async def http(cls, _request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.update(cls.auth_header)
        return problem_response(
            _http_problem(exc.status_code, str(exc.detail)), exc.status_code, headers or None
        )

    @classmethod
    async def unexpected(cls, _request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error: %s", type(exc).__name__)
        problem = _http_problem(500, "An unexpected error occurred; it has been logged.")
        return problem_response(problem, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""
    app.add_exception_handler(SpineCloudError, _Handlers.domain)
    app.add_exception_handler(RequestValidationError, _Handlers.validation)
    app.add_exception_handler(StarletteHTTPException, _Handlers.http)
    app.add_exception_handler(Exception, _Handlers.unexpected)
