"""Evaluation API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spinecloud_gateway.models.schemas import PROJECT_ID_FIELD, StoredText
from spinecloud_shared.db.models import JobStatus
from spinecloud_shared.labels import Scheme

__all__ = [
    "TABLE_NAMES",
    "EvaluationCreate",
    "EvaluationPage",
    "EvaluationParams",
    "EvaluationRead",
    "EvaluationTables",
    "TableName",
]

#: The tables the metrics worker stores, one ``EvaluationRow`` per row.
TABLE_NAMES: tuple[str, ...] = ("per_class", "per_region", "per_case", "overall")
TableName = Literal["per_class", "per_region", "per_case", "overall"]
_PATH_PATTERN = r"^/[^\x00-\x1f]*$"


class EvaluationParams(BaseModel):
    """Metric options of the metrics worker (each optional; its defaults otherwise)."""

    model_config = ConfigDict(extra="forbid")

    pred_scheme: Scheme | None = None
    ref_scheme: Scheme | None = None
    nsd_tolerance_mm: float | None = Field(default=None, gt=0, le=100)
    boundary_tolerance_mm: float | None = Field(default=None, gt=0, le=100)
    resample: bool | None = None
    both_empty_perfect: bool | None = None
    surface: Literal["voxels", "faces"] | None = None
    policy: Literal["worst", "exclude"] | None = None
    ci: Literal["t", "bootstrap"] | None = None


class EvaluationCreate(BaseModel):
    """Evaluate a folder of predictions against a folder of references (NIfTI label maps)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "spine-segresnet 1.2.0 on VerSe test",
                    "model_id": "3f0b8a52-7f55-4c41-9d0e-0c1a2b3c4d5e",
                    "pred_dir": "/var/spinecloud/artifacts/predictions/verse-test",
                    "ref_dir": "/var/spinecloud/datasets/verse/test/labels",
                    "split": "test",
                    "params": {"nsd_tolerance_mm": 1.0, "ci": "bootstrap"},
                }
            ]
        },
    )

    name: StoredText = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    pred_dir: StoredText = Field(
        min_length=2,
        max_length=1024,
        pattern=_PATH_PATTERN,
        description="Predictions (NIfTI label maps), in the site's storage",
    )
    ref_dir: StoredText = Field(
        min_length=2,
        max_length=1024,
        pattern=_PATH_PATTERN,
        description="References (NIfTI label maps), in the site's storage",
    )
    model_id: str | None = Field(
        default=None,
        min_length=36,
        max_length=36,
        pattern=r"^[0-9a-f-]{36}$",
        description="The registered version that made the predictions; the evaluation then "
        "becomes that version's evaluation if it has none (or only a failed one)",
    )
    dataset_id: str | None = Field(
        default=None, min_length=1, max_length=36, pattern=r"^[A-Za-z0-9._-]+$"
    )
    split: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"
    )
    params: EvaluationParams = Field(default_factory=EvaluationParams)
    project_id: str | None = PROJECT_ID_FIELD


class EvaluationRead(BaseModel):
    """An evaluation and its headline numbers once it succeeded."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "5a6b7c8d-aaaa-4bbb-8ccc-ddddeeeeffff",
                    "name": "spine-segresnet 1.2.0 on VerSe test",
                    "status": "succeeded",
                    "model_ref": "spine-segresnet:1.2.0",
                    "dataset_id": None,
                    "split": "test",
                    "pred_dir": "/var/spinecloud/artifacts/predictions/verse-test",
                    "ref_dir": "/var/spinecloud/datasets/verse/test/labels",
                    "params": {"nsd_tolerance_mm": 1.0},
                    "summary": {"n_cases": 20, "dice": 0.91, "hd95": 3.2, "id_rate": 0.97},
                    "report_available": True,
                    "project_id": "9c4e1d2a-1111-4a2b-8c3d-222233334444",
                    "error_code": None,
                    "error_message": None,
                    "created_at": "2026-12-01T09:00:00Z",
                    "started_at": "2026-12-01T09:00:02Z",
                    "finished_at": "2026-12-01T09:03:40Z",
                }
            ]
        },
    )

    id: str
    name: str
    status: JobStatus
    model_ref: str | None
    dataset_id: str | None
    split: str | None
    pred_dir: str
    ref_dir: str
    params: dict[str, Any]
    summary: dict[str, Any] | None
    #: Whether ``GET .../report`` has an HTML report to serve.
    report_available: bool = False
    project_id: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EvaluationPage(BaseModel):
    """A page of evaluations, newest first."""

    items: list[EvaluationRead]
    limit: int
    offset: int


class EvaluationTables(BaseModel):
    """Benchmark tables by name (``per_class``, ``per_region``, ``per_case``, ``overall``),
    each a list of rows in the metrics service's order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "evaluation_id": "5a6b7c8d-aaaa-4bbb-8ccc-ddddeeeeffff",
                    "tables": {
                        "overall": [{"metric": "dice", "mean": 0.91, "std": 0.03, "median": 0.92}]
                    },
                }
            ]
        }
    )

    evaluation_id: str
    tables: dict[str, list[dict[str, Any]]]
