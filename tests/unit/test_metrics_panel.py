"""Edge cases and properties of the per-class panel (values from docs/metrics.md's table)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from spinecloud_metrics.panel import (
    PANEL_METRICS,
    ClassResult,
    PanelConfig,
    Status,
    SurfaceMode,
    evaluate_arrays,
)
from spinecloud_shared.errors import InvalidInputError

from .test_metrics_support import ANISO, blob_pair

SHAPE = (12, 10, 8)
ONE = PanelConfig(classes=(1,))


def _one(pred: np.ndarray, ref: np.ndarray, config: PanelConfig = ONE) -> ClassResult:
    return evaluate_arrays(pred.astype(np.uint8), ref.astype(np.uint8), ANISO, config)[0]


def _box() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:7, 2:6, 2:5] = 1
    return mask


def test_identical_masks_score_perfectly() -> None:
    result = _one(_box(), _box())
    assert result.status is Status.PRESENT
    for name in (
        "dice",
        "iou",
        "accuracy",
        "precision",
        "sensitivity",
        "specificity",
        "kappa",
        "auc",
        "boundary_f1",
        "nsd",
    ):
        assert result.metrics[name] == pytest.approx(1.0, abs=1e-12), name
    for name in ("hd", "hd95", "assd"):
        assert result.metrics[name] == 0.0, name


def test_empty_prediction() -> None:
    result = _one(np.zeros(SHAPE), _box())
    m = result.metrics
    assert result.status is Status.MISSED
    assert (m["dice"], m["iou"], m["sensitivity"], m["nsd"], m["boundary_f1"]) == (0, 0, 0, 0, 0)
    assert math.isnan(m["precision"])
    assert m["specificity"] == 1.0
    assert m["kappa"] == pytest.approx(0.0, abs=1e-12)
    assert m["auc"] == 0.5
    assert m["hd"] == m["hd95"] == m["assd"] == math.inf


def test_empty_reference() -> None:
    result = _one(_box(), np.zeros(SHAPE))
    m = result.metrics
    assert result.status is Status.FALSE_POSITIVE
    assert (m["dice"], m["iou"], m["precision"], m["nsd"], m["boundary_f1"]) == (0, 0, 0, 0, 0)
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auc"])
    assert m["specificity"] == pytest.approx(1 - 48 / (SHAPE[0] * SHAPE[1] * SHAPE[2]))
    assert m["hd"] == m["hd95"] == m["assd"] == math.inf


def test_both_empty_is_absent_not_perfect() -> None:
    result = _one(np.zeros(SHAPE), np.zeros(SHAPE))
    assert result.status is Status.ABSENT
    assert all(math.isnan(result.metrics[name]) for name in PANEL_METRICS)


def test_both_empty_perfect_when_asked() -> None:
    result = _one(
        np.zeros(SHAPE), np.zeros(SHAPE), PanelConfig(classes=(1,), both_empty_perfect=True)
    )
    m = result.metrics
    assert m["dice"] == m["iou"] == m["nsd"] == m["boundary_f1"] == m["accuracy"] == 1.0
    assert m["hd"] == m["hd95"] == m["assd"] == 0.0


def test_single_voxel_shifted_along_each_axis() -> None:
    ref = np.zeros(SHAPE, np.uint8)
    ref[5, 5, 4] = 1
    for axis, step in enumerate(ANISO):
        pred = np.roll(ref, 1, axis=axis)
        m = _one(pred, ref).metrics
        assert m["dice"] == 0.0
        assert m["hd"] == m["hd95"] == m["assd"] == pytest.approx(step, abs=1e-12)
        assert m["nsd"] == (1.0 if step <= 1.0 else 0.0)
        assert m["boundary_f1"] == 1.0  # every step is within the 2 mm default


def test_mask_filling_the_whole_volume_has_its_border_as_surface() -> None:
    full = np.ones(SHAPE, np.uint8)
    smaller = full.copy()
    smaller[0] = 0  # one face slab removed: the surfaces differ by one voxel (0.8 mm) there
    m = _one(smaller, full).metrics
    assert m["hd"] == pytest.approx(ANISO[0])
    assert math.isnan(m["specificity"])  # no negatives at all in the reference


def test_multiclass_equals_binary_per_class() -> None:
    pred_a, ref_a = blob_pair(0, (30, 30, 20))
    pred_b, ref_b = blob_pair(1, (30, 30, 20))
    pred = np.where(pred_b == 1, 3, pred_a).astype(np.uint8)
    ref = np.where(ref_b == 1, 3, ref_a).astype(np.uint8)
    joint = {r.label: r for r in evaluate_arrays(pred, ref, ANISO, PanelConfig(classes=(1, 3)))}
    for label in (1, 3):
        alone = _one(pred == label, ref == label)
        assert alone.confusion == joint[label].confusion
        for name in PANEL_METRICS:
            assert_allclose(joint[label].metrics[name], alone.metrics[name], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    pad=st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)),
)
def test_padding_the_volume_changes_only_true_negatives(
    seed: int, pad: tuple[int, int, int]
) -> None:
    """Cropping is exact: embedding the case in a larger empty volume leaves every metric
    that ignores true negatives unchanged, and adds exactly the new voxels to TN."""
    pred, ref = blob_pair(seed, (14, 12, 10))
    widths = [(p, p) for p in pad]
    small = _one(pred, ref)
    big = _one(np.pad(pred, widths), np.pad(ref, widths))
    added = np.pad(pred, widths).size - pred.size
    assert big.confusion.tn == small.confusion.tn + added
    for name in (
        "dice",
        "iou",
        "precision",
        "sensitivity",
        "boundary_f1",
        "hd",
        "hd95",
        "assd",
        "nsd",
    ):
        assert_allclose(big.metrics[name], small.metrics[name], rtol=1e-12, err_msg=name)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metrics_are_symmetric_where_defined_so(seed: int) -> None:
    pred, ref = blob_pair(seed, (14, 12, 10))
    ab, ba = _one(pred, ref).metrics, _one(ref, pred).metrics
    for name in ("dice", "iou", "accuracy", "kappa", "hd", "hd95", "assd", "nsd", "boundary_f1"):
        assert_allclose(ab[name], ba[name], rtol=1e-12, err_msg=name)
    assert_allclose(ab["precision"], ba["sensitivity"], rtol=1e-12)


def test_tolerances_move_nsd_and_boundary_f1() -> None:
    pred, ref = blob_pair(3)
    tight = _one(
        pred, ref, PanelConfig(classes=(1,), nsd_tolerance_mm=0.0, boundary_tolerance_mm=0.0)
    )
    loose = _one(
        pred, ref, PanelConfig(classes=(1,), nsd_tolerance_mm=50.0, boundary_tolerance_mm=50.0)
    )
    assert tight.metrics["nsd"] < 1.0 and tight.metrics["boundary_f1"] < 1.0
    assert loose.metrics["nsd"] == 1.0 and loose.metrics["boundary_f1"] == 1.0


@pytest.mark.parametrize(
    "settings",
    [{"classes": (27,)}, {"nsd_tolerance_mm": -1.0}, {"hd_percentile": 101.0}, {"connectivity": 4}],
)
def test_config_is_validated_eagerly(settings: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        PanelConfig(**settings)  # type: ignore[arg-type]


FACES = PanelConfig(classes=(1,), surface=SurfaceMode.FACES)


def test_faces_mode_identical_and_single_voxel() -> None:
    same = _one(_box(), _box(), FACES).metrics
    assert same["nsd"] == same["boundary_f1"] == 1.0
    assert same["hd"] == same["hd95"] == same["assd"] == 0.0
    ref = np.zeros(SHAPE, np.uint8)
    ref[5, 5, 4] = 1
    moved = _one(np.roll(ref, 1, axis=2), ref, FACES).metrics
    # Voxel cubes one slice apart share a face: the farthest corner is one slice (2 mm) away.
    assert moved["hd"] == pytest.approx(ANISO[2])
    assert 0.0 < moved["nsd"] < 1.0


def test_faces_mode_edge_cases_match_voxel_mode() -> None:
    for pred, ref in ((np.zeros(SHAPE), _box()), (_box(), np.zeros(SHAPE))):
        faces, voxels = _one(pred, ref, FACES), _one(pred, ref)
        assert faces.status is voxels.status
        for name in PANEL_METRICS:
            assert_allclose(faces.metrics[name], voxels.metrics[name], err_msg=name)
