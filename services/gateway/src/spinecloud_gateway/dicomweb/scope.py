"""Which studies a principal may see through DICOMweb, and recording what STOW-RS stored."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.db import get_or_create
from spinecloud_gateway.studies import repository
from spinecloud_shared.db.models import Study

__all__ = ["filter_by_study", "record_stored_studies", "study_uid_of", "visible_study_uids"]

STUDY_UID_TAG = "0020000D"
RETRIEVE_URL_TAG = "00081190"
REFERENCED_SOP_SEQUENCE_TAG = "00081199"


def study_uid_of(item: Any) -> str | None:
    """StudyInstanceUID of a DICOM JSON object, if present."""
    if not isinstance(item, dict):
        return None
    values = item.get(STUDY_UID_TAG, {}).get("Value") or [None]
    return str(values[0]) if values[0] else None


def visible_study_uids(session: Session, principal: Principal, uids: Iterable[str]) -> set[str]:
    """The subset of ``uids`` whose study is recorded in one of the principal's projects."""
    wanted = set(uids)
    if not wanted:
        return set()
    query = select(Study.study_instance_uid, Study.project_id).where(
        Study.study_instance_uid.in_(wanted)
    )
    return {uid for uid, project in session.execute(query) if principal.sees_project(project)}


def filter_by_study(session: Session, principal: Principal, items: list[Any]) -> list[Any]:
    """QIDO results restricted to studies the principal may see."""
    allowed = visible_study_uids(session, principal, filter(None, map(study_uid_of, items)))
    return [item for item in items if study_uid_of(item) in allowed]


def _stored_study_uids(answer: dict[str, Any]) -> set[str]:
    """StudyInstanceUIDs named by the RetrieveURLs of a STOW-RS answer."""
    urls = list(answer.get(RETRIEVE_URL_TAG, {}).get("Value") or [])
    for item in answer.get(REFERENCED_SOP_SEQUENCE_TAG, {}).get("Value") or []:
        urls += list(item.get(RETRIEVE_URL_TAG, {}).get("Value") or [])
    uids = set()
    for url in urls:
        parts = str(url).split("/studies/", 1)
        if len(parts) == 2 and parts[1]:
            uids.add(parts[1].split("/", 1)[0])
    return uids


def record_stored_studies(
    session: Session, principal: Principal, answer: dict[str, Any]
) -> set[str]:
    """Record studies a STOW-RS stored, in the caller's project when it has exactly one.

    Studies already recorded keep their project. Returns the stored study UIDs.
    """
    projects = principal.project_ids or frozenset()
    project_id = next(iter(projects)) if len(projects) == 1 else None
    uids = _stored_study_uids(answer)
    for uid in uids:
        get_or_create(
            session,
            partial(repository.study_by_uid, session, uid),
            partial(Study, study_instance_uid=uid, project_id=project_id),
        )
    return uids
