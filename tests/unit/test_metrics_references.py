"""The panel agrees with reference implementations where their definitions coincide.

Tolerances: MONAI works in float32, so rtol 1e-5; medpy, miseval and DeepMind's
surface-distance in float64, so rtol 1e-9 (1e-12 where the computation is the same). The
default voxel surfaces are MONAI's and medpy's; ``surface="faces"`` is DeepMind's. Deliberate
differences (medpy's pooled HD95 and mean-of-directed ASSD, voxel vs face surfaces) are
asserted as such, so that a change on either side shows up here.
"""

from __future__ import annotations

import miseval
import numpy as np
import numpy.typing as npt
import pytest
import surface_distance as deepmind
import torch
from medpy.metric import binary as medpy
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from numpy.testing import assert_allclose

from spinecloud_metrics.panel import PanelConfig, SurfaceMode, evaluate_arrays
from spinecloud_metrics.surface import SurfaceDistances

from .test_metrics_support import ANISO, ball, blob_pair

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:monai.*"),
]

SEEDS = range(4)
ONE = PanelConfig(classes=(1,))


def _panel(
    pred: npt.NDArray[np.uint8],
    ref: npt.NDArray[np.uint8],
    spacing: tuple[float, float, float] = ANISO,
) -> dict[str, float]:
    return evaluate_arrays(pred, ref, spacing, ONE)[0].metrics


def _monai(
    pred: npt.NDArray[np.uint8],
    ref: npt.NDArray[np.uint8],
    spacing: tuple[float, float, float] = ANISO,
) -> dict[str, float]:
    p = torch.from_numpy(pred == 1)[None, None]
    r = torch.from_numpy(ref == 1)[None, None]
    return {
        "dice": compute_dice(p.float(), r.float()).item(),
        "hd": compute_hausdorff_distance(p, r, spacing=spacing).item(),
        "hd95": compute_hausdorff_distance(p, r, spacing=spacing, percentile=95).item(),
        "assd": compute_average_surface_distance(p, r, spacing=spacing, symmetric=True).item(),
        "nsd": compute_surface_dice(p, r, [1.0], spacing=spacing, include_background=True).item(),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_monai_agrees_on_random_blobs_anisotropic(seed: int) -> None:
    pred, ref = blob_pair(seed)
    ours, theirs = _panel(pred, ref), _monai(pred, ref)
    for name, value in theirs.items():
        assert_allclose(ours[name], value, rtol=1e-5, err_msg=name)


def test_monai_agrees_on_mask_touching_volume_border() -> None:
    ref = np.zeros((20, 18, 12), np.uint8)
    ref[0:10, 3:18, 0:12] = 1  # touches three faces of the volume
    pred = np.roll(ref, 2, axis=0)
    ours, theirs = _panel(pred, ref), _monai(pred, ref)
    for name, value in theirs.items():
        assert_allclose(ours[name], value, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS)
def test_medpy_agrees_where_definitions_coincide(seed: int) -> None:
    pred, ref = blob_pair(seed)
    ours = _panel(pred, ref)
    assert_allclose(ours["hd"], medpy.hd(pred, ref, voxelspacing=ANISO), rtol=1e-9)
    assert_allclose(ours["dice"], medpy.dc(pred, ref), rtol=1e-12)
    assert_allclose(ours["iou"], medpy.jc(pred, ref), rtol=1e-12)
    assert_allclose(ours["precision"], medpy.precision(pred, ref), rtol=1e-12)
    assert_allclose(ours["sensitivity"], medpy.recall(pred, ref), rtol=1e-12)
    assert_allclose(ours["specificity"], medpy.specificity(pred, ref), rtol=1e-12)
    # Deliberate differences: medpy's HD95 is the percentile of the pooled distances, its
    # ASSD the mean of the two directed means. Same distances, other reductions.
    d = SurfaceDistances.between(pred == 1, ref == 1, ANISO)
    pooled = np.concatenate([d.pred_to_ref, d.ref_to_pred])
    assert_allclose(np.percentile(pooled, 95), medpy.hd95(pred, ref, voxelspacing=ANISO), rtol=1e-9)
    assert_allclose(d.pred_to_ref.mean(), medpy.asd(pred, ref, voxelspacing=ANISO), rtol=1e-9)
    assert_allclose(d.ref_to_pred.mean(), medpy.asd(ref, pred, voxelspacing=ANISO), rtol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_miseval_confusion_metrics_agree(seed: int) -> None:
    pred, ref = blob_pair(seed)
    ours = _panel(pred, ref)
    expected = {
        "dice": miseval.calc_DSC(ref, pred),
        "iou": miseval.calc_IoU(ref, pred),
        "accuracy": miseval.calc_Accuracy(ref, pred),
        "precision": miseval.calc_Precision(ref, pred),
        "sensitivity": miseval.calc_Sensitivity(ref, pred),
        "specificity": miseval.calc_Specificity(ref, pred),
        "kappa": miseval.calc_Kappa(ref, pred),
        "auc": miseval.calc_AUC(ref, pred),
    }
    for name, value in expected.items():
        assert_allclose(ours[name], value, rtol=1e-9, err_msg=name)


def _deepmind(pred: npt.NDArray[np.uint8], ref: npt.NDArray[np.uint8]) -> dict[str, float]:
    d = deepmind.compute_surface_distances(ref.astype(bool), pred.astype(bool), ANISO)
    return {
        "hd": deepmind.compute_robust_hausdorff(d, 100),
        "dice": deepmind.compute_dice_coefficient(ref.astype(bool), pred.astype(bool)),
        "nsd": deepmind.compute_surface_dice_at_tolerance(d, 1.0),
    }


SHAPE = (60, 50, 30)
DEEPMIND_CASES = {
    "concentric": ((30, 25, 15), (15, 14, 13)),
    "offset": ((31, 26, 15), (16, 14, 14)),
    "far": ((32, 24, 16), (13, 15, 12)),
}


@pytest.mark.parametrize("case", DEEPMIND_CASES)
def test_deepmind_hausdorff_and_dice_agree_on_ellipsoids(case: str) -> None:
    centre, radii = DEEPMIND_CASES[case]
    ref = ball(SHAPE, (30, 25, 15), (15, 15, 15))
    pred = ball(SHAPE, centre, radii)
    ours, theirs = _panel(pred, ref), _deepmind(pred, ref)
    assert_allclose(ours["hd"], theirs["hd"], rtol=1e-9)
    assert_allclose(ours["dice"], theirs["dice"], rtol=1e-12)


@pytest.mark.parametrize("shift", [(3, 0, 0), (0, 2, 0), (0, 0, 1)])
def test_deepmind_hausdorff_agrees_on_shifted_boxes(shift: tuple[int, int, int]) -> None:
    ref = np.zeros(SHAPE, np.uint8)
    ref[10:40, 10:30, 5:20] = 1
    pred = np.roll(ref, shift, axis=(0, 1, 2))
    ours, theirs = _panel(pred, ref), _deepmind(pred, ref)
    expected_shift_mm = float(np.dot(shift, ANISO))
    assert_allclose(ours["hd"], expected_shift_mm, rtol=1e-12)
    assert_allclose(theirs["hd"], expected_shift_mm, rtol=1e-12)
    assert_allclose(ours["hd95"], expected_shift_mm, rtol=1e-12)


FACES = PanelConfig(classes=(1,), surface=SurfaceMode.FACES)


def _deepmind_faces_cases() -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]:
    ref_box = np.zeros(SHAPE, np.uint8)
    ref_box[10:40, 10:30, 5:20] = 1
    border = np.zeros((20, 18, 12), np.uint8)
    border[0:10, 3:18, 0:12] = 1
    ellipsoid = ball(SHAPE, (30, 25, 15), (15, 15, 15))
    return [
        *(blob_pair(seed) for seed in SEEDS),
        (ball(SHAPE, (31, 26, 15), (16, 14, 14)), ellipsoid),
        (np.roll(ref_box, 1, axis=2), ref_box),
        (np.roll(border, 2, axis=0), border),
    ]


@pytest.mark.parametrize("case", range(7))
def test_faces_mode_reproduces_deepmind_exactly(case: int) -> None:
    """With ``surface="faces"`` every distance metric is DeepMind's, to rounding (1e-12)."""
    pred, ref = _deepmind_faces_cases()[case]
    ours = evaluate_arrays(pred, ref, ANISO, FACES)[0].metrics
    d = deepmind.compute_surface_distances(ref.astype(bool), pred.astype(bool), ANISO)
    area_ref, area_pred = d["surfel_areas_gt"].sum(), d["surfel_areas_pred"].sum()
    to_pred, to_ref = deepmind.compute_average_surface_distance(d)
    in_pred, in_ref = deepmind.compute_surface_overlap_at_tolerance(d, 2.0)
    expected = {
        "hd": deepmind.compute_robust_hausdorff(d, 100),
        "hd95": deepmind.compute_robust_hausdorff(d, 95),
        "assd": (to_pred * area_ref + to_ref * area_pred) / (area_ref + area_pred),
        "nsd": deepmind.compute_surface_dice_at_tolerance(d, 1.0),
        "boundary_f1": 2 * in_pred * in_ref / (in_pred + in_ref),
    }
    for name, value in expected.items():
        assert_allclose(ours[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS)
def test_faces_mode_matches_monai_subvoxel_surface_dice(seed: int) -> None:
    pred, ref = blob_pair(seed)
    ours = evaluate_arrays(pred, ref, ANISO, FACES)[0].metrics
    p = torch.from_numpy(pred == 1)[None, None]
    r = torch.from_numpy(ref == 1)[None, None]
    theirs = compute_surface_dice(p, r, [1.0], spacing=ANISO, include_background=True,
                                  use_subvoxels=True).item()  # fmt: skip
    assert_allclose(ours["nsd"], theirs, rtol=1e-5)


def test_voxel_and_face_surfaces_differ_by_design() -> None:
    """Face surfels of coinciding side walls are 0 mm apart, voxel surfaces one voxel: on a box
    shifted by one voxel along k the default (voxel) NSD is lower than DeepMind's."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[10:40, 10:30, 5:20] = 1
    pred = np.roll(ref, 1, axis=2)
    voxels = _panel(pred, ref)
    faces = evaluate_arrays(pred, ref, ANISO, FACES)[0].metrics
    assert voxels["nsd"] < faces["nsd"] == pytest.approx(_deepmind(pred, ref)["nsd"], rel=1e-12)
