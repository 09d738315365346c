"""Training API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spinecloud_gateway.core.patterns import MODEL_NAME_PATTERN
from spinecloud_gateway.models.schemas import PROJECT_ID_FIELD, JsonObject, StoredText
from spinecloud_shared.db.models import JobStatus

__all__ = ["DATASET_PATTERN", "TrainingCreate", "TrainingPage", "TrainingRead"]

#: ``phantoms``, a registered dataset (``dataset:<id or name>``) or an absolute folder path
#: as the training worker sees it.
DATASET_PATTERN = r"^(phantoms|dataset:[A-Za-z0-9][A-Za-z0-9._:-]*|/[^\x00-\x1f]*)$"


class TrainingCreate(BaseModel):
    """Train one model version on one dataset (the training worker does the work)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "backend": "segresnet",
                    "preset": "demo",
                    "dataset": "phantoms",
                    "model_name": "spine-segresnet",
                    "model_version": "1.2.0",
                    "params": {"iterations": 200, "seed": 0},
                },
                {
                    "backend": "nnunet",
                    "dataset": "/data/spinecloud/datasets/totalsegmentator",
                    "model_name": "spine-nnunet",
                    "model_version": "2.0.0",
                    "params": {"epochs": 50, "fold": 0},
                },
            ]
        },
    )

    backend: Literal["segresnet", "nnunet"]
    preset: str = Field(default="demo", min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")
    dataset: StoredText = Field(min_length=1, max_length=1024, pattern=DATASET_PATTERN)
    model_name: str = Field(min_length=1, max_length=100, pattern=MODEL_NAME_PATTERN)
    model_version: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
    )
    params: JsonObject = Field(
        default_factory=dict,
        max_length=64,
        description="Backend options (iterations, epochs, seed, phantom counts, fold...)",
    )
    project_id: str | None = PROJECT_ID_FIELD


class TrainingRead(BaseModel):
    """A training job with its latest progress and, once finished, its result."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7f3c1e-5d2a-4e8f-9a6b-7c8d9e0f1a2b",
                    "status": "running",
                    "backend": "segresnet",
                    "preset": "demo",
                    "dataset": "phantoms",
                    "model_name": "spine-segresnet",
                    "model_version": "1.2.0",
                    "params": {"iterations": 200},
                    "progress": {"phase": "train", "iteration": 120, "total": 200, "loss": 0.41},
                    "result": {},
                    "cancel_requested": False,
                    "attempts": 1,
                    "created_by": "user:1d2e3f40-0000-4000-8000-000000000001",
                    "project_id": "9c4e1d2a-1111-4a2b-8c3d-222233334444",
                    "error_code": None,
                    "error_message": None,
                    "created_at": "2026-12-01T09:00:00Z",
                    "started_at": "2026-12-01T09:00:05Z",
                    "finished_at": None,
                }
            ]
        },
    )

    id: str
    status: JobStatus
    backend: str
    preset: str
    dataset: str
    model_name: str
    model_version: str
    params: dict[str, Any]
    #: Latest progress: phase, iteration, total, epoch, loss, val_dice, eta_s.
    progress: dict[str, Any]
    #: Artefact, metrics, excluded cases, registered model and evaluation ids.
    result: dict[str, Any]
    cancel_requested: bool
    attempts: int
    created_by: str | None
    project_id: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainingPage(BaseModel):
    """A page of training jobs, newest first."""

    items: list[TrainingRead]
    limit: int
    offset: int
