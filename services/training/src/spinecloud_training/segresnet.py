"""The SegResNet trainer: AdamW + DiceCE on random patches, sliding-window validation Dice,
best-checkpoint selection, resumable checkpoints, progress and cancellation callbacks, and a
MONAI bundle with a SpineCloud manifest as output.

The run is counted in iterations (optimiser steps); an epoch is one pass of the data loader
over the training images. Every ``checkpoint_every`` iterations, and when cancelled, the full
state (model, optimiser, scheduler, AMP scaler, iteration, epoch, best weights and score, random
number generator states of torch, numpy, Python, the data loader and the augmentations) is
written to ``work_dir/checkpoint.pt``; ``resume=True`` continues from it. Resuming restarts the
interrupted epoch's shuffling from the saved generator state, so a resumed run is reproducible
but not bit-identical to an uninterrupted one. With ``num_workers > 0`` the augmentations run
in worker processes whose random states are not checkpointed.

CUDA is used when present, with automatic mixed precision (autocast + GradScaler); on CPU the
same code runs in float32. On CUDA out-of-memory the run follows the rule of ``oom`` (halve the
batch, then shrink the patch, resume from the last checkpoint, or fail with
``gpu_out_of_memory``). With several GPUs visible, or ``Preset.world_size`` > 1, the run is
data-parallel over that many processes (``ddp``).
"""

from __future__ import annotations

import copy
import gc
import logging
import random
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import SegResNet
from monai.transforms import Compose, Randomizable

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError
from spinecloud_shared.models.manifest import Lineage, Manifest, read_manifest
from spinecloud_training import bundle
from spinecloud_training.data import (
    DEFAULT_CHANNELS,
    CaseSet,
    CaseSource,
    DataSplit,
    ExcludedCase,
    PreparedCase,
    load_cases,
    train_dataset,
)
from spinecloud_training.ddp import Rank, launch, weights_digest, world_size_for
from spinecloud_training.oom import OomStep, next_fallback
from spinecloud_training.presets import PAPER, Preset, Scheduler

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


class Phase(StrEnum):
    """What the trainer is doing when it reports progress."""

    LOADING = "loading"
    TRAINING = "training"
    VALIDATING = "validating"
    WRITING = "writing"
    #: GPU out of memory: a smaller batch or patch is being tried (``oom``).
    REDUCING = "reducing_memory"
    FINISHED = "finished"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TrainingProgress:
    """One progress report: for a progress bar, a log line or a database row."""

    phase: Phase
    iteration: int
    total_iterations: int
    epoch: int
    loss: float | None = None
    val_dice: float | None = None
    best_val_dice: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


ProgressCallback = Callable[[TrainingProgress], None]
#: Called before every iteration; returning True stops the run after a checkpoint.
CancelCallback = Callable[[], bool]


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """A SegResNet training run: preset, data, where the bundle and checkpoints go."""

    preset: Preset
    data: DataSplit
    output_dir: Path
    work_dir: Path | None = None
    name: str = "spine-segresnet"
    version: str = "0.1.0"
    description: str = "SegResNet spine segmentation (C1-L5, sacrum) trained by SpineCloud"
    channels: Mapping[int, int] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    resume: bool = False
    command: str | None = None
    device: str | None = None
    #: Weights to start from (a state_dict file such as a bundle's ``models/model.pt``), for
    #: fine-tuning; ignored when resuming, since the checkpoint holds the weights.
    init_weights: Path | None = None
    #: Out-of-memory fallbacks already taken (set by the trainer and the DDP launcher).
    oom_steps: tuple[OomStep, ...] = ()

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints live: ``work_dir``, or ``<output_dir>.checkpoints`` beside it."""
        return self.work_dir or self.output_dir.with_name(self.output_dir.name + ".checkpoints")


@dataclass(frozen=True)
class ValidationResult:
    """Mean Dice per output channel over the cases where the class is present."""

    per_class: dict[str, float]
    per_case: dict[str, dict[str, float]]

    @property
    def mean(self) -> float | None:
        """Mean over the classes present in at least one case (None when none is)."""
        values = [v for v in self.per_class.values() if not np.isnan(v)]
        return float(np.mean(values)) if values else None


@dataclass
class TrainingResult:
    """How the run ended and what it produced."""

    completed: bool
    iteration: int
    total_iterations: int
    checkpoint: Path
    excluded: list[ExcludedCase]
    best_iteration: int | None = None
    validation: ValidationResult | None = None
    bundle_dir: Path | None = None
    manifest: Manifest | None = None
    train_seconds: float = 0.0
    #: Out-of-memory fallbacks taken (``oom``), oldest first.
    oom_steps: list[OomStep] = field(default_factory=list)
    #: Data-parallel runs: per rank, its iterations, training cases and weights digest.
    ranks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    """Mutable training state, i.e. what a checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader_generator: torch.Generator
    iteration: int = 0
    epoch: int = 0
    best_dice: float | None = None
    best_iteration: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_validation: ValidationResult | None = None
    train_seconds: float = 0.0
    #: The DistributedDataParallel wrapper that trains ``model`` in a data-parallel run.
    ddp: torch.nn.Module | None = None


# --- construction -----------------------------------------------------------------------------


def build_network(preset: Preset, out_channels: int) -> SegResNet:
    """The preset's SegResNet with ``out_channels`` outputs (1 CT channel in)."""
    net = preset.network
    return SegResNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        init_filters=net.init_filters,
        blocks_down=net.blocks_down,
        blocks_up=net.blocks_up,
        dropout_prob=net.dropout_prob,
        norm=net.norm(),
    )


def _scheduler(
    optimizer: torch.optim.Optimizer, preset: Preset, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if preset.scheduler is Scheduler.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total, 1), eta_min=preset.learning_rate * 0.01
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def select_device(requested: str | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _new_state(
    preset: Preset, out_channels: int, total: int, device: torch.device, rank: int = 0
) -> _State:
    model = build_network(preset, out_channels).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=preset.learning_rate, weight_decay=preset.weight_decay
    )
    return _State(
        model=model,
        optimizer=optimizer,
        scheduler=_scheduler(optimizer, preset, total),
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
        loader_generator=torch.Generator().manual_seed(preset.seed + rank),
    )


# --- checkpoints ------------------------------------------------------------------------------


def _random_transforms(transform: Compose) -> list[Randomizable]:
    return [t for t in transform.flatten().transforms if isinstance(t, Randomizable)]


def _rng_state(transform: Compose) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "transforms": [t.R.get_state() for t in _random_transforms(transform)],
    }


def _restore_rng(saved: Mapping[str, Any], transform: Compose) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    np.random.set_state(saved["numpy"])
    random.setstate(saved["python"])
    for t, state in zip(_random_transforms(transform), saved["transforms"], strict=True):
        t.R.set_state(state)


def save_checkpoint(
    path: Path,
    state: _State,
    preset: Preset,
    transform: Compose,
    oom_steps: Sequence[OomStep] = (),
) -> None:
    """Write the full training state atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "loader_generator": state.loader_generator.get_state(),
        "iteration": state.iteration,
        "epoch": state.epoch,
        "best_dice": state.best_dice,
        "best_iteration": state.best_iteration,
        "best_state": state.best_state,
        "best_validation": state.best_validation,
        "train_seconds": state.train_seconds,
        "rng": _rng_state(transform),
        "preset": preset.to_dict(),
        "oom_steps": [step.as_dict() for step in oom_steps],
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


_RESUME_KEYS = ("network", "spacing_mm", "patch_size", "window_hu")


def _check_compatible(saved: Mapping[str, Any], preset: Preset, *, oom: bool = False) -> None:
    """Refuse to resume with another network, grid or patch size than the checkpoint's (the
    patch may change after an out-of-memory fallback: the network is fully convolutional)."""
    current = preset.to_dict()
    keys = ("network", "spacing_mm", "window_hu") if oom else _RESUME_KEYS
    for key in keys:
        if _as_lists(saved[key]) != _as_lists(current[key]):
            raise InvalidInputError(
                f"Cannot resume: the checkpoint was trained with {key}={saved[key]}, "
                f"this run asks for {current[key]}."
            )


def _as_lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return value


def load_checkpoint(
    path: Path, state: _State, preset: Preset, transform: Compose, *, oom: bool = False
) -> None:
    """Restore ``state`` (and the random generators) from a checkpoint written by this module;
    ``oom``: the patch size may differ (an out-of-memory fallback was taken)."""
    if not path.is_file():
        raise InvalidInputError(f"Cannot resume: no checkpoint at {path}.", path=str(path))
    saved = torch.load(path, map_location="cpu", weights_only=False)
    _check_compatible(saved["preset"], preset, oom=oom)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.loader_generator.set_state(saved["loader_generator"])
    state.iteration = int(saved["iteration"])
    state.epoch = int(saved["epoch"])
    state.best_dice = saved["best_dice"]
    state.best_iteration = saved["best_iteration"]
    state.best_state = saved["best_state"]
    state.best_validation = saved["best_validation"]
    state.train_seconds = float(saved["train_seconds"])
    _restore_rng(saved["rng"], transform)


def saved_fallbacks(path: Path, preset: Preset) -> tuple[Preset, list[OomStep]]:
    """The preset reduced as the checkpoint's out-of-memory fallbacks left it, and those
    fallbacks (the preset unchanged and [] when there were none)."""
    if not path.is_file():
        return preset, []
    saved = torch.load(path, map_location="cpu", weights_only=False)
    steps = [
        OomStep(**{**s, "patch_size": tuple(s["patch_size"])}) for s in saved.get("oom_steps", [])
    ]
    if not steps:
        return preset, []
    last = steps[-1]
    reduced = replace(
        preset,
        batch_size=last.batch_size,
        num_samples=last.num_samples,
        sw_batch_size=last.sw_batch_size,
        patch_size=last.patch_size,
    )
    return reduced, steps


def load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """Start from saved weights (fine-tuning); InvalidInputError when they do not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError) as exc:
        raise InvalidInputError(
            f"Cannot start from the weights in {path}: {exc}", path=str(path)
        ) from exc


# --- validation -------------------------------------------------------------------------------


def _channel_name(label_id: int) -> str:
    return labels.by_id(label_id).name


def predict_labels(
    model: torch.nn.Module, image: torch.Tensor, preset: Preset, device: torch.device
) -> torch.Tensor:
    """Channel index per voxel (1, 1, X, Y, Z) by sliding-window inference over the volume."""
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        logits = sliding_window_inference(
            image.to(device),
            roi_size=preset.patch_size,
            sw_batch_size=preset.sw_batch_size,
            predictor=model,
            overlap=preset.sw_overlap,
            mode="gaussian",
        )
    assert isinstance(logits, torch.Tensor)
    return logits.argmax(dim=1, keepdim=True)


def validate(
    model: torch.nn.Module,
    cases: Sequence[PreparedCase],
    preset: Preset,
    channels: Mapping[int, int],
    device: torch.device,
) -> ValidationResult:
    """Dice per class (MONAI DiceMetric, background excluded) on whole prepared volumes."""
    model.eval()
    metric = DiceMetric(include_background=False, reduction="none", num_classes=len(channels))
    names = [_channel_name(channels[c]) for c in sorted(channels) if c != 0]
    per_case: dict[str, dict[str, float]] = {}
    rows = []
    for case in cases:
        image = torch.from_numpy(case.image)[None]
        label = torch.from_numpy(case.label.astype(np.int64))[None].to(device)
        scores = metric(predict_labels(model, image, preset, device), label)
        assert isinstance(scores, torch.Tensor)
        row = scores[0].float().cpu().numpy()
        rows.append(row)
        per_case[case.case_id] = {n: float(v) for n, v in zip(names, row, strict=True)}
    model.train()
    means = _nanmean_columns(np.vstack(rows) if rows else np.full((1, len(names)), np.nan))
    return ValidationResult(
        per_class={n: float(v) for n, v in zip(names, means, strict=True)}, per_case=per_case
    )


def _nanmean_columns(table: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (a class absent from every case stays NaN, silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(table, axis=0)


# --- the loop ---------------------------------------------------------------------------------


def _batches(loader: DataLoader, state: _State) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever; ``state.epoch`` counts completed passes over the training images."""
    while True:
        yield from loader
        state.epoch += 1


def _train_step(
    state: _State, batch: Mapping[str, torch.Tensor], loss_fn: DiceCELoss, device: torch.device
) -> float:
    image = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
    label = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        loss = loss_fn((state.ddp or state.model)(image), label)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    return float(loss.detach())


@dataclass
class _Loop:
    """One training session (from start or resume) and what it reports."""

    request: TrainRequest
    preset: Preset
    state: _State
    transform: Compose
    val_cases: list[PreparedCase]
    device: torch.device
    total: int
    progress: ProgressCallback | None
    should_cancel: CancelCallback | None
    started: float = field(default_factory=time.monotonic)
    start_iteration: int = 0
    rank: Rank | None = None
    oom_steps: list[OomStep] = field(default_factory=list)
    checkpoints_written: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and validates (rank 0, or no DDP)."""
        return self.rank is None or self.rank.is_main

    def report(self, phase: Phase, loss: float | None = None, dice: float | None = None) -> None:
        """Send a progress report, with an ETA from this session's iteration rate."""
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.started
        done = self.state.iteration - self.start_iteration
        eta = elapsed / done * (self.total - self.state.iteration) if done > 0 else None
        self.progress(
            TrainingProgress(
                phase=phase,
                iteration=self.state.iteration,
                total_iterations=self.total,
                epoch=self.state.epoch,
                loss=loss,
                val_dice=dice,
                best_val_dice=self.state.best_dice,
                elapsed_s=self.state.train_seconds + elapsed,
                eta_s=eta,
            )
        )

    def checkpoint(self) -> None:
        """Save the state, counting this session's time so far."""
        now = time.monotonic()
        self.state.train_seconds += now - self.started
        self.started, self.start_iteration = now, self.state.iteration
        if self.is_main:
            path = self.request.checkpoint_dir / CHECKPOINT_FILE
            save_checkpoint(path, self.state, self.preset, self.transform, self.oom_steps)
        self.checkpoints_written += 1

    def maybe_validate(self) -> None:
        """Validate when due (every ``val_every`` iterations and at the end); keep the best."""
        it = self.state.iteration
        if not self.val_cases or (it % self.preset.val_every and it != self.total):
            return
        self.report(Phase.VALIDATING)
        result = validate(
            self.state.model, self.val_cases, self.preset, self.request.channels, self.device
        )
        dice = result.mean
        logger.info("iteration %d: validation mean Dice %s", it, dice)
        if dice is not None and (self.state.best_dice is None or dice > self.state.best_dice):
            self.state.best_dice, self.state.best_iteration = dice, it
            self.state.best_state = copy.deepcopy(self.state.model.state_dict())
            self.state.best_validation = result
            torch.save(self.state.best_state, self.request.checkpoint_dir / BEST_FILE)
        self.report(Phase.TRAINING, dice=dice)

    def cancel_requested(self) -> bool:
        """The cancel flag; in a DDP run rank 0's, broadcast to every rank."""
        flag = self.should_cancel is not None and self.should_cancel()
        return self.rank.agree(flag) if self.rank is not None else flag

    def run(self, loader: DataLoader) -> bool:
        """Train up to ``total`` iterations; False when cancelled (after a checkpoint)."""
        loss_fn = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            smooth_nr=self.preset.dice_smooth_nr,
            batch=self.preset.dice_batch,
        )
        self.state.model.train()
        batches = _batches(loader, self.state)
        while self.state.iteration < self.total:
            if self.cancel_requested():
                self.checkpoint()
                self.report(Phase.CANCELLED)
                return False
            loss = _train_step(self.state, next(batches), loss_fn, self.device)
            self.report(Phase.TRAINING, loss=loss)
            self.maybe_validate()
            if self.state.iteration % self.preset.checkpoint_every == 0:
                self.checkpoint()
        self.checkpoint()
        return True


# --- the public entry point -------------------------------------------------------------------


def _load_data(request: TrainRequest, rank: Rank | None = None) -> tuple[CaseSet, CaseSet]:
    """The prepared training and validation cases; in a DDP run, this rank's share of the
    training cases and (rank 0 only) the validation cases."""
    train_sources, val_sources = list(request.data.train), list(request.data.val)
    if rank is not None:
        train_sources = train_sources[rank.rank :: rank.world_size]
        val_sources = val_sources if rank.is_main else []
    train = load_cases(train_sources, request.preset, request.channels)
    val = load_cases(val_sources, request.preset, request.channels)
    if not train.cases:
        everything = [*request.data.excluded, *train.excluded, *val.excluded]
        reasons = "; ".join(e.reason for e in [*request.data.excluded, *train.excluded][:5])
        share = f" (rank {rank.rank} of {rank.world_size})" if rank is not None else ""
        raise InvalidInputError(
            f"No usable training case{share} in {request.data.description}"
            + (f" ({reasons})." if reasons else " (the training split is empty)."),
            excluded=[vars(e) for e in everything],
        )
    for excluded in [*request.data.excluded, *train.excluded, *val.excluded]:
        logger.warning("excluded %s: %s", excluded.case_id, excluded.reason)
    return train, val


def code_version() -> str | None:
    """``git rev-parse HEAD`` of the source tree (``+dirty`` with local changes), if any."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def train_segresnet(
    request: TrainRequest,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> TrainingResult:
    """Train (or resume) a SegResNet and, when the run completes, write the bundle.

    Data-parallel over several processes when ``ddp.world_size_for`` says so. Raises
    InvalidInputError when no training case is usable or a resume is impossible, and
    GpuMemoryError when the out-of-memory rule has nothing left to reduce. Cases that fail to
    load are excluded, logged, and listed in the result and the lineage.
    """
    world_size = world_size_for(request.preset, select_device(request.device))
    if world_size > 1:
        return launch(request, world_size, progress=progress, should_cancel=should_cancel)
    return run_rank(request, None, progress=progress, should_cancel=should_cancel)


def _loader(dataset: Any, preset: Preset, state: _State, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=preset.batch_size,
        shuffle=True,
        num_workers=preset.num_workers,
        generator=state.loader_generator,
        pin_memory=device.type == "cuda",
    )


def _session(
    request: TrainRequest,
    preset: Preset,
    train: CaseSet,
    rank: Rank | None,
    device: torch.device,
    total: int,
) -> tuple[_State, Compose, DataLoader]:
    """A fresh state and loader for one attempt, resumed or started from initial weights."""
    dataset = train_dataset(train.cases, preset)
    transform = dataset.transform
    assert isinstance(transform, Compose)
    state = _new_state(preset, len(request.channels), total, device, rank.rank if rank else 0)
    # MONAI's DataLoader re-seeds the dataset's transforms and resets the generator when it is
    # built, so a checkpoint's random states are restored after it.
    loader = _loader(dataset, preset, state, device)
    if request.resume:
        path = request.checkpoint_dir / CHECKPOINT_FILE
        load_checkpoint(path, state, preset, transform, oom=bool(request.oom_steps))
    elif request.init_weights is not None:
        load_initial_weights(state.model, request.init_weights)
    if rank is not None:
        ids = [device.index] if device.type == "cuda" else None
        state.ddp = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=ids)
    return state, transform, loader


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_rank(
    request: TrainRequest,
    rank: Rank | None,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> TrainingResult:
    """The training run of one process: the whole run (``rank`` None) or one DDP rank.

    Without DDP, CUDA out-of-memory follows the ``oom`` rule here; in a DDP run the error
    stops every rank and the launcher applies the rule.
    """
    preset = request.preset
    if request.resume and not request.oom_steps:
        preset, steps = saved_fallbacks(request.checkpoint_dir / CHECKPOINT_FILE, preset)
        request = replace(request, preset=preset, oom_steps=tuple(steps))
    seed_everything(preset.seed)
    device = rank.device if rank is not None else select_device(request.device)
    if progress is not None:
        progress(TrainingProgress(Phase.LOADING, 0, 0, 0))
    train, val = _load_data(request, rank)
    cases = len(train.cases) if rank is None else rank.max_int(len(train.cases))
    total = request.preset.total_iterations(cases)
    request.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    written = 0  # checkpoints of this run: an OOM retry resumes from its own, not an old one
    while True:
        state, transform, loader = _session(request, request.preset, train, rank, device, total)
        loop = _Loop(request, request.preset, state, transform, val.cases, device, total,
                     progress, should_cancel, start_iteration=state.iteration, rank=rank,
                     oom_steps=list(request.oom_steps))  # fmt: skip
        try:
            completed = loop.run(loader)
            break
        except torch.cuda.OutOfMemoryError:
            if rank is not None:
                raise
            iteration, written = state.iteration, written + loop.checkpoints_written
            del state, transform, loader, loop
            _free_memory(device)
            reduced, step = next_fallback(request.preset, iteration)
            logger.warning("GPU out of memory at iteration %d: %s", iteration, step.change)
            request = replace(
                request,
                preset=reduced,
                oom_steps=(*request.oom_steps, step),
                resume=request.resume or written > 0,
            )
            if progress is not None:
                progress(TrainingProgress(Phase.REDUCING, iteration, total, 0))
    return _finish(request, rank, state, loop, train, val, total, completed)


def _finish(
    request: TrainRequest,
    rank: Rank | None,
    state: _State,
    loop: _Loop,
    train: CaseSet,
    val: CaseSet,
    total: int,
    completed: bool,
) -> TrainingResult:
    excluded = [*request.data.excluded, *train.excluded, *val.excluded]
    train_ids = [c.case_id for c in train.cases]
    ranks: list[dict[str, Any]] = []
    if rank is not None:
        summary = {
            "rank": rank.rank,
            "iterations": state.iteration,
            "train_cases": train_ids,
            "excluded": excluded,
            "weights_sha256": weights_digest(state.model),
        }
        ranks = rank.gather(summary)
        train_ids = [i for r in ranks for i in r["train_cases"]]
        excluded = list({(e.case_id, e.code): e for r in ranks for e in r["excluded"]}.values())
        for r in ranks:
            del r["excluded"]
    result = TrainingResult(
        completed=completed,
        iteration=state.iteration,
        total_iterations=total,
        checkpoint=request.checkpoint_dir / CHECKPOINT_FILE,
        excluded=excluded,
        best_iteration=state.best_iteration,
        validation=state.best_validation,
        train_seconds=state.train_seconds,
        oom_steps=list(request.oom_steps),
        ranks=ranks,
    )
    if completed and loop.is_main:
        loop.report(Phase.WRITING)
        _write_output(request, state, train_ids, val, result)
        loop.report(Phase.FINISHED)
    return result


def _lineage(
    request: TrainRequest, train_ids: Sequence[str], val: CaseSet, result: TrainingResult
) -> Lineage:
    return Lineage.model_validate(
        {
            "dataset": request.data.description,
            "split": (
                f"train: {len(train_ids)} cases ({', '.join(train_ids)}); "
                f"val: {len(val.cases)} cases ({', '.join(c.case_id for c in val.cases)})"
            ),
            "config": {
                "backend": "segresnet",
                "preset": request.preset.to_dict(),
                "iterations": result.total_iterations,
                "device": str(select_device(request.device)),
                "world_size": max(1, len(result.ranks)),
                "oom_fallbacks": [step.as_dict() for step in result.oom_steps],
            },
            "code_version": code_version(),
            "command": request.command,
            # An extra lineage field (Lineage allows extras): what was left out, and why.
            "excluded_cases": [
                {"case_id": e.case_id, "code": e.code, "reason": e.reason} for e in result.excluded
            ],
        }
    )


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a class absent from every validation case is recorded as null."""
    return None if np.isnan(value) else round(float(value), 4)


def _metrics(result: TrainingResult, val: CaseSet) -> dict[str, Any]:
    validation = result.validation
    per_class = validation.per_class if validation else {}
    mean = validation.mean if validation else None
    return {
        "val_dice_mean": None if mean is None else round(mean, 4),
        "val_dice_per_class": {k: _finite_or_none(v) for k, v in per_class.items()},
        "val_cases": len(val.cases),
        "val_space": "model grid (RAS, target spacing), whole volumes, sliding window",
        "best_iteration": result.best_iteration,
        "iterations": result.iteration,
        "train_seconds": round(result.train_seconds, 1),
        **(
            {"oom_fallbacks": [step.as_dict() for step in result.oom_steps]}
            if result.oom_steps
            else {}
        ),
    }


def _write_output(
    request: TrainRequest,
    state: _State,
    train_ids: Sequence[str],
    val: CaseSet,
    result: TrainingResult,
) -> None:
    weights = state.best_state if state.best_state is not None else state.model.state_dict()
    info = bundle.BundleInfo(
        name=request.name,
        version=request.version,
        description=request.description,
        channels=request.channels,
        lineage=_lineage(request, train_ids, val, result),
        metrics=_metrics(result, val),
    )
    result.manifest = bundle.write_bundle(request.output_dir, weights, request.preset, info)
    result.bundle_dir = request.output_dir


# --- evaluation of a written bundle -----------------------------------------------------------


def evaluate_bundle(
    folder: Path, sources: Sequence[CaseSource], *, device: str | None = None
) -> tuple[ValidationResult, list[ExcludedCase]]:
    """Dice per class of a bundle on (held-out) cases, read through the artefact contract:
    manifest (verified), ``network_def`` via ConfigParser, ``models/model.pt``."""
    manifest = read_manifest(folder, verify=True)
    target = select_device(device)
    model = bundle.load_network(folder, target)
    preset = replace(
        PAPER,
        spacing_mm=manifest.target_spacing_mm,
        patch_size=manifest.patch_size,
        window_hu=manifest.intensity.window_hu,
    )
    cases = load_cases(sources, preset, manifest.labels)
    return validate(model, cases.cases, preset, manifest.labels, target), cases.excluded
