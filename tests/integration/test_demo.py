"""The README's main job, ``scripts/demo.sh``, run as a newcomer runs it (install skipped).

It must leave every output it announces and score the default model against the phantom's
exact labels. The thresholds are the default model's measured quality on this phantom (thoracic
Dice 0.84, 7 of 11 vertebrae identified) with a margin: a broken pipeline, a label shift or a
model that no longer loads falls far below them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_segments_the_phantom_and_scores_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "SPINECLOUD_SKIP_BOOTSTRAP": "1"}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    segmentation = out / "segmentation"
    for name in ("labels.nii.gz", "centroids_ctd.json", "summary.json", "preview.png"):
        assert (segmentation / name).stat().st_size > 0, name
    seg = dcmread(segmentation / "segmentation.dcm")
    assert seg.Modality == "SEG"
    assert len(seg.SegmentSequence) >= 5

    summary = json.loads((segmentation / "summary.json").read_text())
    assert summary["model"]["name"] == "spine-segresnet-demo"

    report = out / "report"
    assert (report / "report.html").stat().st_size > 0
    thoracic = next(
        row
        for row in _rows(report / "per_region.csv")
        if row["region"] == "thoracic" and row["metric"] == "dice"
    )
    assert float(thoracic["mean"]) > 0.7
    (case,) = _rows(report / "cases.csv")
    assert int(case["n_identified"]) >= 5
