"""Model-versus-model statistics on the same cases, and a VerSe-style ranking.

The sample unit is the case (each case's mean over its vertebrae, ``aggregate.case_values``),
so that the vertebrae of one scan do not count as independent samples.

* Unpaired t-test, as the SpineCloud paper: Welch's t-test (unequal variances), two-sided,
  with Cohen's d (pooled standard deviation) as effect size.
* Wilcoxon signed-rank test, as VerSe: two-sided on the per-case differences of the cases
  both models have (zero differences dropped, ``zero_method="wilcox"``), with the matched-pairs
  rank-biserial correlation as effect size.
* Multiple comparisons: Holm-Bonferroni over all metrics of a comparison, separately for
  each test; raw and adjusted p-values are both reported.
* Ranking (VerSe Appendix A): for every metric and every ordered pair of models, a one-sided
  Wilcoxon signed-rank test ("greater" for higher-is-better metrics, "less" otherwise); a
  p-value below 0.001 gives the first model a point. Points are normalised by the number of
  models and combined with weights (Dice and id.rate 2, HD and d_mean 1, as VerSe'19).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from spinecloud_metrics.aggregate import LOWER_IS_BETTER

COMPARISON_METRICS: tuple[str, ...] = (
    "dice", "iou", "precision", "sensitivity", "specificity", "kappa", "auc", "boundary_f1",
    "hd", "hd95", "assd", "nsd", "id_rate", "d_mean",
)  # fmt: skip
#: VerSe'19's weights: Dice and id.rate twice HD and d_mean.
RANKING_WEIGHTS: dict[str, float] = {"dice": 2.0, "hd": 1.0, "id_rate": 2.0, "d_mean": 1.0}
RANKING_ALPHA = 0.001

FloatArray = npt.NDArray[np.float64]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, np.nan)
    order = valid[np.argsort(p[valid])]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def cohens_d(a: FloatArray, b: FloatArray) -> float:
    """Cohen's d of two independent samples, pooled standard deviation."""
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return float("nan")
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    return float((a.mean() - b.mean()) / np.sqrt(pooled)) if pooled > 0 else float("nan")


def rank_biserial(differences: FloatArray) -> float:
    """Matched-pairs rank-biserial correlation: (W+ - W-) / (W+ + W-), zeros dropped."""
    d = differences[differences != 0]
    if d.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    positive, negative = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((positive - negative) / (positive + negative))


def welch(a: FloatArray, b: FloatArray) -> tuple[float, float]:
    """Welch's two-sided t statistic and p-value (NaN when a sample is too small)."""
    if a.size < 2 or b.size < 2 or (a.var() == 0 and b.var() == 0):
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def signed_rank(differences: FloatArray, alternative: str = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank statistic and p-value of paired differences (NaN if all zero)."""
    if np.count_nonzero(differences) == 0:
        return float("nan"), float("nan")
    result = stats.wilcoxon(differences, zero_method="wilcox", alternative=alternative)
    return float(result.statistic), float(result.pvalue)


def _paired(per_case: pd.DataFrame, model_a: str, model_b: str, metric: str) -> pd.DataFrame:
    wide = per_case.pivot_table(index="case_id", columns="model", values=metric, aggfunc="first")
    return wide[[model_a, model_b]].dropna()


def _compare_metric(
    per_case: pd.DataFrame, model_a: str, model_b: str, metric: str
) -> dict[str, object]:
    a = per_case.loc[per_case["model"] == model_a, metric].dropna().to_numpy(dtype=np.float64)
    b = per_case.loc[per_case["model"] == model_b, metric].dropna().to_numpy(dtype=np.float64)
    paired = _paired(per_case, model_a, model_b, metric)
    differences = (paired[model_a] - paired[model_b]).to_numpy(dtype=np.float64)
    t, p_t = welch(a, b)
    w, p_w = signed_rank(differences)
    return {
        "metric": metric, "model_a": model_a, "model_b": model_b,
        "mean_a": float(a.mean()) if a.size else float("nan"),
        "mean_b": float(b.mean()) if b.size else float("nan"),
        "n_a": int(a.size), "n_b": int(b.size), "n_paired": int(differences.size),
        "welch_t": t, "welch_p": p_t, "cohens_d": cohens_d(a, b),
        "wilcoxon_w": w, "wilcoxon_p": p_w, "rank_biserial": rank_biserial(differences),
    }  # fmt: skip


def compare(
    per_case: pd.DataFrame,
    model_a: str,
    model_b: str,
    metrics: Sequence[str] = COMPARISON_METRICS,
) -> pd.DataFrame:
    """Welch t-test and Wilcoxon signed-rank test of every metric, Holm-adjusted per test.

    ``per_case`` is ``aggregate.case_values`` of both models (columns model, case_id, metrics).
    """
    present = [m for m in metrics if m in per_case]
    table = pd.DataFrame([_compare_metric(per_case, model_a, model_b, m) for m in present])
    if not table.empty:
        table["welch_p_holm"] = holm(table["welch_p"].tolist())
        table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"].tolist())
    return table


def _beats(per_case: pd.DataFrame, a: str, b: str, metric: str, alpha: float) -> bool:
    paired = _paired(per_case, a, b, metric)
    differences = (paired[a] - paired[b]).to_numpy(dtype=np.float64)
    alternative = "less" if metric in LOWER_IS_BETTER else "greater"
    _, p = signed_rank(differences, alternative)
    return bool(p < alpha)


def rank(
    per_case: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    alpha: float = RANKING_ALPHA,
) -> pd.DataFrame:
    """VerSe-style ranking of every model in ``per_case`` (see the module docstring).

    Returns one row per model: normalised points per metric, the weighted score (0-1) and
    the rank (1 = best; ties share the better rank).
    """
    weights = {m: w for m, w in (weights or RANKING_WEIGHTS).items() if m in per_case}
    models = sorted(per_case["model"].unique())
    points = {model: dict.fromkeys(weights, 0.0) for model in models}
    for metric in weights:
        for a, b in itertools.permutations(models, 2):
            if _beats(per_case, a, b, metric, alpha):
                points[a][metric] += 1.0
    rows = []
    total_weight = sum(weights.values())
    for model in models:
        normalised = {m: points[model][m] / len(models) for m in weights}
        score = (
            sum(weights[m] * normalised[m] for m in weights) / total_weight if total_weight else 0.0
        )
        rows.append(
            {"model": model, **{f"points_{m}": v for m, v in normalised.items()}, "score": score}
        )
    table = pd.DataFrame(rows)
    table["rank"] = table["score"].rank(ascending=False, method="min").astype(int)
    return table.sort_values(["rank", "model"]).reset_index(drop=True)
