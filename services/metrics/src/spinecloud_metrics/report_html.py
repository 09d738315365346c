"""A self-contained HTML report: the tables plus plots embedded as base64 PNG.

Plots a radiologist reads: Dice per vertebra as box plots (one box per model and vertebra),
a heat map of mean Dice per vertebra per model (as the SpineCloud paper's figures 2B/3B),
Hausdorff distance (HD95) per vertebra, then the statistics tables. Figures are drawn with
``matplotlib.figure.Figure`` directly (no pyplot state), so this is safe in a worker.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spinecloud_metrics.aggregate import apply_policy, scored_rows
from spinecloud_metrics.report import ReportData
from spinecloud_metrics.report_markdown import HEADLINE_METRICS, fmt, summary_wide
from spinecloud_shared import labels

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}
img{max-width:100%}"""


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _vertebra_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["name"])
    return [v.name for v in labels.VERTEBRAE if v.name in present]


def box_plot(report: ReportData, metric: str) -> str:
    """Box plot of ``metric`` per vertebra, one box per model (after the NaN policy)."""
    rows = scored_rows(report.classes)
    names, models = _vertebra_order(rows), report.models
    figure = Figure(figsize=(max(8.0, 0.5 * len(names) * len(models)), 4))
    axes = figure.subplots()
    width = 0.8 / max(len(models), 1)
    for m, model in enumerate(models):
        data = [
            apply_policy(
                rows[(rows["model"] == model) & (rows["name"] == n)][metric],
                metric,
                report.aggregation,
            ).to_numpy()
            for n in names
        ]
        positions = np.arange(len(names)) + (m - (len(models) - 1) / 2) * width
        parts = axes.boxplot(
            data, positions=positions, widths=width * 0.9, patch_artist=True, manage_ticks=False
        )
        for patch in parts["boxes"]:
            patch.set_facecolor(f"C{m}")
        axes.plot([], [], color=f"C{m}", label=model, linewidth=6)
    axes.set_xticks(np.arange(len(names)), names, rotation=90)
    axes.set_ylabel(metric + (" (mm)" if metric in ("hd", "hd95", "assd") else ""))
    axes.legend(loc="best")
    axes.set_title(f"{metric} per vertebra (non-finite values: {report.aggregation.policy})")
    return _png(figure)


def heat_map(report: ReportData, metric: str = "dice") -> str:
    """Mean ``metric`` per vertebra (columns) and model (rows), values written in the cells."""
    table = report.per_class[report.per_class["metric"] == metric]
    names = [v.name for v in labels.VERTEBRAE if v.name in set(table["name"])]
    grid = table.pivot_table(index="model", columns="name", values="mean").reindex(
        index=report.models, columns=names
    )
    figure = Figure(figsize=(max(8.0, 0.55 * len(names)), 1.0 + 0.6 * len(grid)))
    axes = figure.subplots()
    image = axes.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        colour = "k" if np.isfinite(value) and value > 0.6 else "w"  # readable on viridis
        axes.text(j, i, fmt(value, 2), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(len(names)), names, rotation=90)
    axes.set_yticks(range(len(grid)), grid.index)
    figure.colorbar(image, ax=axes, label=f"mean {metric}")
    axes.set_title(f"Mean {metric} per vertebra and model")
    return _png(figure)


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(report: ReportData, title: str = "SpineCloud benchmark report") -> str:
    """The whole report as one HTML document with embedded images."""
    settings = html.escape(str(report.settings()))
    metrics = list(HEADLINE_METRICS)
    parts = [
        f"<h1>{html.escape(title)}</h1><p><small>{settings}</small></p>",
        "<h2>Overall (per-case means)</h2>",
        _table(summary_wide(report.overall, ["model"], [*metrics, "id_rate", "d_mean"])),
        "<h2>Dice per vertebra</h2>",
        heat_map(report, "dice"),
        box_plot(report, "dice"),
        "<h2>Hausdorff distance per vertebra</h2>",
        box_plot(report, "hd95"),
        box_plot(report, "hd"),
        "<h2>Per region</h2>",
        _table(summary_wide(report.per_region, ["model", "region"], metrics)),
        "<h2>Per vertebra</h2>",
        _table(summary_wide(report.per_class, ["model", "name"], metrics)),
    ]
    if not report.comparisons.empty:
        parts += ["<h2>Statistics: model comparisons</h2>", _table(report.comparisons)]
    if not report.ranking.empty:
        parts += ["<h2>Ranking (VerSe scheme)</h2>", _table(report.ranking)]
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
