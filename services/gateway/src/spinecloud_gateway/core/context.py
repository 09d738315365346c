"""Per-request context kept in context variables: the request id, for logs and problems."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_request_id", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("spinecloud_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return request_id_var.get()
