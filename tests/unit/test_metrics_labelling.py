"""VerSe identification rate, d_mean and centroids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from spinecloud_metrics.labelling import centroids, identification
from spinecloud_shared.centroids import centroids_from_labels, read_ctd_json, write_ctd_json
from spinecloud_shared.volume import Volume


def _spine(n: int = 5, step_mm: float = 30.0) -> dict[int, np.ndarray]:
    return {20 + i: np.array([0.0, 0.0, -step_mm * i]) for i in range(n)}  # L1..L5


def test_perfect_prediction() -> None:
    result = identification(_spine(), _spine())
    assert result.id_rate == 1.0 and result.d_mean == 0.0 and result.n_identified == 5


def test_distance_threshold_is_strictly_20_mm() -> None:
    ref = _spine(1)
    near = {20: ref[20] + [0, 19.999, 0]}
    at = {20: ref[20] + [0, 20.0, 0]}
    assert identification(ref, near).id_rate == 1.0
    assert identification(ref, at).id_rate == 0.0
    assert identification(ref, at).d_mean == pytest.approx(20.0)


def test_one_label_shift_identifies_nothing() -> None:
    """Every predicted centroid sits on the right place with the next label (VerSe's failure)."""
    ref = _spine()
    shifted = {label + 1: xyz for label, xyz in ref.items()}
    result = identification(ref, shifted)
    assert result.id_rate == 0.0
    assert result.n_missing == 1  # L1 has no prediction at all
    assert result.d_mean == pytest.approx(30.0)  # each remaining label is one level off


def test_closest_prediction_must_carry_the_label() -> None:
    ref = {20: np.zeros(3)}
    pred = {20: np.array([0, 0, 10.0]), 21: np.array([0, 0, 5.0])}
    result = identification(ref, pred)
    assert result.id_rate == 0.0 and result.d_mean == pytest.approx(10.0)


def test_missing_vertebrae_are_left_out_of_d_mean() -> None:
    ref = _spine()
    pred = {k: v + np.array([3.0, 4.0, 0.0]) for k, v in ref.items() if k != 22}
    result = identification(ref, pred)
    assert result.id_rate == pytest.approx(4 / 5)
    assert result.d_mean == pytest.approx(5.0)
    assert result.n_missing == 1


def test_empty_reference_and_empty_prediction() -> None:
    assert math.isnan(identification({}, _spine()).id_rate)
    result = identification(_spine(), {})
    assert result.id_rate == 0.0 and math.isnan(result.d_mean)


def _label_volume() -> Volume:
    arr = np.zeros((20, 18, 30), np.uint8)
    arr[5:12, 4:10, 2:8] = 24
    arr[6:13, 5:11, 10:17] = 23
    arr[7, 8, 25] = 1
    affine = np.array([[-0.8, 0, 0, 10], [0, 0, 1.3, -5], [0, 2.0, 0, 40], [0, 0, 0, 1.0]])
    return Volume(arr, affine)


def test_centroids_match_the_shared_library_on_an_oblique_grid() -> None:
    volume = _label_volume()
    ours = centroids(volume.array, volume.affine_ras)
    shared = centroids_from_labels(volume)
    assert set(ours) == set(shared) == {1, 23, 24}
    for label in ours:
        assert_allclose(ours[label], shared[label], atol=1e-9)


def test_centroids_round_trip_through_verse_ctd_json(tmp_path: Path) -> None:
    volume = _label_volume()
    ctd = centroids(volume.array, volume.affine_ras)
    path = write_ctd_json(ctd, volume, tmp_path / "case_ctd.json", direction="PIR")
    back = read_ctd_json(path, volume)
    assert identification(ctd, back).d_mean == pytest.approx(0.0, abs=1e-3)
