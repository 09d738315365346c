"""From per-case, per-class rows to summary tables: per class, region, case and overall.

Which rows count: for a class, the cases whose *reference* contains it (status ``present`` or
``missed``), as in VerSe's averages over annotated vertebrae. Classes only in the prediction
(``false_positive``) are counted separately (``n_false_positive``) and classes absent from
both are left out, unless the panel scored them as perfect (then their finite values count).

Non-finite values (infinite distances of a missed class, a NaN precision of an empty
prediction, a NaN ``d_mean``) follow a policy, stated in every table:

* ``worst`` (default): substitute the worst case, as in VerSe's ranking (Appendix A):
  distances become ``worst_distance_mm`` (100 mm, VerSe's HD), ``d_mean`` becomes 1000 mm,
  ratio metrics become 0;
* ``exclude``: leave them out (VerSe's section 2.3); ``n`` says how many values remain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from spinecloud_metrics.panel import PANEL_METRICS

#: Metrics where smaller is better (all in mm); every other metric is better when larger.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"hd", "hd95", "assd", "d_mean", "centroid_distance_mm"}
)
DISTANCE_METRICS: frozenset[str] = LOWER_IS_BETTER
#: VerSe's substitutes for a missing vertebra (Appendix A): HD 100 mm, d_mean 1000 mm.
VERSE_WORST_HD_MM = 100.0
VERSE_WORST_D_MEAN_MM = 1000.0
CASE_METRICS: tuple[str, ...] = ("id_rate", "d_mean")


class NanPolicy(StrEnum):
    """What aggregation does with NaN and infinite values."""

    WORST = "worst"
    EXCLUDE = "exclude"


class CiMethod(StrEnum):
    """How the 95 % confidence interval of the mean is computed."""

    T = "t"  # Student t interval: mean ± t(0.975, n-1) · s / sqrt(n)
    BOOTSTRAP = "bootstrap"  # percentile bootstrap, 2000 resamples, fixed seed


@dataclass(frozen=True)
class AggregationConfig:
    """Aggregation settings; every table states them."""

    policy: NanPolicy = NanPolicy.WORST
    worst_distance_mm: float = VERSE_WORST_HD_MM
    worst_d_mean_mm: float = VERSE_WORST_D_MEAN_MM
    ci: CiMethod = CiMethod.T
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    seed: int = 0


def worst_value(metric: str, config: AggregationConfig) -> float:
    """The value substituted for a non-finite ``metric`` under the ``worst`` policy."""
    if metric == "d_mean":
        return config.worst_d_mean_mm
    if metric in DISTANCE_METRICS:
        return config.worst_distance_mm
    return 0.0


def scored_rows(classes: pd.DataFrame) -> pd.DataFrame:
    """Rows that enter aggregation: the class is in the reference, or was scored as perfect."""
    in_reference = classes["status"].isin(["present", "missed"])
    scored_absent = (classes["status"] == "absent") & np.isfinite(classes["dice"].astype(float))
    return classes[in_reference | scored_absent]


def apply_policy(values: pd.Series, metric: str, config: AggregationConfig) -> pd.Series:
    """``values`` with non-finite entries substituted (worst) or dropped (exclude)."""
    values = values.astype(float)
    finite = np.isfinite(values)
    if config.policy is NanPolicy.EXCLUDE:
        return values[finite]
    return values.where(finite, worst_value(metric, config))


def confidence_interval(
    values: npt.NDArray[np.float64], config: AggregationConfig
) -> tuple[float, float]:
    """Two-sided confidence interval of the mean (method and level from ``config``)."""
    n = values.size
    if n < 2:
        return (float("nan"), float("nan"))
    if config.ci is CiMethod.BOOTSTRAP:
        rng = np.random.default_rng(config.seed)
        means = rng.choice(values, size=(config.bootstrap_resamples, n), replace=True).mean(axis=1)
        alpha = (1.0 - config.confidence) / 2.0
        low, high = np.quantile(means, [alpha, 1.0 - alpha])
        return float(low), float(high)
    sem = values.std(ddof=1) / np.sqrt(n)
    half = stats.t.ppf(0.5 + config.confidence / 2.0, n - 1) * sem
    return float(values.mean() - half), float(values.mean() + half)


def describe(values: pd.Series, metric: str, config: AggregationConfig) -> dict[str, float]:
    """n, mean, std, median and CI of one metric's values after the NaN policy."""
    raw = values.astype(float)
    kept = apply_policy(raw, metric, config).to_numpy(dtype=np.float64)
    low, high = confidence_interval(kept, config)
    return {
        "n": int(kept.size),
        "n_nonfinite": int((~np.isfinite(raw)).sum()),
        "mean": float(kept.mean()) if kept.size else float("nan"),
        "std": float(kept.std(ddof=1)) if kept.size > 1 else float("nan"),
        "median": float(np.median(kept)) if kept.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
    }


def _summaries(
    frame: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], config: AggregationConfig
) -> pd.DataFrame:
    rows = []
    for key, group in frame.groupby(list(by), sort=False, dropna=False):
        keys = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            if metric in group:
                described = describe(group[metric], metric, config)
                rows.append({**dict(zip(by, keys, strict=True)), "metric": metric, **described})
    return pd.DataFrame(rows)


def class_table(
    classes: pd.DataFrame,
    config: AggregationConfig | None = None,
    metrics: Sequence[str] = PANEL_METRICS,
) -> pd.DataFrame:
    """Summary per model and class (vertebra), classes head to feet."""
    config = config or AggregationConfig()
    rows = scored_rows(classes).sort_values(["model", "label"])
    return _summaries(rows, ["model", "label", "name", "region"], metrics, config)


def region_table(
    classes: pd.DataFrame,
    config: AggregationConfig | None = None,
    metrics: Sequence[str] = PANEL_METRICS,
) -> pd.DataFrame:
    """Summary per model and region, over every (case, vertebra) of the region pooled."""
    config = config or AggregationConfig()
    rows = scored_rows(classes).sort_values(["model", "label"])
    return _summaries(rows, ["model", "region"], metrics, config)


def case_values(
    classes: pd.DataFrame,
    cases: pd.DataFrame,
    config: AggregationConfig | None = None,
    metrics: Sequence[str] = PANEL_METRICS,
) -> pd.DataFrame:
    """One row per model and case: each metric's mean over the case's scored classes (after
    the NaN policy), plus the labelling metrics. The unit of model comparisons."""
    config = config or AggregationConfig()
    rows = scored_rows(classes)
    out = []
    for (model, case), group in rows.groupby(["model", "case_id"], sort=True):
        values = {m: float(apply_policy(group[m], m, config).mean()) for m in metrics}
        out.append({"model": model, "case_id": case, **values})
    frame = pd.DataFrame(out, columns=["model", "case_id", *metrics])
    labelling = cases[["model", "case_id", *CASE_METRICS]].copy()
    for metric in CASE_METRICS:
        if config.policy is NanPolicy.WORST:
            labelling[metric] = labelling[metric].astype(float).fillna(worst_value(metric, config))
    return frame.merge(labelling, on=["model", "case_id"], how="outer")


def case_table(
    classes: pd.DataFrame, cases: pd.DataFrame, config: AggregationConfig | None = None
) -> pd.DataFrame:
    """Per-case means (one row per model and case), as ``case_values``."""
    return case_values(classes, cases, config)


def overall_table(
    classes: pd.DataFrame,
    cases: pd.DataFrame,
    config: AggregationConfig | None = None,
) -> pd.DataFrame:
    """Summary per model over cases: each case's mean over vertebrae is one sample (so the
    CI is over cases, the independent unit), labelling metrics included."""
    config = config or AggregationConfig()
    per_case = case_values(classes, cases, config)
    return _summaries(per_case, ["model"], [*PANEL_METRICS, *CASE_METRICS], config)
