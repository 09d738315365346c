"""Typed training presets for the SegResNet backend: ``paper`` and ``demo``.

``paper`` reproduces the setup of the study in ``reference/cloud-framework-spine-paper.txt``:
MONAI Label's radiology app, task "segmentation" (the paper's "ResSegNet"), trained on the
TotalSegmentator dataset for 1000 epochs of 241 iterations (964 training images on 4 A100s,
i.e. one image per GPU per iteration). Numbers the paper does not state come from MONAI Label's
``sample-apps/radiology/lib/trainers/segmentation.py`` and DESIGN.md (Models):

* batch size 1 image per iteration per GPU (``BasicTrainTask`` default, and 964 / 4 GPUs = 241
  iterations per epoch as the paper reports), ``num_samples=4`` random crops per image from
  ``RandCropByPosNegLabeld(pos=1, neg=1)``, so 4 patches per step;
* SegResNet(init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout 0.2),
  1.5 mm isotropic spacing, 96^3 patches, DiceCE loss, AdamW lr 1e-4, constant learning rate
  (the radiology trainer sets no scheduler), sliding-window validation over 96^3 windows.

The intensity window is SpineCloud's model contract (-1000..2000 HU scaled to [0, 1]), not
MONAI Label's soft-tissue window (-175..250 HU), because bone is what we segment.

``demo`` keeps the architecture family and shrinks everything so that it trains on two CPU
cores in minutes on procedural phantoms and gives a bundle of a few MB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Scheduler(StrEnum):
    """Learning-rate schedule over the run's iterations."""

    CONSTANT = "constant"
    COSINE = "cosine"


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """``monai.networks.nets.SegResNet`` arguments (3D, one CT channel in)."""

    init_filters: int = 32
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout_prob: float = 0.2
    #: GroupNorm groups (SegResNet's default 8); ``init_filters`` must be a multiple of it.
    norm_groups: int = 8

    def __post_init__(self) -> None:
        if self.init_filters % self.norm_groups:
            raise ValueError(
                f"init_filters ({self.init_filters}) must be a multiple of norm_groups "
                f"({self.norm_groups})."
            )

    def norm(self) -> tuple[str, dict[str, int]]:
        """SegResNet's ``norm`` argument."""
        return ("GROUP", {"num_groups": self.norm_groups})


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Random augmentations applied to training patches (probabilities per patch).

    Flips run along the left-right axis only: vertebra labels are not lateral, so a mirrored
    patch is still correctly labelled, whereas a superior-inferior flip would invert the order
    of the levels and an anterior-posterior flip gives anatomy that does not exist.
    """

    flip_lr_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_rad: float = 0.17
    scale_range: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 0.5
    noise_std: float = 0.02
    noise_prob: float = 0.2


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Everything that defines a SegResNet training run except the data."""

    name: str
    network: NetworkConfig = field(default_factory=NetworkConfig)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    window_hu: tuple[float, float] = (-1000.0, 2000.0)
    #: Images per optimisation step, and random crops taken from each image.
    batch_size: int = 1
    num_samples: int = 4
    #: Foreground : background weight of the crop centres (RandCropByPosNegLabeld pos, neg).
    pos_neg: tuple[float, float] = (1.0, 1.0)
    #: DiceCE's Dice term: numerator smoothing and whether Dice pools the whole batch. MONAI's
    #: defaults (1e-5, per sample) give a class absent from a patch a loss that falls only as
    #: its probabilities go to zero, which holds short runs at "all background"; with 0 and
    #: batch pooling an absent class adds a constant (no gradient) instead.
    dice_smooth_nr: float = 1e-5
    dice_batch: bool = False
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: Scheduler = Scheduler.CONSTANT
    #: Run length: ``epochs`` passes over the training images, unless ``iterations`` is set.
    epochs: int = 1000
    iterations: int | None = None
    #: Validation and checkpoint intervals in iterations (paper preset: every 10 epochs and
    #: every epoch of the 964-image training set at one image per step).
    val_every: int = 9640
    checkpoint_every: int = 964
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    num_workers: int = 4
    #: Data-parallel processes (torch DDP), each with ``batch_size`` images per step: None
    #: uses every visible GPU (one process on CPU or a single GPU); a number asks for that many
    #: (gloo processes on CPU). The paper trained on 4 GPUs.
    world_size: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0

    def total_iterations(self, train_cases: int) -> int:
        """Optimisation steps of the run for a training set of ``train_cases`` images."""
        if self.iterations is not None:
            return self.iterations
        per_epoch = max(1, -(-train_cases // self.batch_size))
        return self.epochs * per_epoch

    def with_overrides(self, **changes: Any) -> Preset:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary, for the manifest's lineage and the checkpoints."""
        return asdict(self)


PAPER = Preset(name="paper")

DEMO = Preset(
    name="demo",
    network=NetworkConfig(init_filters=8),
    spacing_mm=(3.0, 3.0, 3.0),
    patch_size=(48, 48, 48),
    batch_size=1,
    num_samples=2,
    pos_neg=(3.0, 1.0),
    dice_smooth_nr=0.0,
    dice_batch=True,
    learning_rate=5e-3,
    scheduler=Scheduler.COSINE,
    epochs=1,
    iterations=1200,
    val_every=600,
    checkpoint_every=200,
    sw_batch_size=4,
    sw_overlap=0.25,
    num_workers=0,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, DEMO)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.") from None
