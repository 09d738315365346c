"""The tables of a benchmark report, built once from one or more models' evaluations.

Machine-readable outputs are written here (CSV per table, one JSON with every table and the
settings); Markdown and HTML renderings live in ``report_markdown.py`` and ``report_html.py``.
In JSON, NaN and infinite values are written as ``null``; the ``status`` column says why
(``missed``: infinite distances, ``absent``: undefined).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from spinecloud_metrics import aggregate, statistics
from spinecloud_metrics.aggregate import AggregationConfig
from spinecloud_metrics.api import Evaluation
from spinecloud_metrics.panel import PanelConfig


@dataclass
class ReportData:
    """Every table of a report; comparisons and ranking appear with two models or more."""

    classes: pd.DataFrame
    cases: pd.DataFrame
    panel: PanelConfig = field(default_factory=PanelConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)

    @classmethod
    def from_evaluations(
        cls,
        evaluations: Sequence[Evaluation],
        panel: PanelConfig | None = None,
        aggregation: AggregationConfig | None = None,
    ) -> ReportData:
        """Concatenate the models' evaluations (each already carries its model name)."""
        classes = pd.concat([e.classes for e in evaluations], ignore_index=True)
        cases = pd.concat([e.cases for e in evaluations], ignore_index=True)
        return cls(classes, cases, panel or PanelConfig(), aggregation or AggregationConfig())

    @property
    def models(self) -> list[str]:
        """Model names, in the order given."""
        return list(dict.fromkeys(self.classes["model"]))

    @cached_property
    def per_class(self) -> pd.DataFrame:
        """Summary per model and vertebra."""
        return aggregate.class_table(self.classes, self.aggregation)

    @cached_property
    def per_region(self) -> pd.DataFrame:
        """Summary per model and region."""
        return aggregate.region_table(self.classes, self.aggregation)

    @cached_property
    def per_case(self) -> pd.DataFrame:
        """One row per model and case: means over vertebrae and labelling metrics."""
        return aggregate.case_values(self.classes, self.cases, self.aggregation)

    @cached_property
    def overall(self) -> pd.DataFrame:
        """Summary per model over cases."""
        return aggregate.overall_table(self.classes, self.cases, self.aggregation)

    @cached_property
    def comparisons(self) -> pd.DataFrame:
        """Every pair of models: Welch t-test and Wilcoxon signed-rank per metric."""
        tables = [
            statistics.compare(self.per_case, a, b)
            for a, b in itertools.combinations(self.models, 2)
        ]
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()

    @cached_property
    def ranking(self) -> pd.DataFrame:
        """VerSe-style ranking (two models or more)."""
        return statistics.rank(self.per_case) if len(self.models) > 1 else pd.DataFrame()

    def settings(self) -> dict[str, Any]:
        """Panel and aggregation settings, stated in every report."""
        return {
            "panel": _plain(dataclasses.asdict(self.panel)),
            "aggregation": _plain(dataclasses.asdict(self.aggregation)),
            "statistics": {
                "unpaired": "Welch t-test, two-sided, Cohen's d",
                "paired": "Wilcoxon signed-rank, two-sided, rank-biserial r",
                "correction": "Holm-Bonferroni over metrics, per test",
                "ranking": "VerSe: one-sided Wilcoxon, p < 0.001 gives a point",
            },
        }

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by name (empty ones left out)."""
        named = {
            "classes": self.classes,
            "cases": self.cases,
            "per_class": self.per_class,
            "per_region": self.per_region,
            "per_case": self.per_case,
            "overall": self.overall,
            "comparisons": self.comparisons,
            "ranking": self.ranking,
        }
        return {name: table for name, table in named.items() if not table.empty}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as JSON-safe dicts (NaN and infinity become None)."""
    return [_plain(row) for row in table.to_dict(orient="records")]


def write_csv(report: ReportData, folder: str | Path) -> list[Path]:
    """One CSV per table (``inf`` written as ``inf``, NaN as empty)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in report.tables().items():
        path = folder / f"{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_json(report: ReportData, path: str | Path) -> Path:
    """Every table and the settings in one JSON document."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": report.settings(),
        "models": report.models,
        "tables": {name: records(t) for name, t in report.tables().items()},
    }
    path.write_text(json.dumps(document, indent=1, allow_nan=False))
    return path
