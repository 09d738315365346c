"""Evaluation queries.

An evaluation is visible to a caller of its project, and also to a caller who sees the model
version it evaluates: the training worker creates a trained model's validation evaluation
without a project, and that evaluation belongs with its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from spinecloud_gateway.core.db import page, where_equal
from spinecloud_shared.db.models import Evaluation, EvaluationRow, JobStatus, RegisteredModel

__all__ = ["EvaluationFilter", "find_same", "rows", "search", "visible"]


@dataclass(frozen=True)
class EvaluationFilter:
    """Conditions an evaluation must meet (None: any); ``project_ids`` None: every project."""

    project_ids: frozenset[str] | None
    status: JobStatus | None = None
    model_ref: str | None = None
    split: str | None = None


def _in_projects(project_ids: frozenset[str]) -> ColumnElement[bool]:
    """Own project in ``project_ids``, or the evaluation of a model version there."""
    of_models = select(RegisteredModel.evaluation_id).where(
        RegisteredModel.project_id.in_(project_ids), RegisteredModel.evaluation_id.is_not(None)
    )
    return or_(Evaluation.project_id.in_(project_ids), Evaluation.id.in_(of_models))


def visible(
    session: Session, evaluation_id: str, project_ids: frozenset[str] | None
) -> Evaluation | None:
    """The evaluation if it exists and ``project_ids`` (None: every project) include it."""
    query = select(Evaluation).where(Evaluation.id == evaluation_id)
    if project_ids is not None:
        query = query.where(_in_projects(project_ids))
    return session.scalars(query).one_or_none()


def search(
    session: Session, where: EvaluationFilter, *, limit: int, offset: int
) -> Sequence[Evaluation]:
    """Evaluations matching ``where``, newest first."""
    query = select(Evaluation)
    if where.project_ids is not None:
        query = query.where(_in_projects(where.project_ids))
    query = where_equal(
        query,
        (
            (Evaluation.status, where.status),
            (Evaluation.model_ref, where.model_ref),
            (Evaluation.split, where.split),
        ),
    )
    query = query.order_by(Evaluation.created_at.desc(), Evaluation.id)
    return page(session, query, limit=limit, offset=offset)


def find_same(
    session: Session,
    *,
    name: str,
    model_ref: str | None,
    pred_dir: str,
    ref_dir: str,
    params: dict[str, Any],
    project_id: str | None,
) -> Evaluation | None:
    """A queued, running or succeeded evaluation of exactly this request, if any."""
    candidates = session.scalars(
        select(Evaluation)
        .where(
            Evaluation.name == name,
            Evaluation.pred_dir == pred_dir,
            Evaluation.ref_dir == ref_dir,
            Evaluation.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)),
        )
        .order_by(Evaluation.created_at.desc())
    )
    for candidate in candidates:
        same_params = {k: v for k, v in candidate.params.items() if k != "report_dir"} == params
        if same_params and (candidate.model_ref, candidate.project_id) == (model_ref, project_id):
            return candidate
    return None


def rows(session: Session, evaluation_id: str, table: str | None = None) -> dict[str, list[Any]]:
    """The stored tables of an evaluation (or only ``table``), rows in order."""
    query = select(EvaluationRow.table_name, EvaluationRow.row).where(
        EvaluationRow.evaluation_id == evaluation_id
    )
    if table is not None:
        query = query.where(EvaluationRow.table_name == table)
    tables: dict[str, list[Any]] = {}
    for name, row in session.execute(
        query.order_by(EvaluationRow.table_name, EvaluationRow.position)
    ):
        tables.setdefault(name, []).append(row)
    return tables
