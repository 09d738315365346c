"""The GPU out-of-memory rule: the fallback sequence as pure logic, and the trainer's retry
loop on CPU with the real ``torch.cuda.OutOfMemoryError`` raised from a forward hook."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinecloud_shared.errors import GpuMemoryError
from spinecloud_shared.models.manifest import read_manifest
from spinecloud_training import segresnet
from spinecloud_training.data import phantom_split
from spinecloud_training.oom import divisibility, next_fallback, patch_floor
from spinecloud_training.presets import DEMO, PAPER, NetworkConfig, Preset
from spinecloud_training.segresnet import CHECKPOINT_FILE, Phase, TrainingProgress, TrainRequest

#: init_filters 4, four levels (divisibility 8): the rule goes 48 -> 32 (the floor).
TINY = DEMO.with_overrides(
    network=NetworkConfig(init_filters=4, norm_groups=4),
    spacing_mm=(4.0, 4.0, 4.0),
    patch_size=(48, 48, 48),
    num_samples=2,
    iterations=4,
    val_every=1000,
    checkpoint_every=2,
    sw_batch_size=2,
)


Steps = list[tuple[int, int, int, tuple[int, int, int]]]


def _sequence(preset: Preset) -> Steps:
    """(batch_size, num_samples, sw_batch_size, patch) after each step, up to the error."""
    seen = []
    with pytest.raises(GpuMemoryError) as raised:
        while True:
            preset, _ = next_fallback(preset)
            seen.append((preset.batch_size, preset.num_samples, preset.sw_batch_size,
                         preset.patch_size))  # fmt: skip
    assert raised.value.code == "gpu_out_of_memory"
    last = "x".join(map(str, seen[-1][3] if seen else preset.patch_size))
    assert f"one {last} patch per step" in raised.value.message
    return seen


def test_paper_preset_halves_the_crops_then_shrinks_the_patch_to_the_floor() -> None:
    assert (divisibility(PAPER), patch_floor(PAPER)) == (8, 32)
    assert _sequence(PAPER) == [
        (1, 2, 2, (96, 96, 96)),
        (1, 1, 1, (96, 96, 96)),
        (1, 1, 1, (80, 80, 80)),
        (1, 1, 1, (64, 64, 64)),
        (1, 1, 1, (48, 48, 48)),
        (1, 1, 1, (32, 32, 32)),
    ]


def test_batch_size_is_halved_before_the_crops() -> None:
    preset = PAPER.with_overrides(batch_size=4, num_samples=2, patch_size=(32, 32, 32))
    assert _sequence(preset) == [
        (2, 2, 2, (32, 32, 32)),
        (1, 2, 1, (32, 32, 32)),
        (1, 1, 1, (32, 32, 32)),
    ]


@settings(max_examples=60, deadline=None)
@given(
    levels=st.integers(min_value=2, max_value=5),
    patch=st.tuples(*[st.integers(min_value=1, max_value=40)] * 3),
    batch=st.integers(min_value=1, max_value=8),
)
def test_every_patch_stays_divisible_and_the_rule_ends(
    levels: int, patch: tuple[int, int, int], batch: int
) -> None:
    network = NetworkConfig(
        init_filters=8, blocks_down=(1,) * levels, blocks_up=(1,) * (levels - 1)
    )
    d = 2 ** (levels - 1)
    preset = PAPER.with_overrides(
        network=network, batch_size=batch, patch_size=tuple(d * p for p in patch)
    )
    steps = _sequence(preset)
    assert len(steps) < 64
    for batch_size, num_samples, _, shape in steps:
        assert batch_size >= 1 and num_samples >= 1
        for size, before in zip(shape, preset.patch_size, strict=True):
            assert size % d == 0
            assert size >= min(before, 4 * d)
    assert steps[-1][:2] == (1, 1)


class _FakeGpu:
    """Raises the real OutOfMemoryError for training forwards larger than ``limit`` voxels
    (batch x patch), once ``free_steps`` forwards have run: memory that runs out mid-run."""

    def __init__(self, limit: int, free_steps: int) -> None:
        self.limit, self.free_steps, self.forwards = limit, free_steps, 0
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training:
            return
        image = args[0]
        self.forwards += 1
        if self.forwards > self.free_steps and image.numel() > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        self.shapes.append(tuple(image.shape))


def _request(tmp_path: Path) -> TrainRequest:
    return TrainRequest(
        preset=TINY,
        data=phantom_split(2, 0, seed=3),
        output_dir=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        name="tiny-oom",
        device="cpu",
    )


def _inject(monkeypatch: pytest.MonkeyPatch, gpu: _FakeGpu) -> None:
    build = segresnet.build_network

    def with_hook(preset: Preset, out_channels: int) -> torch.nn.Module:
        net = build(preset, out_channels)
        net.register_forward_pre_hook(gpu)
        return net

    monkeypatch.setattr(segresnet, "build_network", with_hook)


def test_out_of_memory_mid_run_reduces_and_resumes_from_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two patches of 48^3 fit for two steps, then memory shrinks to one 32^3 patch.
    gpu = _FakeGpu(limit=32**3, free_steps=2)
    _inject(monkeypatch, gpu)
    events: list[TrainingProgress] = []
    result = segresnet.train_segresnet(_request(tmp_path), progress=events.append)

    assert result.completed and result.iteration == 4
    assert [s.change for s in result.oom_steps] == [
        "num_samples 2 -> 1",
        "patch_size [48, 48, 48] -> [32, 32, 32]",
    ]
    assert [s.iteration for s in result.oom_steps] == [2, 2]  # both resumed from iteration 2
    # Steps 1-2 at two 48^3 patches, the two failed attempts, then steps 3-4 at one 32^3 patch.
    assert gpu.shapes == [(2, 1, 48, 48, 48)] * 2 + [(1, 1, 32, 32, 32)] * 2
    assert [e.iteration for e in events if e.phase is Phase.REDUCING] == [2, 2]
    manifest = read_manifest(tmp_path / "bundle", verify=True)
    assert manifest.patch_size == (32, 32, 32)
    assert [s["change"] for s in manifest.metrics["oom_fallbacks"]] == [
        s.change for s in result.oom_steps
    ]
    config = manifest.lineage.config
    assert config["preset"]["num_samples"] == 1 and len(config["oom_fallbacks"]) == 2
    saved = torch.load(tmp_path / "work" / CHECKPOINT_FILE, weights_only=False)
    assert saved["iteration"] == 4 and len(saved["oom_steps"]) == 2


def test_resumed_run_keeps_the_reduced_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject(monkeypatch, _FakeGpu(limit=32**3, free_steps=2))
    segresnet.train_segresnet(_request(tmp_path))
    # A redelivered job asks for the original preset and more steps: the checkpoint's
    # fallbacks are kept, so it resumes at one 32^3 patch instead of failing or re-growing.
    later = _FakeGpu(limit=32**3, free_steps=0)
    _inject(monkeypatch, later)
    request = _request(tmp_path)
    longer = replace(request, preset=TINY.with_overrides(iterations=5), resume=True)
    result = segresnet.train_segresnet(longer)
    assert result.iteration == 5 and later.shapes == [(1, 1, 32, 32, 32)]
    assert len(result.oom_steps) == 2


def test_below_the_floor_the_run_fails_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject(monkeypatch, _FakeGpu(limit=0, free_steps=0))
    with pytest.raises(GpuMemoryError) as raised:
        segresnet.train_segresnet(_request(tmp_path))
    assert raised.value.code == "gpu_out_of_memory"
    assert "32x32x32" in raised.value.message
    assert not (tmp_path / "bundle").exists()
