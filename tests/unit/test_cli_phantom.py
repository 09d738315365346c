"""``spinecloud phantom generate`` writes every format SpineCloud reads, on consistent grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spinecloud_shared.centroids import read_ctd_json
from spinecloud_shared.cli.app import app
from spinecloud_shared.dicom_series import read_dicom_series
from spinecloud_shared.layouts import read_totalsegmentator, read_verse
from spinecloud_shared.nifti import read_nifti

runner = CliRunner()
SMALL = ["--levels", "L4:sacrum", "--spacing", "4"]


def _run(*args: str) -> None:
    result = runner.invoke(app, ["phantom", "generate", *args])
    assert result.exit_code == 0, result.output


def test_dicom_format_labels_lie_on_the_series_grid(tmp_path: Path) -> None:
    _run(str(tmp_path), "--format", "dicom", *SMALL)
    case = tmp_path / "phantom000"
    ct = read_dicom_series(case / "dicom")
    labels = read_nifti(case / "labels.nii.gz")
    assert ct.same_grid(labels)
    # Bone under every labelled voxel: the labels sit on the vertebrae of the series.
    assert np.median(ct.array[labels.array > 0]) > 150
    centroids = read_ctd_json(case / "ctd.json", labels)
    assert set(centroids) == {int(v) for v in np.unique(labels.array) if v}


def test_nifti_format_and_count(tmp_path: Path) -> None:
    _run(str(tmp_path), "--format", "nifti", "--count", "2", "--orientation", "pir", *SMALL)
    for index in range(2):
        ct = read_nifti(tmp_path / f"phantom{index:03d}" / "ct.nii.gz")
        assert ct.orientation == "PIR"
        assert ct.same_grid(read_nifti(tmp_path / f"phantom{index:03d}" / "labels.nii.gz"))
    first = read_nifti(tmp_path / "phantom000" / "ct.nii.gz").array
    second = read_nifti(tmp_path / "phantom001" / "ct.nii.gz").array
    assert first.shape != second.shape or not np.array_equal(first, second)


@pytest.mark.parametrize("layout", ["totalsegmentator", "verse"])
def test_dataset_layouts(tmp_path: Path, layout: str) -> None:
    _run(str(tmp_path), "--format", layout, "--count", "2", *SMALL)
    reader = read_totalsegmentator if layout == "totalsegmentator" else read_verse
    assert len(list(reader(tmp_path))) == 2


def test_bad_options_are_refused(tmp_path: Path) -> None:
    for args in (["--levels", "sacrum:T1"], ["--levels", "T1"], ["--spacing", "0"],
                 ["--levels", "X9:L1"]):  # fmt: skip
        result = runner.invoke(app, ["phantom", "generate", str(tmp_path), *args])
        assert result.exit_code == 2, (args, result.output)
