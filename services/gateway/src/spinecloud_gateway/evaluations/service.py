"""Starting evaluations and serving their results.

The gateway records an ``Evaluation`` and sends ``spinecloud.metrics.evaluate`` (queue
``metrics``) with its id once committed; the metrics worker computes the panel and stores the
tables as ``EvaluationRow``s. Reports: the gateway asks the worker to write its report files
(``params.report_dir``) into ``<artifact_dir>/reports/evaluations/<id>/`` and serves the stored
``report.html`` from there; the gateway itself renders nothing (it does not import the metrics
service). CSV downloads are written from the stored rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.errors import ConflictError
from spinecloud_gateway.evaluations import repository
from spinecloud_gateway.evaluations.schemas import EvaluationCreate, EvaluationRead
from spinecloud_gateway.models.scoping import site_path, site_roots, target_project, visible_row
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db.models import Evaluation, JobStatus, RegisteredModel
from spinecloud_shared.errors import NotFoundError
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.task_names import EVALUATE, METRICS_QUEUE

__all__ = ["REPORT_FILE", "read", "report_path", "start", "table_csv"]

#: The HTML report the metrics worker writes into ``report_dir``.
REPORT_FILE = "report.html"


def report_dir_for(settings: GatewaySettings, evaluation_id: str) -> Path:
    """Where the metrics worker writes this evaluation's report files."""
    return settings.resolved_artifact_dir.resolve() / "reports" / "evaluations" / evaluation_id


def _link(session: Session, model: RegisteredModel, evaluation: Evaluation) -> None:
    """Make ``evaluation`` the model's own when it has none, or only an unsuccessful one."""
    if model.evaluation_id is not None:
        current = session.get(Evaluation, model.evaluation_id)
        if current is not None and current.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return
    model.evaluation_id = evaluation.id


def start(
    session: Session,
    settings: GatewaySettings,
    principal: Principal,
    body: EvaluationCreate,
    celery: Celery,
) -> tuple[Evaluation, bool]:
    """A queued evaluation (enqueued after commit), or the same one already there; (row, new)."""
    roots = site_roots(settings)
    pred_dir = str(site_path(body.pred_dir, roots, "pred_dir"))
    ref_dir = str(site_path(body.ref_dir, roots, "ref_dir"))
    model = (
        visible_row(session, RegisteredModel, body.model_id, principal, "model version")
        if body.model_id
        else None
    )
    requested = body.project_id
    if requested is None and model is not None and model.project_id is not None:
        requested = model.project_id
    project_id = target_project(session, principal, requested, settings)
    model_ref = f"{model.name}:{model.version}" if model else None
    params = body.params.model_dump(exclude_none=True, mode="json")
    same = repository.find_same(
        session,
        name=body.name,
        model_ref=model_ref,
        pred_dir=pred_dir,
        ref_dir=ref_dir,
        params=params,
        project_id=project_id,
    )
    if same is not None:
        return same, False
    evaluation = Evaluation(
        name=body.name,
        model_ref=model_ref,
        dataset_id=body.dataset_id,
        split=body.split,
        pred_dir=pred_dir,
        ref_dir=ref_dir,
        params=params,
        project_id=project_id,
        status=JobStatus.QUEUED,
    )
    session.add(evaluation)
    session.flush()
    evaluation.params = {**params, "report_dir": str(report_dir_for(settings, evaluation.id))}
    if model is not None:
        _link(session, model, evaluation)
    session.flush()
    enqueue_after_commit(session, EVALUATE, {"job_id": evaluation.id}, METRICS_QUEUE, app=celery)
    return evaluation, True


def report_path(evaluation: Evaluation) -> Path | None:
    """The stored HTML report, if the metrics worker wrote one."""
    if not evaluation.report_dir:
        return None
    path = Path(evaluation.report_dir) / REPORT_FILE
    return path if path.is_file() else None


def read(evaluation: Evaluation) -> EvaluationRead:
    """The API view, saying whether a report can be served."""
    answer = EvaluationRead.model_validate(evaluation)
    answer.report_available = report_path(evaluation) is not None
    return answer


def require_results(evaluation: Evaluation) -> None:
    """ConflictError unless the evaluation succeeded (tables exist only then)."""
    if evaluation.status is not JobStatus.SUCCEEDED:
        raise ConflictError(
            f"The evaluation is {evaluation.status.value}; its results exist once it succeeded."
        )


def table_csv(session: Session, evaluation: Evaluation, table: str) -> str:
    """One stored table as CSV (columns in first-seen order; NotFoundError when empty)."""
    rows: list[dict[str, Any]] = repository.rows(session, evaluation.id, table).get(table, [])
    if not rows:
        raise NotFoundError(f"The evaluation has no {table} table.")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
