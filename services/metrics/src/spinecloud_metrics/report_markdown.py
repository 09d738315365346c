"""A Markdown rendering of a report: settings, overall, per region, per vertebra, statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from spinecloud_metrics.report import ReportData

#: Metrics shown in the human-readable tables (every metric is in the CSV/JSON).
HEADLINE_METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "boundary_f1", "hd", "hd95", "assd")


def fmt(value: object, digits: int = 3) -> str:
    """A cell: numbers to ``digits`` decimals, NaN as an en dash, infinity as ∞."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (selected ``columns``)."""
    columns = list(columns or frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame[columns].iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def summary_wide(
    summary: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Summary rows (one per metric) as one row per group: 'mean ± sd [ci_low, ci_high]'."""
    wanted = summary[summary["metric"].isin(metrics)].copy()
    wanted["cell"] = [
        f"{fmt(r.mean)} ± {fmt(r.std)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}] (n={r.n})"
        for r in wanted.itertuples()
    ]
    wide = wanted.pivot_table(
        index=list(keys), columns="metric", values="cell", aggfunc="first", sort=False
    )
    present = [m for m in metrics if m in wide.columns]
    return wide[present].reset_index()


def _settings_lines(report: ReportData) -> list[str]:
    panel, agg = report.panel, report.aggregation
    return [
        f"- Models: {', '.join(report.models)}; cases: {report.cases['case_id'].nunique()}",
        f"- NSD tolerance {panel.nsd_tolerance_mm} mm, boundary F1 tolerance "
        f"{panel.boundary_tolerance_mm} mm, HD percentile {panel.hd_percentile}, surfaces: "
        f"{panel.surface} (connectivity {panel.connectivity})",
        f"- NaN/inf policy: **{agg.policy}** (worst case: distances {agg.worst_distance_mm} mm, "
        f"d_mean {agg.worst_d_mean_mm} mm, ratios 0); CI: {agg.confidence:.0%} {agg.ci}",
        "- Cells: mean ± sd [95 % CI] (n); tests: Welch t-test and Wilcoxon signed-rank on "
        "per-case means, Holm-adjusted over metrics",
    ]


def render(report: ReportData, title: str = "SpineCloud benchmark report") -> str:
    """The whole report as Markdown."""
    metrics = list(HEADLINE_METRICS)
    parts = [
        f"# {title}",
        "",
        *_settings_lines(report),
        "",
        "## Overall (per-case means)",
        "",
        markdown_table(summary_wide(report.overall, ["model"], [*metrics, "id_rate", "d_mean"])),
        "",
        "## Per region",
        "",
        markdown_table(summary_wide(report.per_region, ["model", "region"], metrics)),
        "",
        "## Per vertebra",
        "",
        markdown_table(summary_wide(report.per_class, ["model", "name"], metrics)),
    ]
    if not report.comparisons.empty:
        parts += [
            "",
            "## Model comparisons",
            "",
            markdown_table(
                report.comparisons,
                [
                    "model_a",
                    "model_b",
                    "metric",
                    "mean_a",
                    "mean_b",
                    "n_paired",
                    "welch_p",
                    "welch_p_holm",
                    "cohens_d",
                    "wilcoxon_p",
                    "wilcoxon_p_holm",
                    "rank_biserial",
                ],
            ),
        ]
    if not report.ranking.empty:
        parts += ["", "## Ranking (VerSe scheme)", "", markdown_table(report.ranking)]
    return "\n".join(parts) + "\n"
