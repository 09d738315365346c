"""What the SegResNet trainer does when the GPU runs out of memory: the fallback rule.

On ``torch.cuda.OutOfMemoryError`` the trainer (``segresnet.train_segresnet``) frees the cache,
takes the next step of this rule, and resumes from its last checkpoint (or from the start when
there is none yet):

1. **Batch first.** While a step holds more than one patch (``batch_size x num_samples``),
   halve it: ``batch_size`` while above 1, then ``num_samples``; the validation's
   ``sw_batch_size`` is halved alongside (not below 1).
2. **Then the patch.** Each dimension of ``patch_size`` shrinks by ``2 x d`` voxels, where
   ``d = 2 ** (len(blocks_down) - 1)`` is the divisibility SegResNet needs (8 for the paper's
   four levels: 96 -> 80 -> 64 -> 48 -> 32), never below the floor ``4 x d`` (32 for the paper)
   and always a multiple of ``d``. A dimension already at or below the floor is left alone.
3. **Below the floor** (one patch per step, every dimension at the floor) the run fails with
   ``GpuMemoryError`` (code ``gpu_out_of_memory``) and a sentence saying what was tried.

Every step taken is recorded (``OomStep``) in the checkpoint, the training result, the job's
progress and result, and the bundle's lineage; the bundle's manifest carries the patch size
the model was finally trained with. A run resumed later from such a checkpoint keeps the
reduced settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from spinecloud_shared.errors import GpuMemoryError
from spinecloud_training.presets import Preset

__all__ = ["OomStep", "divisibility", "next_fallback", "patch_floor", "patch_step"]


@dataclass(frozen=True)
class OomStep:
    """One fallback taken: what changed, from what to what, and at which iteration."""

    iteration: int
    change: str
    batch_size: int
    num_samples: int
    sw_batch_size: int
    patch_size: tuple[int, int, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (lists for tuples)."""
        values = asdict(self)
        values["patch_size"] = list(self.patch_size)
        return values


def divisibility(preset: Preset) -> int:
    """The factor every patch dimension must be a multiple of: SegResNet halves the grid
    ``len(blocks_down) - 1`` times."""
    return int(2 ** (len(preset.network.blocks_down) - 1))


def patch_floor(preset: Preset) -> int:
    """The smallest patch dimension the rule goes down to (``4 x divisibility``)."""
    return 4 * divisibility(preset)


def patch_step(preset: Preset) -> int:
    """Voxels removed from each patch dimension per fallback (``2 x divisibility``)."""
    return 2 * divisibility(preset)


def _smaller_patch(preset: Preset) -> tuple[int, int, int] | None:
    d, floor, step = divisibility(preset), patch_floor(preset), patch_step(preset)
    shrunk = []
    for size in preset.patch_size:
        if size <= floor:
            shrunk.append(size)
        else:
            shrunk.append(max(floor, (size - step) // d * d))
    patch = (shrunk[0], shrunk[1], shrunk[2])
    return None if patch == tuple(preset.patch_size) else patch


def next_fallback(preset: Preset, iteration: int = 0) -> tuple[Preset, OomStep]:
    """The preset after the rule's next step (module docstring) and the step's record.

    Raises GpuMemoryError when nothing is left to reduce.
    """
    sw = max(1, preset.sw_batch_size // 2)
    if preset.batch_size > 1:
        new = replace(preset, batch_size=preset.batch_size // 2, sw_batch_size=sw)
        change = f"batch_size {preset.batch_size} -> {new.batch_size}"
    elif preset.num_samples > 1:
        new = replace(preset, num_samples=preset.num_samples // 2, sw_batch_size=sw)
        change = f"num_samples {preset.num_samples} -> {new.num_samples}"
    else:
        patch = _smaller_patch(preset)
        if patch is None:
            raise GpuMemoryError(
                "Training does not fit in the GPU's memory even with one "
                f"{'x'.join(map(str, preset.patch_size))} patch per step (the smallest the "
                "out-of-memory rule allows). Use a GPU with more memory, a smaller network "
                "or a coarser spacing.",
                patch_size=list(preset.patch_size),
                floor=patch_floor(preset),
            )
        new = replace(preset, patch_size=patch)
        change = f"patch_size {list(preset.patch_size)} -> {list(patch)}"
    step = OomStep(
        iteration=iteration,
        change=change,
        batch_size=new.batch_size,
        num_samples=new.num_samples,
        sw_batch_size=new.sw_batch_size,
        patch_size=(new.patch_size[0], new.patch_size[1], new.patch_size[2]),
    )
    return new, step
