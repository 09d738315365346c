"""``/api/v1/studies``: studies recorded from Orthanc, with their series (project-scoped)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from spinecloud_gateway.api.deps import Client, ReaderPrincipal, SessionDep, StateDep
from spinecloud_gateway.core.patterns import UID_PATTERN
from spinecloud_gateway.studies import repository
from spinecloud_shared.db.models import Study
from spinecloud_shared.errors import NotFoundError

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


class SeriesRead(BaseModel):
    """A recorded series (no patient data)."""

    model_config = ConfigDict(from_attributes=True)

    series_instance_uid: str
    modality: str | None
    number_of_instances: int
    body_part: str | None
    description: str | None
    series_number: int | None


class StudyRead(BaseModel):
    """A recorded study."""

    id: str
    study_instance_uid: str
    project_id: str | None
    description: str | None
    created_at: datetime
    series: list[SeriesRead] = []


def _study(study: Study) -> StudyRead:
    """The API view of a study without touching its (not loaded) series relationship."""
    return StudyRead(
        id=study.id,
        study_instance_uid=study.study_instance_uid,
        project_id=study.project_id,
        description=study.description,
        created_at=study.created_at,
    )


@router.get("", summary="Studies in the caller's projects")
def list_studies(
    session: SessionDep,
    principal: ReaderPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[StudyRead]:
    """Recorded studies, newest first (without series)."""
    query = select(Study).order_by(Study.created_at.desc(), Study.id)
    if principal.project_ids is not None:
        query = query.where(Study.project_id.in_(principal.project_ids))
    rows = session.scalars(query.limit(limit).offset(offset))
    return [_study(r) for r in rows]


@router.get(
    "/{study_uid}",
    summary="A study and its series",
    responses={404: {"description": "Not in the caller's projects"}},
)
def get_study(
    study_uid: Annotated[str, Path(max_length=64, pattern=UID_PATTERN)],
    session: SessionDep,
    state: StateDep,
    principal: ReaderPrincipal,
    client: Client,
) -> StudyRead:
    """The study; the read is audited."""
    study = repository.study_by_uid(session, study_uid)
    visible = study is not None and principal.sees_project(study.project_id)
    state.audit.record(
        principal=principal,
        client=client,
        action="study.read",
        resource_type="study",
        resource_id=study.id if study and visible else None,
        study_instance_uid=study_uid,
        project_id=study.project_id if study and visible else None,
        outcome="success" if visible else "not_found",
    )
    if study is None or not visible:
        raise NotFoundError("No such study.")
    answer = _study(study)
    answer.series = [
        SeriesRead.model_validate(s) for s in repository.series_of_study(session, study.id)
    ]
    return answer
