"""Study arrival: record a stable study from Orthanc and create its inference jobs, and ask
the training worker to count corrections when the study holds a SEG from someone else.

Idempotent: the study, its series and its jobs are found by their unique keys, so the Lua
callback, the poller and a repeated push of the same study all end with one job per
(series, model, version).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.service import ensure_project
from spinecloud_gateway.core.db import get_or_create
from spinecloud_gateway.jobs.service import ensure_job
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_gateway.studies import repository, routing
from spinecloud_gateway.studies.corrections import request_correction_check
from spinecloud_gateway.studies.orthanc import OrthancReader, SeriesInfo, StudyInfo
from spinecloud_shared.db.models import InferenceJob, Series, Study

__all__ = ["ArrivalResult", "record_arrival", "record_study"]

logger = logging.getLogger(__name__)


@dataclass
class ArrivalResult:
    """What an arrival produced."""

    study: Study
    jobs: list[InferenceJob] = field(default_factory=list)
    created: int = 0


def _facts(info: SeriesInfo) -> routing.SeriesFacts:
    return routing.SeriesFacts(
        modality=info.modality,
        number_of_instances=info.number_of_instances,
        body_part=info.body_part,
        description=info.description,
    )


def record_study(
    session: Session, info: StudyInfo, project_id: str | None
) -> tuple[Study, list[Series]]:
    """Upsert the study and its series; an existing study keeps its project."""
    study, _ = get_or_create(
        session,
        lambda: repository.study_by_uid(session, info.study_instance_uid),
        lambda: Study(study_instance_uid=info.study_instance_uid, project_id=project_id),
    )
    study.orthanc_id = info.orthanc_id
    study.description = (info.description or "")[:255] or None
    if study.project_id is None:
        study.project_id = project_id
    rows = []
    for item in info.series:
        series, _ = get_or_create(
            session,
            partial(repository.series_by_uid, session, item.series_instance_uid),
            partial(Series, series_instance_uid=item.series_instance_uid, study_id=study.id),
        )
        series.orthanc_id = item.orthanc_id
        series.modality = item.modality
        series.number_of_instances = item.number_of_instances
        series.body_part = (item.body_part or "")[:64] or None
        series.description = (item.description or "")[:255] or None
        series.series_number = item.series_number
        rows.append(series)
    session.flush()
    return study, rows


def record_arrival(
    session: Session,
    *,
    reader: OrthancReader,
    orthanc_study_id: str,
    settings: GatewaySettings,
    celery: Celery,
) -> ArrivalResult:
    """Fetch the study from Orthanc, record it, and ensure one job per eligible series and rule."""
    info = reader.study(orthanc_study_id)
    rules = settings.routing_rules
    project_name = routing.study_project(
        rules, [_facts(s) for s in info.series], settings.default_project
    )
    project = ensure_project(session, project_name) if project_name else None
    study, series_rows = record_study(session, info, project.id if project else None)
    result = ArrivalResult(study=study)
    for item, series in zip(info.series, series_rows, strict=True):
        for rule in routing.rules_for(rules, _facts(item)):
            job, created = ensure_job(
                session,
                study=study,
                series=series,
                model_name=rule.model_name,
                model_version=rule.model_version,
                priority=rule.priority,
                source="orthanc",
                celery=celery,
            )
            result.jobs.append(job)
            result.created += int(created)
    request_correction_check(session, info, celery)
    logger.info(
        "study arrival",
        extra={"orthanc_study_id": orthanc_study_id, "jobs_created": result.created},
    )
    return result
