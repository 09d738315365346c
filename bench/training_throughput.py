"""Benchmark: SegResNet training throughput at 96^3 patches, SpineCloud's loop versus MONAI's.

Contenders, on the same prepared phantom cases, network, loss, optimiser and data loader:

* ``spinecloud``: ``spinecloud_training.segresnet.train_segresnet`` (what ``spinecloud
  train`` and the training worker run), timed from its per-iteration progress reports;
* ``monai_engine``: MONAI's ``SupervisedTrainer`` (``monai.engines``), the engine MONAI
  Label's ``BasicTrainTask`` drives, with the radiology app's segmentation-trainer settings that
  the ``paper`` preset copies (batch 1 image, 4 random crops, DiceCE, AdamW 1e-4), timed from
  its ``ITERATION_COMPLETED`` events;
* ``loader``: the data loader alone (cached cases, random crops and augmentations), to show
  whether data loading keeps up with the training steps (on a GPU it would otherwise starve
  it): its samples/s must exceed the training samples/s.

The first ``--warmup`` iterations of each are not timed. Samples are patches (crops): a step
of the ``paper`` preset trains on ``num_samples`` = 4 patches of 96^3. Seconds per epoch are
given for the paper's epoch (241 steps, 964 images on 4 GPUs, i.e. 241 steps per GPU).
When CUDA is present, GPU utilisation is sampled with ``nvidia-smi`` during each contender.
Prints a table and the ratio; never asserts a time.

Run: ``.venv/bin/python bench/training_throughput.py`` (``--preset demo`` for a quick check).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss

from spinecloud_training.data import (
    DEFAULT_CHANNELS,
    DataSplit,
    PreparedCase,
    load_cases,
    phantom_split,
    train_dataset,
)
from spinecloud_training.presets import Preset, get_preset
from spinecloud_training.segresnet import (
    Phase,
    TrainingProgress,
    TrainRequest,
    build_network,
    select_device,
    train_segresnet,
)

#: Steps per GPU per epoch in the paper (964 training images, 4 GPUs, 1 image per step).
PAPER_STEPS_PER_EPOCH = 241


class GpuSampler:
    """Mean GPU utilisation (%) from ``nvidia-smi`` while the block runs; None without CUDA."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if out:
                self.samples.append(float(out[0]))

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Sample in a thread while the block runs (nothing without a GPU)."""
        if not (torch.cuda.is_available() and shutil.which("nvidia-smi")):
            yield
            return
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    @property
    def mean(self) -> float | None:
        """Mean utilisation over the samples, or None when none was taken."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def _rate(stamps: list[float], warmup: int, per_step: int) -> tuple[float, float]:
    """(seconds per step, samples per second) over the steps after ``warmup``."""
    timed = stamps[warmup:]
    if len(timed) < 2:
        raise SystemExit("not enough timed iterations: raise --iterations above --warmup + 1")
    step_s = (timed[-1] - timed[0]) / (len(timed) - 1)
    return step_s, per_step / step_s


def run_spinecloud(
    preset: Preset, data: DataSplit, work: Path, iterations: int
) -> tuple[list[float], float | None]:
    """Iteration timestamps of ``train_segresnet`` and the mean GPU utilisation."""
    stamps: list[float] = []

    def progress(report: TrainingProgress) -> None:
        if report.phase is Phase.TRAINING and report.loss is not None:
            stamps.append(time.perf_counter())

    request = TrainRequest(
        preset=replace(preset, iterations=iterations, val_every=10**9, checkpoint_every=10**9),
        data=replace(data, val=[]),
        output_dir=work / "bundle",
        work_dir=work / "checkpoints",
    )
    gpu = GpuSampler()
    with gpu.sampling():
        train_segresnet(request, progress=progress)
    return stamps, gpu.mean


def _loader(cases: list[PreparedCase], preset: Preset) -> DataLoader:
    return DataLoader(
        train_dataset(cases, preset),
        batch_size=preset.batch_size,
        shuffle=True,
        num_workers=preset.num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def run_monai_engine(
    preset: Preset, cases: list[PreparedCase], iterations: int
) -> tuple[list[float], float | None]:
    """Iteration timestamps of MONAI's SupervisedTrainer on the same data and network."""
    device = select_device(None)
    network = build_network(preset, len(DEFAULT_CHANNELS)).to(device)
    loader = _loader(cases, preset)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=-(-iterations // len(loader)),
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.AdamW(
            network.parameters(), lr=preset.learning_rate, weight_decay=preset.weight_decay
        ),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        amp=device.type == "cuda",
        epoch_length=None,
    )
    stamps: list[float] = []

    def stamp(engine: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) >= iterations:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    gpu = GpuSampler()
    with gpu.sampling():
        trainer.run()
    return stamps, gpu.mean


def run_loader(preset: Preset, cases: list[PreparedCase], iterations: int) -> list[float]:
    """Batch timestamps of the data loader alone (no training step)."""
    stamps: list[float] = []
    while len(stamps) < iterations:
        for _batch in _loader(cases, preset):
            stamps.append(time.perf_counter())
            if len(stamps) >= iterations:
                break
    return stamps


def main() -> None:
    """Parse arguments, run the contenders, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="paper (96^3 patches) or demo")
    parser.add_argument("--cases", type=int, default=4, help="training phantoms")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=None, help="loader processes")
    args = parser.parse_args()

    preset = get_preset(args.preset)
    if args.num_workers is not None:
        preset = replace(preset, num_workers=args.num_workers)
    data = phantom_split(args.cases, 0, seed=0)
    cases = load_cases(data.train, preset, DEFAULT_CHANNELS).cases
    per_step = preset.batch_size * preset.num_samples
    print(
        f"preset {preset.name}: patch {preset.patch_size}, {per_step} patches per step, "
        f"SegResNet init_filters {preset.network.init_filters}, {len(cases)} phantom cases, "
        f"{args.iterations} iterations ({args.warmup} warm-up), loader workers "
        f"{preset.num_workers}, device {select_device(None)}, torch threads "
        f"{torch.get_num_threads()}, CPUs {os.cpu_count()}"
    )
    rows: list[tuple[str, float, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stamps, gpu = run_spinecloud(preset, data, Path(tmp), args.iterations)
        rows.append(("spinecloud", *_rate(stamps, args.warmup, per_step), gpu))
    stamps, gpu = run_monai_engine(preset, cases, args.iterations)
    rows.append(("monai_engine", *_rate(stamps, args.warmup, per_step), gpu))
    loader_stamps = run_loader(preset, cases, max(args.iterations, 8))
    rows.append(("loader", *_rate(loader_stamps, args.warmup, per_step), None))

    print(f"{'contender':<14}{'s/step':>10}{'samples/s':>12}{'s/epoch*':>12}{'GPU %':>8}")
    for name, step_s, samples_s, gpu_mean in rows:
        epoch = f"{step_s * PAPER_STEPS_PER_EPOCH:12.0f}" if name != "loader" else f"{'-':>12}"
        gpu_text = f"{gpu_mean:8.0f}" if gpu_mean is not None else f"{'-':>8}"
        print(f"{name:<14}{step_s:10.2f}{samples_s:12.3f}{epoch}{gpu_text}")
    ours, peer, loader = rows[0][2], rows[1][2], rows[2][2]
    print("* seconds per epoch of the paper's schedule (241 steps per GPU)")
    print(f"throughput ratio spinecloud / monai_engine: {ours / peer:.2f}x")
    print(
        f"loader headroom: loader samples/s / training samples/s = {loader / ours:.1f}x "
        "(above 1: data loading does not starve the device)"
    )


if __name__ == "__main__":
    main()
