"""Dataset API shapes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spinecloud_gateway.core.patterns import UID_PATTERN
from spinecloud_gateway.models.schemas import PROJECT_ID_FIELD, StoredText
from spinecloud_shared.db.datasets import NAME_PATTERN
from spinecloud_shared.db.models import JobStatus

__all__ = ["DatasetCreate", "DatasetPage", "DatasetRead", "DatasetSplits", "SplitFractions"]


class SplitFractions(BaseModel):
    """Shares of the cases the layout gives no split (they must sum to 1)."""

    model_config = ConfigDict(extra="forbid")

    train: float = Field(default=0.8, gt=0.0, le=1.0)
    val: float = Field(default=0.1, ge=0.0, le=1.0)
    test: float = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        """Train, val and test together cover every case."""
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("train, val and test must sum to 1")
        return self


class DatasetCreate(BaseModel):
    """Register a dataset folder (as the training worker sees it) or Orthanc corrections."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "totalseg-v201",
                    "layout": "totalsegmentator",
                    "path": "/data/spinecloud/datasets/Totalsegmentator_dataset_v201",
                    "seed": 0,
                },
                {"name": "corrections-2026-12", "layout": "orthanc", "orthanc_study_uids": None},
            ]
        },
    )

    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    layout: Literal["totalsegmentator", "verse", "plain", "orthanc"]
    path: StoredText | None = Field(
        default=None, max_length=1024, pattern=r"^/[^\x00-\x1f]*$", description="Folder layouts"
    )
    orthanc_study_uids: list[str] | None = Field(
        default=None,
        max_length=10_000,
        description="Layout orthanc: studies whose corrected SEGs to use (null: all)",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    split: SplitFractions = Field(default_factory=SplitFractions)
    project_id: str | None = PROJECT_ID_FIELD

    @model_validator(mode="after")
    def _source(self) -> Self:
        """A path for folder layouts; study UIDs (or none) only for ``orthanc``."""
        if self.layout == "orthanc":
            if self.path is not None:
                raise ValueError("layout orthanc takes orthanc_study_uids, not a path")
            for uid in self.orthanc_study_uids or []:
                if len(uid) > 64 or not re.match(UID_PATTERN, uid):
                    raise ValueError(f"not a DICOM UID: {uid[:70]!r}")
        elif self.path is None or self.orthanc_study_uids is not None:
            raise ValueError(f"layout {self.layout} needs a path (and no orthanc_study_uids)")
        return self

    def source(self) -> dict[str, Any]:
        """The row's ``source``."""
        if self.layout == "orthanc":
            return {"orthanc": {"study_uids": self.orthanc_study_uids}}
        return {"path": self.path}


class DatasetRead(BaseModel):
    """A dataset with its scan's summary (cases, excluded cases and why, classes, grids)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    project_id: str | None
    layout: str
    source: dict[str, Any]
    root: str | None
    seed: int
    split_fractions: dict[str, Any]
    status: JobStatus
    error_code: str | None
    error_message: str | None
    attempts: int
    summary: dict[str, Any]
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DatasetPage(BaseModel):
    """A page of datasets, newest first."""

    items: list[DatasetRead]
    limit: int
    offset: int


class DatasetSplits(BaseModel):
    """The stored splits: case id -> train, val or test."""

    id: str
    name: str
    status: JobStatus
    splits: dict[str, str]
