"""Aggregation rules, confidence intervals, tests, effect sizes, Holm and the VerSe ranking."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from spinecloud_metrics.aggregate import (
    AggregationConfig,
    CiMethod,
    NanPolicy,
    case_values,
    class_table,
    confidence_interval,
    describe,
    region_table,
)
from spinecloud_metrics.statistics import cohens_d, compare, holm, rank, rank_biserial


def test_holm_matches_hand_computation() -> None:
    assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5], rtol=1e-12)
    adjusted = holm([0.02, float("nan"), 0.01])
    assert math.isnan(adjusted[1]) and adjusted == [0.02, adjusted[1], 0.02]


def test_t_interval_matches_scipy() -> None:
    values = np.array([0.81, 0.9, 0.86, 0.77, 0.93, 0.88])
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert_allclose(confidence_interval(values, AggregationConfig()), expected, rtol=1e-12)


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean() -> None:
    values = np.random.default_rng(1).normal(0.8, 0.05, 40)
    config = AggregationConfig(ci=CiMethod.BOOTSTRAP)
    low, high = confidence_interval(values, config)
    assert (low, high) == confidence_interval(values, config)
    assert low < values.mean() < high
    t_low, t_high = confidence_interval(values, AggregationConfig())
    assert abs((high - low) - (t_high - t_low)) < 0.3 * (t_high - t_low)


def test_policies_for_infinite_and_nan_values() -> None:
    hd = pd.Series([2.0, 4.0, math.inf])
    worst = describe(hd, "hd", AggregationConfig())
    assert worst["n"] == 3 and worst["n_nonfinite"] == 1 and worst["mean"] == pytest.approx(106 / 3)
    assert worst["median"] == 4.0
    excluded = describe(hd, "hd", AggregationConfig(policy=NanPolicy.EXCLUDE))
    assert excluded["n"] == 2 and excluded["mean"] == 3.0
    precision = describe(pd.Series([1.0, math.nan]), "precision", AggregationConfig())
    assert precision["mean"] == 0.5  # NaN precision of an empty prediction counts as 0


def _rows() -> pd.DataFrame:
    rows = []
    for case, (dice_c1, dice_l1, l1_status) in enumerate(
        [(0.9, 0.8, "present"), (0.7, 0.0, "missed"), (0.8, 0.6, "present")]
    ):
        hd_l1 = math.inf if l1_status == "missed" else 3.0
        rows.append(
            {
                "model": "m",
                "case_id": f"c{case}",
                "label": 1,
                "name": "C1",
                "region": "cervical",
                "status": "present",
                "dice": dice_c1,
                "hd": 2.0,
            }
        )
        rows.append(
            {
                "model": "m",
                "case_id": f"c{case}",
                "label": 20,
                "name": "L1",
                "region": "lumbar",
                "status": l1_status,
                "dice": dice_l1,
                "hd": hd_l1,
            }
        )
        rows.append(
            {
                "model": "m",
                "case_id": f"c{case}",
                "label": 26,
                "name": "sacrum",
                "region": "sacrum",
                "status": "absent",
                "dice": math.nan,
                "hd": math.nan,
            }
        )
    return pd.DataFrame(rows)


def test_tables_count_reference_classes_and_substitute_worst_case() -> None:
    rows = _rows()
    table = class_table(rows, metrics=["dice", "hd"]).set_index(["name", "metric"])
    assert table.loc[("L1", "dice"), "n"] == 3
    assert table.loc[("L1", "dice"), "mean"] == pytest.approx(1.4 / 3)
    assert table.loc[("L1", "hd"), "mean"] == pytest.approx(106 / 3)
    assert ("sacrum", "dice") not in table.index  # absent everywhere: not scored
    regions = region_table(rows, metrics=["dice"]).set_index("region")
    assert regions.loc["cervical", "mean"] == pytest.approx(0.8)
    cases = pd.DataFrame(
        {
            "model": "m",
            "case_id": ["c0", "c1", "c2"],
            "id_rate": [1, 0.5, 1],
            "d_mean": [1.0, math.nan, 2.0],
        }
    )
    per_case = case_values(rows, cases, metrics=["dice", "hd"]).set_index("case_id")
    assert per_case.loc["c1", "dice"] == pytest.approx(0.35)
    assert per_case.loc["c1", "hd"] == pytest.approx(51.0)
    assert per_case.loc["c1", "d_mean"] == 1000.0


def _two_models(shift: float, n: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(0.85, 0.03, n)
    a = pd.DataFrame(
        {
            "model": "a",
            "case_id": range(n),
            "dice": base + shift,
            "hd": 5 - 10 * shift + rng.normal(0, 0.1, n),
        }
    )
    b = pd.DataFrame(
        {"model": "b", "case_id": range(n), "dice": base, "hd": 5 + rng.normal(0, 0.1, n)}
    )
    return pd.concat([a, b], ignore_index=True)


def test_compare_reports_both_tests_with_effect_sizes() -> None:
    frame = _two_models(0.05)
    table = compare(frame, "a", "b", metrics=["dice", "hd"]).set_index("metric")
    a = frame.loc[frame["model"] == "a", "dice"].to_numpy()
    b = frame.loc[frame["model"] == "b", "dice"].to_numpy()
    assert table.loc["dice", "welch_p"] == pytest.approx(
        stats.ttest_ind(a, b, equal_var=False).pvalue
    )
    assert table.loc["dice", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert table.loc["dice", "rank_biserial"] == 1.0 and table.loc["hd", "rank_biserial"] == -1.0
    assert table.loc["dice", "cohens_d"] == pytest.approx(cohens_d(a, b))
    assert table["wilcoxon_p_holm"].tolist() == holm(table["wilcoxon_p"].tolist())
    assert table["welch_p_holm"].tolist() == holm(table["welch_p"].tolist())


def test_effect_sizes_on_known_values() -> None:
    assert cohens_d(np.array([1.0, 2, 3]), np.array([2.0, 3, 4])) == pytest.approx(-1.0)
    assert rank_biserial(np.array([1.0, 2.0, -3.0])) == pytest.approx((3 - 3) / 6)
    assert math.isnan(rank_biserial(np.zeros(4)))


def test_verse_ranking_gives_points_for_significant_wins_only() -> None:
    clear = rank(_two_models(0.05), weights={"dice": 2.0, "hd": 1.0})
    assert list(clear["model"]) == ["a", "b"] and list(clear["rank"]) == [1, 2]
    assert clear.loc[0, "points_dice"] == 0.5 and clear.loc[0, "score"] == pytest.approx(0.5)
    tie = rank(_two_models(0.0), weights={"dice": 2.0})
    assert list(tie["rank"]) == [1, 1] and (tie["score"] == 0).all()
