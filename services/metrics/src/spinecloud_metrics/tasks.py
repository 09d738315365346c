"""The metrics worker's Celery task: evaluate a model's predictions, store the tables.

The gateway creates an ``Evaluation`` row (prediction and reference folders of a dataset
split, parameters) and enqueues ``spinecloud.metrics.evaluate`` with its id after the commit;
this task, on the ``metrics`` queue, computes the panel, stores the summary tables as
``EvaluationRow``s and optionally writes the report files. Bad input (mismatched grids,
unknown labels, unpaired folders...) marks the job failed with the error's code and sentence;
the worker carries on (``spinecloud_shared.jobs``). A redelivered job replaces its rows, never
duplicates them.

``params`` keys (all optional): ``pred_scheme``, ``ref_scheme``, ``nsd_tolerance_mm``,
``boundary_tolerance_mm``, ``resample``, ``both_empty_perfect``, ``surface``, ``policy``, ``ci``,
``report_dir`` (write CSV/JSON/Markdown/HTML there too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import delete

from spinecloud_metrics import report_html, report_markdown
from spinecloud_metrics.aggregate import AggregationConfig, CiMethod, NanPolicy
from spinecloud_metrics.api import Options, evaluate_folders
from spinecloud_metrics.panel import PanelConfig, SurfaceMode
from spinecloud_metrics.report import ReportData, records, write_csv, write_json
from spinecloud_shared.db.job_status import row_recorder
from spinecloud_shared.db.models import Evaluation, EvaluationRow
from spinecloud_shared.db.session import session_scope
from spinecloud_shared.errors import InvalidInputError, NotFoundError
from spinecloud_shared.jobs import job_task
from spinecloud_shared.queue import celery_app
from spinecloud_shared.task_names import EVALUATE

#: Tables stored in the database, one ``EvaluationRow`` per row.
STORED_TABLES: tuple[str, ...] = ("per_class", "per_region", "per_case", "overall")


#: A redelivered evaluation is computed again (its rows are replaced), whatever its state.
record_evaluation = row_recorder(Evaluation, "Evaluation", kept=())


def options_from_params(params: dict[str, Any]) -> tuple[Options, AggregationConfig]:
    """Evaluation and aggregation settings from an evaluation's ``params``."""
    try:
        panel = PanelConfig(
            nsd_tolerance_mm=float(params.get("nsd_tolerance_mm", 1.0)),
            boundary_tolerance_mm=float(params.get("boundary_tolerance_mm", 2.0)),
            both_empty_perfect=bool(params.get("both_empty_perfect", False)),
            surface=SurfaceMode(params.get("surface", "voxels")),
        )
        options = Options(
            pred_scheme=params.get("pred_scheme", "canonical"),
            ref_scheme=params.get("ref_scheme", "canonical"),
            config=panel,
            resample=bool(params.get("resample", False)),
        )
        aggregation = AggregationConfig(
            policy=NanPolicy(params.get("policy", "worst")), ci=CiMethod(params.get("ci", "t"))
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"Invalid evaluation parameters: {exc}.") from exc
    return options, aggregation


def _load_job(job_id: str) -> tuple[str, str, str, dict[str, Any]]:
    with session_scope() as session:
        evaluation = session.get(Evaluation, job_id)
        if evaluation is None:
            raise NotFoundError(f"Evaluation {job_id} does not exist.")
        model = evaluation.model_ref or evaluation.name
        return model, evaluation.pred_dir, evaluation.ref_dir, dict(evaluation.params or {})


def summary_of(report: ReportData) -> dict[str, Any]:
    """Headline numbers stored on the evaluation: overall means and the case count."""
    overall = report.overall.set_index("metric")
    wanted = ("dice", "hd95", "assd", "nsd", "id_rate", "d_mean")
    means = {m: overall.loc[m, "mean"] for m in wanted if m in overall.index}
    summary = {
        "n_cases": int(report.cases["case_id"].nunique()),
        **means,
        "policy": str(report.aggregation.policy),
    }
    return records(pd.DataFrame([summary]))[0]


def _store(
    job_id: str, report: ReportData, summary: dict[str, Any], report_dir: str | None
) -> None:
    tables = report.tables()
    with session_scope() as session:
        evaluation = session.get_one(Evaluation, job_id)
        session.execute(delete(EvaluationRow).where(EvaluationRow.evaluation_id == job_id))
        for name in STORED_TABLES:
            for position, row in enumerate(records(tables[name])):
                session.add(
                    EvaluationRow(evaluation_id=job_id, table_name=name, position=position, row=row)
                )
        evaluation.summary = summary
        evaluation.report_dir = report_dir


def _write_files(report: ReportData, folder: str, title: str) -> None:
    out = Path(folder)
    write_csv(report, out)
    write_json(report, out / "report.json")
    (out / "report.md").write_text(report_markdown.render(report, title))
    (out / "report.html").write_text(report_html.render(report, title))


def run_evaluation(job_id: str) -> dict[str, Any]:
    """Evaluate the job's folders and store its tables; returns the summary."""
    model, pred_dir, ref_dir, params = _load_job(job_id)
    options, aggregation = options_from_params(params)
    evaluation = evaluate_folders(pred_dir, ref_dir, model=model, options=options)
    report = ReportData.from_evaluations([evaluation], options.config, aggregation)
    report_dir = params.get("report_dir")
    if report_dir:
        _write_files(report, str(report_dir), f"SpineCloud evaluation: {model}")
    summary = summary_of(report)
    _store(job_id, report, summary=summary, report_dir=str(report_dir) if report_dir else None)
    return summary


@job_task(celery_app, EVALUATE, record=record_evaluation)
def evaluate(job_id: str) -> dict[str, Any]:
    """Celery task ``spinecloud.metrics.evaluate`` (queue ``metrics``): see the module doc."""
    return run_evaluation(job_id)
