"""``spinecloud metrics evaluate`` and ``compare`` end to end on phantom folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spinecloud_metrics.cli import app
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume

from .test_metrics_support import write_cases

runner = CliRunner()


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("cases"))


def test_evaluate_writes_every_report(cases: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(cases["good"]),
            "--ref",
            str(cases["ref"]),
            "--out",
            str(out),
            "--model",
            "good",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "classes.csv",
        "cases.csv",
        "per_class.csv",
        "per_region.csv",
        "overall.csv",
        "report.json",
        "report.md",
        "report.html",
    ):
        assert (out / name).is_file(), name
    classes = pd.read_csv(out / "classes.csv")
    assert len(classes) == 6 * 25 and set(classes["model"]) == {"good"}
    present = classes[classes["status"] == "present"]
    touched = present[present["dice"] < 1.0]
    assert len(touched) == 6 and set(touched.groupby("case_id").size()) == {1}  # one per case
    assert (present.loc[present["dice"] == 1.0, "hd"] == 0.0).all()
    document = json.loads((out / "report.json").read_text())
    assert document["settings"]["panel"]["nsd_tolerance_mm"] == 1.0
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_compare_adds_statistics_and_ranking(cases: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare",
            "--ref",
            str(cases["ref"]),
            "--model",
            f"good={cases['good']}",
            "--model",
            f"rough={cases['rough']}",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    comparisons = pd.read_csv(out / "comparisons.csv")
    dice = comparisons[comparisons["metric"] == "dice"].iloc[0]
    assert dice["mean_a"] > dice["mean_b"] and dice["n_paired"] == 6
    assert dice["rank_biserial"] == 1.0  # 'good' wins on every case
    ranking = pd.read_csv(out / "ranking.csv")
    assert list(ranking["model"]) == ["good", "rough"]
    markdown = (out / "report.md").read_text()
    assert "## Model comparisons" in markdown and "## Ranking (VerSe scheme)" in markdown


def test_bad_input_exits_non_zero_with_one_line(cases: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    for path in sorted(cases["ref"].iterdir()):
        write_nifti(Volume(np.full((4, 4, 4), 0.5, np.float32), np.eye(4)), bad / path.name)
    result = runner.invoke(
        app,
        ["evaluate", "--pred", str(bad), "--ref", str(cases["ref"]), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert "case00.nii.gz: label map contains non-integer values" in result.output
    assert "Traceback" not in result.output


def test_unpaired_folders_are_refused(cases: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", "--pred", str(empty), "--ref", str(cases["ref"])])
    assert result.exit_code == 2 and "do not pair up" in result.output


def test_headline_scores_entry_point(cases: dict[str, Path]) -> None:
    """The evaluator other services find through ``spinecloud.evaluators`` (name ``panel``)."""
    from importlib.metadata import entry_points

    (found,) = entry_points(group="spinecloud.evaluators", name="panel")
    score = found.load()
    perfect = score(cases["ref"], cases["ref"], "ref")
    assert set(perfect["per_case"]) == {f"case{seed:02d}" for seed in range(6)}
    assert all(value == 1.0 for value in perfect["per_case"].values())
    assert perfect["extra"]["id_rate"] == 1.0
    rough = score(cases["rough"], cases["ref"], "rough")
    assert all(0.0 <= value < 1.0 for value in rough["per_case"].values())
