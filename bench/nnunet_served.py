"""Benchmark: the served nnU-Net backend (model loaded once, warm) against ``nnUNetv2_predict``.

Both sides segment the same studies with the same tiny nnU-Net v2 model, on CPU:

* ``served``: one process loads the model once with ``spinecloud_inference.backends.
  load_model`` (``NnUNetBackend``, an ``nnUNetPredictor`` kept in memory), segments one
  untimed warm-up study, then, per study: reads the NIfTI, runs ``segment_volume`` (input
  checks, reorientation, resampling, nnU-Net's forward pass, canonical ids, cleaning, summary)
  and writes the label NIfTI. The first (cold) call is reported apart.
* ``nnUNetv2_predict``: the command line as people run it, one process per study (a study
  arrives, a job starts): interpreter, imports, model load, nnU-Net's preprocessing and export
  worker processes, prediction, the label NIfTI written.

Fair settings, the same on both sides: CPU, fold ``all``, ``checkpoint_final.pth``, step size
0.5 (SpineCloud's overlap 0.5), Gaussian weighting, mirroring on (nnU-Net's default TTA and the
backend's), ``nnUNet_def_n_proc`` = ``--threads`` (2 on the 2-core machine: nnU-Net caps torch
threads in its forward pass to it) and, for the command, ``-npp 1 -nps 1``.

The model: trained in the bench as ``tests/unit/test_nnunet_backend.py`` does (four phantoms
L4-sacrum, one in LPS, planned, preprocessed, trained one epoch of ``--iterations`` iterations
with fold ``all``). The studies: ``--studies`` other phantoms at the same spacing (RAS, so that
the pipeline's resampling is the identity and both sides see the same voxels). Agreement: the
command's label map, mapped to canonical ids, against the served backend's network output on the
same image (must be identical), and against the served pipeline's cleaned result (share of
voxels that agree; cleaning keeps one component per class, which nnU-Net does not do).

Sizes: ``--spacing`` (mm, default 4: tiny studies for a quick check; the recorded run uses 2)
and ``--studies`` (default 5). Prints a per-study table and the ratio served / command (target:
at most 0.5x); never asserts a time. Run: ``.venv/bin/python bench/nnunet_served.py
--spacing 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATASET_ID = 502
LEVELS = ("L4", "sacrum")
FOV_MM = (120.0, 100.0)
TRAIN_SEEDS = (0, 1, 2, 3)
STUDY_SEED = 100
TARGET_RATIO = 0.5


def _phantom_spec(seed: int, spacing: float, orientation: str = "RAS") -> Any:
    from spinecloud_shared.phantom import PhantomSpec

    return PhantomSpec(
        seed=seed,
        levels=LEVELS,
        spacing_mm=(spacing, spacing, spacing),
        fov_mm=FOV_MM,
        orientation=orientation,
    )


def train_tiny_model(work: Path, spacing: float, iterations: int) -> Path:
    """Train the tiny model as the unit test does; the trained model folder (with manifest)."""
    from spinecloud_shared.phantom import generate_phantom
    from spinecloud_training.data import CaseSource
    from spinecloud_training.nnunet.raw_dataset import write_raw_dataset
    from spinecloud_training.nnunet.train import (
        NnUNetFolders,
        TrainSettings,
        model_manifest,
        plan_and_preprocess,
        train,
        write_model_manifest,
    )

    def source(seed: int) -> CaseSource:
        orientation = "LPS" if seed == 2 else "RAS"

        def load() -> Any:
            phantom = generate_phantom(_phantom_spec(seed, spacing, orientation))
            return phantom.ct, phantom.labels

        return CaseSource(f"phantom-{seed}", load)

    folders = NnUNetFolders(work)
    phantoms = [generate_phantom(_phantom_spec(seed, spacing)) for seed in TRAIN_SEEDS]
    ids = sorted({i for p in phantoms for i in p.level_ids})
    raw = write_raw_dataset(
        [source(s) for s in TRAIN_SEEDS], folders.raw, dataset_id=DATASET_ID, canonical_ids=ids
    )
    plan_and_preprocess(folders, DATASET_ID)
    settings = TrainSettings(
        num_epochs=1, iterations_per_epoch=iterations, val_iterations_per_epoch=1
    )
    model_folder = train(folders, raw.name, fold="all", settings=settings, device="cpu")
    manifest = model_manifest(model_folder, name="bench-nnunet", version="0.1", folds=["all"])
    write_model_manifest(model_folder, manifest)
    return model_folder


def write_studies(folder: Path, spacing: float, count: int) -> list[Path]:
    """``count`` phantom CTs as NIfTI files named as nnU-Net expects (``<case>_0000.nii.gz``)."""
    from spinecloud_shared.nifti import write_nifti
    from spinecloud_shared.phantom import generate_phantom

    paths = []
    for n in range(count):
        ct = generate_phantom(_phantom_spec(STUDY_SEED + n, spacing)).ct
        paths.append(write_nifti(ct, folder / f"study{n:02d}_0000.nii.gz"))
    return paths


# --------------------------------------------------------------------------- served side


def served_worker(model_folder: Path, studies: list[Path], out: Path) -> None:
    """Load once, warm up, then time each study; print JSON with per-study seconds."""
    from spinecloud_inference.backends import load_model
    from spinecloud_inference.pipeline import segment_volume
    from spinecloud_shared.nifti import read_nifti, write_nifti

    def one(study: Path, target: Path) -> float:
        start = time.perf_counter()
        ct = read_nifti(study)
        result = segment_volume(ct, backend, device="cpu")
        write_nifti(result.labels, target)
        return time.perf_counter() - start

    start = time.perf_counter()
    backend = load_model(model_folder, device="cpu")
    load_s = time.perf_counter() - start
    cold_s = one(studies[0], out / "warmup.nii.gz")
    seconds = [one(s, out / s.name.replace("_0000", "")) for s in studies]
    raw = out / "raw"
    raw.mkdir()
    for study in studies:  # untimed: the backend's own output, for the agreement check
        ct = read_nifti(study)
        array = backend.predict(ct.array.astype(np.float32)[None])
        write_nifti(ct.with_array(np.asarray(array, dtype=np.uint8)), raw / study.name)
    print(json.dumps({"load_s": load_s, "cold_s": cold_s, "seconds": seconds}))


# --------------------------------------------------------------------------- driver


def _environment(results: Path, threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "nnUNet_results": str(results),
        "nnUNet_raw": str(results.parent / "nnUNet_raw"),
        "nnUNet_preprocessed": str(results.parent / "nnUNet_preprocessed"),
        "nnUNet_def_n_proc": str(threads),
        "nnUNet_n_proc_DA": "0",
    }


def run_command_per_study(studies: list[Path], out: Path, env: dict[str, str]) -> list[float]:
    """``nnUNetv2_predict`` once per study (its own input folder); wall seconds of each."""
    predict = Path(sys.executable).parent / "nnUNetv2_predict"
    seconds = []
    for study in studies:
        single = out / "in" / study.name.removesuffix("_0000.nii.gz")
        single.mkdir(parents=True)
        (single / study.name).symlink_to(study)
        command = [str(predict), "-i", str(single), "-o", str(out), "-d", str(DATASET_ID)]
        command += ["-c", "3d_fullres", "-f", "all", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans"]
        command += ["-step_size", "0.5", "-npp", "1", "-nps", "1", "-device", "cpu"]
        command += ["--disable_progress_bar"]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode:
            raise SystemExit(f"nnUNetv2_predict failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def agreement(model_folder: Path, studies: list[Path], served: Path, command: Path) -> list[str]:
    """Per study: is the command's map the backend's, and the share that the cleaned map keeps."""
    from spinecloud_shared.models.manifest import read_manifest
    from spinecloud_shared.nifti import read_nifti

    table = np.zeros(256, dtype=np.uint8)
    for value, canonical in read_manifest(model_folder).labels.items():
        table[value] = canonical
    lines = []
    for study in studies:
        name = study.name.replace("_0000", "")
        theirs = read_nifti(command / name)
        backend = read_nifti(served / "raw" / study.name)
        cleaned = read_nifti(served / name)
        same_grid = theirs.same_grid(cleaned)
        identical = same_grid and np.array_equal(theirs.array, backend.array)
        agree = float(np.mean(table[theirs.array] == cleaned.array)) if same_grid else 0.0
        lines.append(
            f"{name}: command == served backend output: {identical}; "
            f"cleaned served labels agree on {100 * agree:.2f} % of voxels"
        )
    return lines


def _report(
    studies: list[Path], served: dict[str, Any], command: list[float], spacing: float
) -> None:
    from spinecloud_shared.nifti import read_nifti

    print(f"{'study':<10}{'shape':>16}{'served s':>10}{'command s':>11}{'ratio':>8}")
    for study, ours, theirs in zip(studies, served["seconds"], command, strict=True):
        shape = "x".join(str(n) for n in read_nifti(study).shape)
        print(f"{study.name[:7]:<10}{shape:>16}{ours:>10.2f}{theirs:>11.2f}{ours / theirs:>7.3f}x")
    ours_med, theirs_med = statistics.median(served["seconds"]), statistics.median(command)
    print(f"{'median':<26}{ours_med:>10.2f}{theirs_med:>11.2f}{ours_med / theirs_med:>7.3f}x")
    print(
        f"served / nnUNetv2_predict = {ours_med / theirs_med:.3f}x per study (target at most "
        f"{TARGET_RATIO}x); served model load {served['load_s']:.2f} s once, first (cold) "
        f"study {served['cold_s']:.2f} s; studies at {spacing:g} mm"
    )


def main() -> None:
    """Train the tiny model, write the studies, run both sides, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spacing", type=float, default=4.0, help="study and training spacing")
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2, help="training iterations")
    parser.add_argument("--threads", type=int, default=2, help="nnUNet_def_n_proc, both sides")
    parser.add_argument("--served-worker", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.served_worker:
        model_folder, out, *studies = args.served_worker
        served_worker(model_folder, studies, out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = _environment(work / "nnunet" / "nnUNet_results", args.threads)
        os.environ.update({k: env[k] for k in ("nnUNet_def_n_proc", "nnUNet_n_proc_DA")})
        start = time.perf_counter()
        model_folder = train_tiny_model(work / "nnunet", args.spacing, args.iterations)
        print(f"trained the tiny model in {time.perf_counter() - start:.1f} s: {model_folder}")
        studies = write_studies(work / "studies", args.spacing, args.studies)
        served_out, command_out = work / "served", work / "command"
        served_out.mkdir()
        command = [sys.executable, __file__, "--served-worker", str(model_folder)]
        command += [str(served_out), *map(str, studies)]
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        served = json.loads(done.stdout.strip().splitlines()[-1])
        command_seconds = run_command_per_study(studies, command_out, env)
        print(
            f"nnU-Net tiny model, {args.studies} studies, CPU, nnUNet_def_n_proc={args.threads}, "
            "-npp 1 -nps 1, step 0.5, mirroring on, fold all"
        )
        _report(studies, served, command_seconds, args.spacing)
        for line in agreement(model_folder, studies, served_out, command_out):
            print(line)


if __name__ == "__main__":
    main()
