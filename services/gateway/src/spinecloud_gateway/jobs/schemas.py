"""Jobs API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spinecloud_gateway.core.patterns import MODEL_NAME_PATTERN, UID_PATTERN
from spinecloud_gateway.settings import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION
from spinecloud_shared.db.models import JobStatus

__all__ = ["JobCreate", "JobCreated", "JobPage", "JobRead"]


class JobCreate(BaseModel):
    """Segment a series, or every CT series of a study, with one model version."""

    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str | None = Field(default=None, max_length=64, pattern=UID_PATTERN)
    series_instance_uid: str | None = Field(default=None, max_length=64, pattern=UID_PATTERN)
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME, min_length=1, max_length=100, pattern=MODEL_NAME_PATTERN
    )
    model_version: str = Field(
        default=DEFAULT_MODEL_VERSION,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
    )
    priority: int = Field(default=5, ge=0, le=9)

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        """Exactly one of study and series."""
        if (self.study_instance_uid is None) == (self.series_instance_uid is None):
            raise ValueError("give exactly one of study_instance_uid and series_instance_uid")
        return self


class JobRead(BaseModel):
    """A job with its results."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    model_name: str
    model_version: str
    study_instance_uid: str
    series_instance_uid: str
    project_id: str | None
    priority: int
    source: str
    attempts: int
    error_code: str | None
    error_message: str | None
    timings: dict[str, Any]
    findings: dict[str, Any]
    outputs: dict[str, Any]
    #: Where the viewer finds the DICOM-SEG, once the job has one.
    seg_dicomweb_url: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobCreated(BaseModel):
    """The jobs a request resolved to; ``created`` of them are new."""

    items: list[JobRead]
    created: int


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobRead]
    limit: int
    offset: int
