"""The TotalSegmentator example through file reading and the v2 -> canonical conversion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from spinecloud_metrics.api import Options, evaluate_files
from spinecloud_metrics.panel import Status
from spinecloud_shared import labels
from spinecloud_shared.nifti import read_nifti, write_nifti

pytestmark = pytest.mark.realdata

V2 = Options(pred_scheme="totalseg_v2", ref_scheme="totalseg_v2")
T11, T12, L1, L2 = (labels.by_name(n).id for n in ("T11", "T12", "L1", "L2"))
V2_T12, V2_L2 = 32, 30  # TotalSegmentator v2 ids


@pytest.fixture(scope="module")
def seg_path(totalseg_example: Path) -> Path:
    return totalseg_example / "example_seg.nii.gz"


def test_example_against_itself_is_perfect(seg_path: Path) -> None:
    result = evaluate_files(seg_path, seg_path, options=V2)
    present = {r.label: r for r in result.classes if r.status is Status.PRESENT}
    assert set(present) == {T11, T12, L1, L2}
    for r in present.values():
        assert r.metrics["dice"] == 1.0 and r.metrics["nsd"] == 1.0 and r.metrics["kappa"] == 1.0
        assert r.metrics["hd"] == r.metrics["hd95"] == r.metrics["assd"] == 0.0
    absent = [r for r in result.classes if r.status is Status.ABSENT]
    assert len(absent) == len(labels.STANDARD_IDS) - 4
    assert all(math.isnan(r.metrics["dice"]) for r in absent)
    assert result.labelling.id_rate == 1.0 and result.labelling.d_mean == 0.0


def test_example_against_perturbed_copy(seg_path: Path, tmp_path: Path) -> None:
    """T12 moved one voxel (3 mm) along j, L2 erased: known Dice, HD and labelling changes."""
    ref = read_nifti(seg_path)
    arr = np.asarray(ref.array).copy()
    t12 = arr == V2_T12
    moved = np.roll(t12, 1, axis=1)
    assert not moved[:, 0, :].any()  # nothing wraps around
    overwritten_t11 = int(np.count_nonzero(moved & (arr == 33)))  # v2 33 = T11
    overwritten_l1 = int(np.count_nonzero(moved & (arr == 31)))  # v2 31 = L1
    arr[t12] = 0
    arr[moved] = V2_T12
    arr[arr == V2_L2] = 0
    pred_path = write_nifti(ref.with_array(arr), tmp_path / "perturbed.nii.gz")

    result = evaluate_files(pred_path, seg_path, options=V2)
    by_label = {r.label: r for r in result.classes}

    n_t12 = int(np.count_nonzero(t12))
    expected_dice_t12 = 2 * np.count_nonzero(t12 & moved) / (2 * n_t12)
    assert by_label[T12].metrics["dice"] == pytest.approx(expected_dice_t12, rel=1e-12)
    assert by_label[T12].metrics["hd"] == pytest.approx(3.0, abs=1e-9)  # one 3 mm voxel
    for label, lost in ((T11, overwritten_t11), (L1, overwritten_l1)):
        n = by_label[label].confusion.n_ref
        assert by_label[label].metrics["dice"] == pytest.approx(2 * (n - lost) / (2 * n - lost))
    assert by_label[L2].status is Status.MISSED
    assert by_label[L2].metrics["dice"] == 0.0 and by_label[L2].metrics["hd"] == math.inf

    lab = {v.label: v for v in result.labelling.per_vertebra}
    assert not lab[L2].identified and math.isnan(lab[L2].distance_mm)
    assert lab[T12].identified and 0.0 < lab[T12].distance_mm < 3.0 + 1e-9
    assert result.labelling.id_rate == pytest.approx(3 / 4)
