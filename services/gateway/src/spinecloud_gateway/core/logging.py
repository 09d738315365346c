"""Structured JSON logs, one object per line, carrying the request id.

Only whitelisted ``extra`` fields are written, and the gateway never passes patient names,
patient ids or DICOM UIDs to a logger: requests are logged by route template
(``/dicom-web/studies/{study_uid}``), never by raw path.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from spinecloud_gateway.core.context import current_request_id

__all__ = ["LOG_FIELDS", "JsonFormatter", "configure_logging"]

#: ``extra`` keys copied into the JSON line; anything else passed as extra is dropped.
LOG_FIELDS = (
    "method",
    "route",
    "status",
    "duration_ms",
    "job_id",
    "orthanc_study_id",
    "actor_id",
    "jobs_created",
    "changes",
    "last_seq",
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, request id, fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for field in LOG_FIELDS:
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send the gateway's and uvicorn's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("spinecloud_gateway", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # uvicorn's access log prints raw paths (with study UIDs): ours logs route templates.
    logging.getLogger("uvicorn.access").disabled = True
