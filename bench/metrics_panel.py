"""Benchmark: the whole metric panel, 25 classes, on a 512 x 512 x 300 spine-like pair.

Contenders, each in its own fresh process (so peak memory is its own), on the same arrays:

* ``spinecloud``: ``spinecloud_metrics`` (validation, the 13-metric panel of every class,
  centroids and identification) — best of ``--repeat`` runs; ``spinecloud_faces`` the same
  with DeepMind's face-based surfaces (``PanelConfig(surface="faces")``);
* ``monai``: a per-class loop over MONAI's metric functions (Dice, IoU, confusion-matrix
  metrics, HD, HD95, ASSD, NSD);
* ``deepmind``: a per-class loop over DeepMind's surface-distance (one
  ``compute_surface_distances`` per class, then HD, HD95, average distance, surface Dice and
  overlap at tolerance) plus numpy confusion counts on the full masks;
* ``medpy``: a per-class loop over medpy (dc, jc, precision, recall, specificity, hd, hd95,
  assd). medpy runs full-volume distance transforms per metric, so it is timed on
  ``--medpy-classes`` classes and extrapolated linearly to 25 (said so in the output).

MetricsReloaded is not installable here (not on the package index this machine reaches),
so it is not a contender. Prints a table with seconds, peak RSS and ratios; never asserts a
time. Run: ``.venv/bin/python bench/metrics_panel.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_phantom import perturbed_prediction, spine_phantom

from spinecloud_shared.labels import STANDARD_IDS

SPACING = (0.8, 0.8, 1.0)
SHAPE = (512, 512, 300)
NSD_TOL, BOUNDARY_TOL = 1.0, 2.0
Arrays = tuple[np.ndarray, np.ndarray]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_spinecloud(
    pred: np.ndarray, ref: np.ndarray, classes: list[int], surface: str = "voxels"
) -> None:
    """The full SpineCloud panel: validation, panel, centroids and identification."""
    from spinecloud_metrics import labelling
    from spinecloud_metrics.inputs import canonical_labels
    from spinecloud_metrics.panel import PanelConfig, evaluate_arrays

    affine = np.diag([*SPACING, 1.0])
    pred_map = canonical_labels(pred, "canonical", "pred")
    ref_map = canonical_labels(ref, "canonical", "ref")
    config = PanelConfig(classes=tuple(classes), surface=surface)
    evaluate_arrays(pred_map, ref_map, SPACING, config)
    labelling.identification(
        labelling.centroids(ref_map, affine), labelling.centroids(pred_map, affine)
    )


def run_spinecloud_faces(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> None:
    """The same with DeepMind's face-based, area-weighted surfaces."""
    run_spinecloud(pred, ref, classes, surface="faces")


def run_monai(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> None:
    """MONAI's metric functions, one class at a time."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
        get_confusion_matrix,
    )

    for label in classes:
        p = torch.from_numpy(pred == label)[None, None]
        r = torch.from_numpy(ref == label)[None, None]
        compute_dice(p, r)
        compute_iou(p, r)
        matrix = get_confusion_matrix(p, r)
        for name in ("precision", "sensitivity", "specificity", "accuracy"):
            compute_confusion_matrix_metric(name, matrix)
        compute_hausdorff_distance(p, r, spacing=SPACING)
        compute_hausdorff_distance(p, r, spacing=SPACING, percentile=95)
        compute_average_surface_distance(p, r, spacing=SPACING, symmetric=True)
        compute_surface_dice(p, r, [NSD_TOL], spacing=SPACING, include_background=True)


def run_deepmind(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> None:
    """DeepMind's surface-distance, one class at a time, plus numpy confusion counts."""
    import surface_distance as sd

    for label in classes:
        p, r = pred == label, ref == label
        tp = np.count_nonzero(p & r)
        _ = (tp, np.count_nonzero(p) - tp, np.count_nonzero(r) - tp)
        sd.compute_dice_coefficient(r, p)
        distances = sd.compute_surface_distances(r, p, SPACING)
        sd.compute_robust_hausdorff(distances, 100)
        sd.compute_robust_hausdorff(distances, 95)
        sd.compute_average_surface_distance(distances)
        sd.compute_surface_dice_at_tolerance(distances, NSD_TOL)
        sd.compute_surface_overlap_at_tolerance(distances, BOUNDARY_TOL)


def run_medpy(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> None:
    """medpy's metrics, one class at a time (each surface metric recomputes its transforms)."""
    from medpy.metric import binary as mb

    for label in classes:
        p, r = pred == label, ref == label
        mb.dc(p, r)
        mb.jc(p, r)
        mb.precision(p, r)
        mb.recall(p, r)
        mb.specificity(p, r)
        mb.hd(p, r, voxelspacing=SPACING)
        mb.hd95(p, r, voxelspacing=SPACING)
        mb.assd(p, r, voxelspacing=SPACING)


CONTENDERS: dict[str, Callable[[np.ndarray, np.ndarray, list[int]], None]] = {
    "spinecloud": run_spinecloud,
    "spinecloud_faces": run_spinecloud_faces,
    "monai": run_monai,
    "deepmind": run_deepmind,
    "medpy": run_medpy,
}


def worker(name: str, data: Path, n_classes: int, repeat: int) -> None:
    """Run one contender in this (fresh) process; print seconds and memory as JSON."""
    ref, pred = np.load(data / "ref.npy"), np.load(data / "pred.npy")
    classes = list(STANDARD_IDS[:n_classes])
    run = CONTENDERS[name]
    tiny = np.zeros((12, 12, 12), np.uint8)
    tiny[3:8, 3:8, 3:8] = classes[0]
    run(tiny, np.roll(tiny, 1, axis=0), classes[:1])  # imports and warm-up
    baseline = _rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(pred, ref, classes)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "peak_rss_mb": _rss_mb(),
                "baseline_rss_mb": baseline,
                "classes": len(classes),
            }
        )
    )


def _spawn(name: str, data: Path, n_classes: int, repeat: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--data",
        str(data),
        "--classes",
        str(n_classes),
        "--repeat",
        str(repeat),
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    out = done.stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["seconds_25"] = result["seconds"] * len(STANDARD_IDS) / result["classes"]
    return result


def main() -> None:
    """Build the data, run every contender in its own process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=sorted(CONTENDERS))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--classes", type=int, default=len(STANDARD_IDS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--medpy-classes", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(CONTENDERS))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.classes, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        ref = spine_phantom(SHAPE, SPACING)
        np.save(data / "ref.npy", ref)
        np.save(data / "pred.npy", perturbed_prediction(ref))
        del ref
        print(f"data: {SHAPE} uint8 label maps at {SPACING} mm, {len(STANDARD_IDS)} classes")
        results = {}
        for name in CONTENDERS:
            if name in args.skip:
                continue
            n_classes = args.medpy_classes if name == "medpy" else len(STANDARD_IDS)
            repeat = args.repeat if name.startswith("spinecloud") else 1
            results[name] = _spawn(name, data, n_classes, repeat)
            print(f"  ran {name}: {results[name]['seconds']:.2f} s", flush=True)
    _report(results)


def _report(results: dict[str, dict[str, float]]) -> None:
    ours = results["spinecloud"]["seconds_25"]
    print(
        f"{'contender':<18}{'s (25 cl.)':>12}{'ratio':>10}{'peak RSS MB':>14}{'above base MB':>15}"
    )
    for name, r in results.items():
        note = f"  (timed on {r['classes']:.0f} classes, extrapolated)" if r["classes"] < 25 else ""
        print(
            f"{name:<18}{r['seconds_25']:>12.2f}{r['seconds_25'] / ours:>9.1f}x"
            f"{r['peak_rss_mb']:>14.0f}{r['peak_rss_mb'] - r['baseline_rss_mb']:>15.0f}{note}"
        )
    peers = {n: r["seconds_25"] for n, r in results.items() if not n.startswith("spinecloud")}
    if peers:
        fastest = min(peers, key=lambda n: peers[n])
        print(f"speed-up over the fastest peer ({fastest}): {peers[fastest] / ours:.1f}x")
    if "spinecloud_faces" in results and "deepmind" in results:
        faces = results["spinecloud_faces"]["seconds_25"]
        print(
            f"faces mode vs DeepMind (same definitions): "
            f"{results['deepmind']['seconds_25'] / faces:.1f}x"
        )


if __name__ == "__main__":
    main()
