"""Data-parallel SegResNet training on CPU: two gloo processes started by the trainer itself."""

from __future__ import annotations

import multiprocessing.util
import os
import time
from pathlib import Path

import pytest
import torch

from spinecloud_shared.models.manifest import read_manifest
from spinecloud_training.data import DEFAULT_CHANNELS, phantom_split
from spinecloud_training.ddp import RankFailedError, fork_ranks, weights_digest, world_size_for
from spinecloud_training.presets import DEMO
from spinecloud_training.segresnet import (
    CHECKPOINT_FILE,
    Phase,
    TrainingProgress,
    TrainRequest,
    build_network,
    seed_everything,
    train_segresnet,
)
from tests.unit.test_training_oom import _FakeGpu, _inject
from tests.unit.test_training_segresnet import TINY as SINGLE_TINY

TINY = SINGLE_TINY.with_overrides(iterations=3, val_every=3, sw_batch_size=4, world_size=2)


def test_world_size_comes_from_the_preset_or_the_visible_gpus() -> None:
    assert world_size_for(TINY, torch.device("cpu")) == 2
    assert world_size_for(DEMO, torch.device("cpu")) == 1
    assert world_size_for(DEMO, torch.device("cuda:0")) == 1  # a device named: one process
    with pytest.raises(ValueError, match="at least 1"):
        world_size_for(TINY.with_overrides(world_size=0), torch.device("cpu"))


class _ProgressFile:
    """Progress written to a file: the callback runs in rank 0's process, not the test's."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: TrainingProgress) -> None:
        with self.path.open("a") as out:
            out.write(f"{event.phase.value} {event.iteration}\n")

    def events(self) -> list[tuple[str, int]]:
        rows = [line.split() for line in self.path.read_text().splitlines()]
        return [(phase, int(iteration)) for phase, iteration in rows]


def test_two_gloo_ranks_step_together_and_rank_zero_writes(tmp_path: Path) -> None:
    progress = _ProgressFile(tmp_path / "progress.txt")
    request = TrainRequest(
        preset=TINY,
        data=phantom_split(4, 1, seed=5),
        output_dir=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        name="tiny-ddp",
        device="cpu",
    )
    result = train_segresnet(request, progress=progress)

    assert result.completed and result.iteration == 3
    # Both ranks took every step, on disjoint halves of the training cases, and ended with
    # the same weights, which are not the initial ones.
    assert [r["rank"] for r in result.ranks] == [0, 1]
    assert [r["iterations"] for r in result.ranks] == [3, 3]
    halves = [set(r["train_cases"]) for r in result.ranks]
    assert len(halves[0]) == len(halves[1]) == 2 and not halves[0] & halves[1]
    digests = {r["weights_sha256"] for r in result.ranks}
    assert len(digests) == 1
    seed_everything(TINY.seed)
    assert digests != {weights_digest(build_network(TINY, len(DEFAULT_CHANNELS)))}
    # Rank 0 wrote the bundle, its checkpoint, its validation and the progress reports.
    manifest = read_manifest(tmp_path / "bundle", verify=True)
    assert manifest.lineage.config["world_size"] == 2
    split = manifest.lineage.split
    assert split is not None
    assert sorted(split.split("(")[1].split(")")[0].split(", ")) == sorted(halves[0] | halves[1])
    assert manifest.metrics["val_cases"] == 1
    assert (tmp_path / "work" / CHECKPOINT_FILE).is_file()
    events = progress.events()
    assert events[-1] == (Phase.FINISHED.value, 3)
    assert (Phase.VALIDATING.value, 3) in events


def test_out_of_memory_in_a_rank_reduces_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The forked ranks inherit the hook: more than one 32^3 patch per step does not fit.
    _inject(monkeypatch, _FakeGpu(limit=32**3, free_steps=0))
    preset = TINY.with_overrides(patch_size=(48, 48, 48), num_samples=2, iterations=2)
    request = TrainRequest(
        preset=preset,
        data=phantom_split(2, 0, seed=5),
        output_dir=tmp_path / "bundle",
        work_dir=tmp_path / "work",
        name="tiny-ddp-oom",
        device="cpu",
    )
    result = train_segresnet(request)
    assert [s.change for s in result.oom_steps] == [
        "num_samples 2 -> 1",
        "patch_size [48, 48, 48] -> [32, 32, 32]",
    ]
    assert [r["iterations"] for r in result.ranks] == [2, 2]
    assert len({r["weights_sha256"] for r in result.ranks}) == 1
    assert read_manifest(tmp_path / "bundle", verify=True).patch_size == (32, 32, 32)


class _Hooked:
    """An object with a multiprocessing after-fork hook (as kombu's connection pools have)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker


def _touch_marker(hooked: _Hooked) -> None:
    hooked.marker.write_text("after-fork hook ran")


def _write_rank(rank: int, folder: Path) -> None:
    (folder / f"rank{rank}").write_text(str(os.getpid()))


def _fail_rank_one(rank: int, folder: Path) -> None:
    if rank == 1:
        raise ValueError("rank one fails")
    time.sleep(60)  # rank 0 would run on; the launcher must stop it
    (folder / "rank0-finished").write_text("")


def test_forked_ranks_skip_multiprocessing_after_fork_hooks(tmp_path: Path) -> None:
    hooked = _Hooked(tmp_path / "hook")
    multiprocessing.util.register_after_fork(hooked, _touch_marker)
    fork_ranks(_write_rank, (tmp_path,), 2)
    pids = {(tmp_path / f"rank{r}").read_text() for r in range(2)}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert not hooked.marker.exists()


def test_a_failing_rank_stops_the_others(tmp_path: Path) -> None:
    with pytest.raises(RankFailedError, match="rank 1"):
        fork_ranks(_fail_rank_one, (tmp_path,), 2)
    assert not (tmp_path / "rank0-finished").exists()
