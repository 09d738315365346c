"""``POST /internal/orthanc/stable-study``: Orthanc's Lua script reports a stable study.

The answer is ``202 Accepted`` at once and the study is recorded after the response is sent.
It must be: Orthanc holds its Lua lock while the script's ``HttpPost`` waits, and every REST
request to Orthanc takes that lock to look for a Lua HTTP filter, so a gateway that fetched
the study before answering would wait for Orthanc while Orthanc waits for the gateway. A
study lost in between (gateway stopped) is found by the ``/changes`` poller. ``?wait=true``
records before answering, for tools and tests that are not Orthanc's Lua.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, BackgroundTasks, Response, status
from pydantic import BaseModel, Field

from spinecloud_gateway.api.deps import ServicePrincipal, SessionDep, StateDep
from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.studies.service import record_arrival
from spinecloud_shared.errors import SpineCloudError

router = APIRouter(prefix="/internal/orthanc", tags=["internal"])
logger = logging.getLogger(__name__)


class StableStudy(BaseModel):
    """The Orthanc id of a study that has become stable."""

    orthanc_study_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f-]+$")


class ArrivalAnswer(BaseModel):
    """What the arrival produced (empty lists when it runs after the answer)."""

    orthanc_study_id: str
    accepted: bool = True
    study_id: str | None = None
    job_ids: list[str] = []
    jobs_created: int = 0


def _record_later(state: GatewayState, orthanc_study_id: str) -> None:
    """Record the arrival in its own transaction; failures are logged (the poller retries)."""
    try:
        with state.sessions() as session, session.begin():
            record_arrival(
                session,
                reader=state.orthanc,
                orthanc_study_id=orthanc_study_id,
                settings=state.settings,
                celery=state.celery,
            )
    except SpineCloudError as exc:
        logger.warning("study arrival failed: %s", exc.code,
                       extra={"orthanc_study_id": orthanc_study_id})  # fmt: skip
    except Exception:
        logger.exception("study arrival failed", extra={"orthanc_study_id": orthanc_study_id})


@router.post(
    "/stable-study",
    summary="Record a stable study and create its jobs (service)",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": ArrivalAnswer, "description": "Recorded (wait=true)"}},
)
def stable_study(
    body: StableStudy,
    session: SessionDep,
    state: StateDep,
    _service: ServicePrincipal,
    response: Response,
    background: BackgroundTasks,
    wait: bool = False,
) -> ArrivalAnswer:
    """Accept the report and record it after answering, or before with ``wait=true``."""
    if not wait:
        background.add_task(_record_later, state, body.orthanc_study_id)
        return ArrivalAnswer(orthanc_study_id=body.orthanc_study_id)
    result = record_arrival(
        session,
        reader=state.orthanc,
        orthanc_study_id=body.orthanc_study_id,
        settings=state.settings,
        celery=state.celery,
    )
    response.status_code = status.HTTP_200_OK
    return ArrivalAnswer(
        orthanc_study_id=body.orthanc_study_id,
        study_id=result.study.id,
        job_ids=[j.id for j in result.jobs],
        jobs_created=result.created,
    )
