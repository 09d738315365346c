"""Model registry API shapes."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from spinecloud_shared.models.manifest import ModelState

__all__ = [
    "PROJECT_ID_FIELD",
    "JsonObject",
    "ModelDetail",
    "ModelPage",
    "ModelPromote",
    "ModelRead",
    "ModelRegister",
    "ModelRetire",
    "StoredText",
]

#: How deep a client's JSON object may nest.
_MAX_DEPTH = 16


def _storable_text(value: str) -> str:
    """``value`` if PostgreSQL can store it (UTF-8, no NUL); ValueError otherwise."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode") from exc
    return value


def _storable_json(value: Any, depth: int = 0) -> Any:
    """``value`` if it is JSON that JSONB stores as given (finite numbers, storable text)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            _storable_text(str(key))
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)
    return value


#: Free text stored in a column or a JSON document (no NUL, valid Unicode).
StoredText = Annotated[str, AfterValidator(_storable_text)]
#: A client's JSON object stored as JSONB (finite numbers, storable text, bounded depth).
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]

#: The optional ``project_id`` of a creation request (see ``models.scoping.target_project``).
PROJECT_ID_FIELD: Any = Field(
    default=None,
    min_length=36,
    max_length=36,
    pattern=r"^[0-9a-f-]{36}$",
    description="Owning project; default: the caller's only project, or the site's default",
)
#: A reason recorded in the model's history.
_REASON: Any = Field(default=None, max_length=500)


class ModelRegister(BaseModel):
    """Register a model artefact folder (holding ``spinecloud.json``) as a draft version."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"artifact_path": "/var/spinecloud/models/spine-segresnet/1.1.0"}]
        },
    )

    artifact_path: StoredText = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^/[^\x00-\x1f]*$",
        description="Absolute folder path in the site's storage (data_dir or artifact_dir)",
    )
    project_id: str | None = PROJECT_ID_FIELD


class ModelPromote(BaseModel):
    """Promote a version to ``validated`` or ``production`` (which demotes the current one)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "production", "reason": "Dice 0.91 on VerSe"}]},
    )

    to: Literal[ModelState.VALIDATED, ModelState.PRODUCTION] = ModelState.PRODUCTION
    reason: StoredText | None = _REASON


class ModelRetire(BaseModel):
    """Retire a version for good."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "superseded by 1.2.0"}]}
    )

    reason: StoredText | None = _REASON


class ModelRead(BaseModel):
    """A registered model version."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "3f0b8a52-7f55-4c41-9d0e-0c1a2b3c4d5e",
                    "name": "spine-segresnet",
                    "version": "1.1.0",
                    "backend": "monai_bundle",
                    "state": "production",
                    "artifact_uri": "/var/spinecloud/models/spine-segresnet/1.1.0",
                    "description": "SegResNet, paper preset",
                    "metrics": {"dice": 0.91, "hd95": 3.2},
                    "project_id": "9c4e1d2a-1111-4a2b-8c3d-222233334444",
                    "training_job_id": None,
                    "evaluation_id": "5a6b7c8d-aaaa-4bbb-8ccc-ddddeeeeffff",
                    "registered_by": "user:1d2e3f40-0000-4000-8000-000000000001",
                    "promoted_by": "user:1d2e3f40-0000-4000-8000-000000000001",
                    "promoted_at": "2026-12-01T10:00:00Z",
                    "retired_at": None,
                    "created_at": "2026-12-01T09:00:00Z",
                    "updated_at": "2026-12-01T10:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    version: str
    backend: str
    state: ModelState
    artifact_uri: str
    description: str | None
    metrics: dict[str, Any]
    project_id: str | None
    training_job_id: str | None
    evaluation_id: str | None
    registered_by: str | None
    promoted_by: str | None
    promoted_at: datetime | None
    retired_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ModelDetail(ModelRead):
    """A version with its lineage and every state change, oldest first."""

    lineage: dict[str, Any]
    history: list[dict[str, Any]]


class ModelPage(BaseModel):
    """A page of registered versions, by name then registration time."""

    items: list[ModelRead]
    limit: int
    offset: int
