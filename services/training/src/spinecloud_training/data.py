"""Training data: (CT, canonical label map) cases from phantoms or dataset layouts, prepared
exactly as inference prepares a volume, then cut into augmented patches by MONAI transforms.

A case is prepared once (``prepare_case``): reoriented to RAS, resampled to the preset's spacing
(linear for the CT, nearest for the labels, with ``spinecloud_shared.resample``, the code the
inference side uses), HU clipped to the window and scaled to [0, 1], canonical ids mapped to
output channels. Training patches are then drawn by a ``CacheDataset`` whose cached part holds
the prepared arrays and the foreground/background voxel indices, and whose random part crops
(``RandCropByPosNegLabeld``, foreground-weighted) and augments.

Cases that cannot be used are excluded with their reason (a sentence naming the case and the
file) and error code instead of stopping the run; ``CaseSet.excluded`` and
``DataSplit.excluded`` list them:

* missing files: a case of ``meta.csv`` without its folder or CT, a VerSe CT without its mask
  or centroids, a mask without its CT, a subject of ``splits.json`` without a scan, a plain
  folder's image without its label map or label map without its image;
* unreadable NIfTI (damaged, not 3D, NaN) and any other error a reader raises;
* a mask that is not on its CT's grid (``geometry_mismatch``);
* labels outside the declared map: ids that are not canonical vertebrae, a TotalSegmentator
  mask that is not binary, a plain folder's value missing from its ``labels.json``, canonical
  ids the model has no output channel for (``invalid_labels``);
* no vertebra labelled at all.

A dataset where no training case is usable raises ``InvalidInputError`` (the trainer does,
with every exclusion in its ``details["excluded"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.data import CacheDataset
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
    SpatialPadd,
)

from spinecloud_shared import labels
from spinecloud_shared.errors import (
    GeometryMismatchError,
    InvalidInputError,
    LabelError,
    SpineCloudError,
)
from spinecloud_shared.layouts import plain, totalsegmentator, verse
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.resample import Interpolation, resample_to_spacing
from spinecloud_shared.volume import Volume
from spinecloud_training.presets import Preset

#: Default network output channels: channel c (1..25) -> STANDARD_IDS[c - 1]; 0 is background.
DEFAULT_CHANNELS: dict[int, int] = {0: 0} | {
    c: label_id for c, label_id in enumerate(labels.STANDARD_IDS, start=1)
}

#: Acquisition grids phantoms are drawn on before resampling, so the model sees resampled
#: inputs of several native resolutions and orientations, as real CT arrives.
PHANTOM_SPACINGS: tuple[tuple[float, float, float], ...] = (
    (1.5, 1.5, 3.0),
    (2.0, 2.0, 2.0),
    (2.5, 2.5, 2.5),
    (3.0, 3.0, 3.0),
    (1.0, 3.0, 2.0),
)
PHANTOM_ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "PIR", "RPI")
#: Seeds of validation phantoms start here, far from the training seeds.
VAL_SEED_OFFSET = 100_000

Loader = Callable[[], tuple[Volume, Volume]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseSource:
    """A case not loaded yet: its id and how to load its (CT, canonical label map)."""

    case_id: str
    load: Loader


@dataclass(frozen=True)
class ExcludedCase:
    """A case left out of training, and why (a sentence naming the case and the file)."""

    case_id: str
    reason: str
    code: str


@dataclass(frozen=True)
class PreparedCase:
    """A case on the model's grid: image (1, X, Y, Z) float32 in [0, 1], label (1, X, Y, Z)
    uint8 output channels, and the RAS affine of that grid."""

    case_id: str
    image: npt.NDArray[np.float32]
    label: npt.NDArray[np.uint8]
    affine_ras: npt.NDArray[np.float64]


@dataclass
class CaseSet:
    """Prepared cases and those excluded while loading them."""

    cases: list[PreparedCase] = field(default_factory=list)
    excluded: list[ExcludedCase] = field(default_factory=list)


@dataclass(frozen=True)
class DataSplit:
    """Training and validation sources plus what was excluded while listing them."""

    description: str
    train: list[CaseSource]
    val: list[CaseSource]
    excluded: list[ExcludedCase] = field(default_factory=list)


# --- preparation ------------------------------------------------------------------------------


def channel_lut(channels: Mapping[int, int]) -> npt.NDArray[np.uint8]:
    """Lookup table canonical id -> output channel (ids without a channel become 0)."""
    lut = np.zeros(256, dtype=np.uint8)
    for channel, label_id in channels.items():
        if label_id:
            lut[label_id] = channel
    return lut


def scale_window(
    array: npt.NDArray[Any], window_hu: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """HU clipped to ``window_hu`` and scaled linearly to [0, 1] (the model contract)."""
    lo, hi = window_hu
    scaled = (np.clip(array.astype(np.float32), lo, hi) - lo) / (hi - lo)
    return scaled.astype(np.float32)


def check_declared(
    case_id: str, canonical: npt.NDArray[np.uint8], lut: npt.NDArray[np.uint8]
) -> None:
    """LabelError when the label map holds canonical ids the model has no output channel for.

    Such a vertebra (a transitional T13 or L6, or a level outside a model's declared classes)
    would otherwise be trained as background, teaching the network to miss it.
    """
    present = [int(v) for v in np.unique(canonical) if v]
    outside = [v for v in present if not lut[v]]
    if outside:
        names = ", ".join(labels.by_id(v).name for v in outside)
        raise LabelError(
            f"{case_id}: labels {names} (ids {outside}) are outside the model's declared "
            "classes; the case is left out rather than trained as background.",
            case_id=case_id,
            unknown=outside,
        )


def validate_case(
    case_id: str, ct: Volume, label_map: Volume, lut: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """The case's canonical label array, after the checks every reader of cases shares.

    GeometryMismatchError when the label map is not on the CT's grid; LabelError for ids that
    are not canonical or that ``lut`` gives no channel; InvalidInputError when no vertebra of
    ``lut`` is labelled (an empty mask). Used by training (``prepare_case``) and by the dataset
    registry's scan (``spinecloud_training.dataset_tasks``).
    """
    if not ct.same_grid(label_map):
        raise GeometryMismatchError(
            f"{case_id}: the label map is not on the CT's grid "
            f"(shape {label_map.shape} vs {ct.shape}).",
            case_id=case_id,
        )
    try:
        canonical = labels.check_canonical(label_map.array)
    except LabelError as exc:
        raise LabelError(
            f"{case_id}: {exc.message}", **{**exc.details, "case_id": case_id}
        ) from exc
    check_declared(case_id, canonical, lut)
    if not np.any(lut[canonical]):
        raise InvalidInputError(f"{case_id}: no vertebra is labelled.", case_id=case_id)
    return canonical


def prepare_case(
    case_id: str,
    ct: Volume,
    label_map: Volume,
    preset: Preset,
    lut: npt.NDArray[np.uint8],
) -> PreparedCase:
    """Reorient to RAS, resample to the preset's spacing, window the CT, map ids to channels."""
    canonical = validate_case(case_id, ct, label_map, lut)
    ct_ras = ct.with_array(ct.array.astype(np.float32)).reoriented("RAS")
    labels_ras = label_map.with_array(canonical).reoriented("RAS")
    ct_model = resample_to_spacing(ct_ras, preset.spacing_mm, fill_value=preset.window_hu[0])
    labels_model = resample_to_spacing(
        labels_ras, preset.spacing_mm, interpolation=Interpolation.NEAREST
    )
    channels = lut[labels_model.array]
    if not np.any(channels):
        raise InvalidInputError(f"{case_id}: no vertebra is labelled.", case_id=case_id)
    return PreparedCase(
        case_id=case_id,
        image=scale_window(ct_model.array, preset.window_hu)[None],
        label=channels[None],
        affine_ras=ct_model.affine_ras,
    )


def load_cases(
    sources: Iterable[CaseSource], preset: Preset, channels: Mapping[int, int]
) -> CaseSet:
    """Load and prepare each case; a case that fails is excluded with its reason."""
    lut = channel_lut(channels)
    result = CaseSet()
    for source in sources:
        try:
            ct, label_map = source.load()
            result.cases.append(prepare_case(source.case_id, ct, label_map, preset, lut))
        except SpineCloudError as exc:
            result.excluded.append(ExcludedCase(source.case_id, exc.message, exc.code))
        except Exception as exc:  # a damaged file can raise anything from its reader
            result.excluded.append(unexpected_exclusion(source.case_id, exc))
    return result


def unexpected_exclusion(case_id: str, exc: Exception) -> ExcludedCase:
    """An exclusion for an error no reader anticipated (logged with its traceback)."""
    logger.warning("case %s could not be loaded", case_id, exc_info=exc)
    return ExcludedCase(
        case_id,
        f"{case_id}: could not be loaded ({type(exc).__name__}); the worker log has details.",
        "invalid_input",
    )


# --- sources ----------------------------------------------------------------------------------


def phantom_spec(seed: int, rng: np.random.Generator) -> PhantomSpec:
    """A phantom with a random run of levels anywhere from C1 to the sacrum, drawn on a random
    acquisition grid (spacing and orientation)."""
    spacing = PHANTOM_SPACINGS[int(rng.integers(len(PHANTOM_SPACINGS)))]
    orientation = PHANTOM_ORIENTATIONS[int(rng.integers(len(PHANTOM_ORIENTATIONS)))]
    return PhantomSpec(seed=seed, run_length=(5, 12), spacing_mm=spacing, orientation=orientation)


def _phantom_loader(spec: PhantomSpec) -> Loader:
    def load() -> tuple[Volume, Volume]:
        phantom = generate_phantom(spec)
        return phantom.ct, phantom.labels

    return load


def phantom_sources(
    count: int, *, first_seed: int = 0, prefix: str = "phantom"
) -> list[CaseSource]:
    """``count`` phantoms generated on the fly from seeds ``first_seed``, ``first_seed + 1``..."""
    sources = []
    for seed in range(first_seed, first_seed + count):
        spec = phantom_spec(seed, np.random.default_rng([seed, 7]))
        sources.append(CaseSource(f"{prefix}-{seed:06d}", _phantom_loader(spec)))
    return sources


def phantom_split(train: int, val: int, *, seed: int = 0) -> DataSplit:
    """Training phantoms from seed ``seed`` on; validation phantoms from disjoint seeds."""
    return DataSplit(
        description=(
            f"procedural spine phantoms (spinecloud_shared.phantom), {train} train seeds from "
            f"{seed}, {val} validation seeds from {VAL_SEED_OFFSET + seed}; random level runs "
            "C1..sacrum, random acquisition spacing and orientation"
        ),
        train=phantom_sources(train, first_seed=seed),
        val=phantom_sources(val, first_seed=VAL_SEED_OFFSET + seed),
    )


def _totalseg_loader(case: totalsegmentator.TotalSegCase) -> Loader:
    def load() -> tuple[Volume, Volume]:
        return case.load_ct(), case.labels

    return load


def _verse_loader(case: verse.VerseCase) -> Loader:
    def load() -> tuple[Volume, Volume]:
        return case.load_ct(), case.load_labels()

    return load


def totalsegmentator_sources(
    root: Path,
) -> tuple[list[tuple[CaseSource, str | None]], list[ExcludedCase]]:
    """Each readable case of a TotalSegmentator folder with its split, and the unreadable ones.

    Cases are read one by one (the layout's generator stops at the first bad case, so its
    per-case reader is used) so that one bad case does not hide the others.
    """
    found: list[tuple[CaseSource, str | None]] = []
    excluded: list[ExcludedCase] = []
    for case_id, split in totalsegmentator.case_list(root):
        try:
            case = totalsegmentator.read_case(root / case_id, case_id, split)
        except SpineCloudError as exc:
            excluded.append(ExcludedCase(case_id, exc.message, exc.code))
            continue
        found.append((CaseSource(case_id, _totalseg_loader(case)), split))
    return found, excluded


def _verse_orphans(root: Path, membership: Mapping[str, str]) -> list[ExcludedCase]:
    """Masks without their CT, and subjects of ``splits.json`` without any scan."""
    excluded = []
    for mask in sorted((root / "derivatives").glob("sub-*/*_seg-vert_msk.nii.gz")):
        stem = mask.name.removesuffix("_seg-vert_msk.nii.gz")
        ct_path = root / "rawdata" / mask.parent.name / f"{stem}_ct.nii.gz"
        if not ct_path.is_file():
            excluded.append(
                ExcludedCase(stem, f"{stem}: {ct_path}: no such file (the mask has no CT).",
                             "invalid_nifti")
            )  # fmt: skip
    for subject in sorted(membership):
        if not any((root / "rawdata" / subject).glob("*_ct.nii.gz")):
            excluded.append(
                ExcludedCase(subject, f"{subject}: listed in splits.json but has no CT scan.",
                             "invalid_nifti")
            )  # fmt: skip
    return excluded


def verse_sources(root: Path) -> tuple[list[tuple[CaseSource, str | None]], list[ExcludedCase]]:
    """Each readable scan of a VerSe folder with its split, and the unreadable ones (including
    masks without a CT and subjects of ``splits.json`` without a scan)."""
    membership = verse.read_splits(root) if (root / verse.SPLITS_FILE).is_file() else {}
    found: list[tuple[CaseSource, str | None]] = []
    excluded: list[ExcludedCase] = _verse_orphans(root, membership)
    for ct_path in sorted((root / "rawdata").glob("sub-*/*_ct.nii.gz")):
        split = membership.get(ct_path.parent.name)
        try:
            case = verse.read_scan(root, ct_path, split)
        except SpineCloudError as exc:
            stem = ct_path.name.removesuffix("_ct.nii.gz")
            excluded.append(ExcludedCase(stem, exc.message, exc.code))
            continue
        found.append((CaseSource(case.case_id, _verse_loader(case)), split))
    return found, excluded


def _plain_loader(case: plain.PlainCase) -> Loader:
    def load() -> tuple[Volume, Volume]:
        return case.load_ct(), case.load_labels()

    return load


def plain_sources(root: Path) -> tuple[list[tuple[CaseSource, str | None]], list[ExcludedCase]]:
    """Each readable case of a plain folder (``images/``, ``labels/``, ``labels.json``) with
    its split, and the unreadable ones (an image without labels, labels without an image, a
    label map off the image's grid). A missing or bad ``labels.json`` is raised."""
    declaration = plain.read_declaration(root)
    found: list[tuple[CaseSource, str | None]] = []
    excluded: list[ExcludedCase] = []
    for case_id, split in plain.case_list(root):
        try:
            case = plain.read_case(root, case_id, split, declaration)
        except SpineCloudError as exc:
            excluded.append(ExcludedCase(case_id, exc.message, exc.code))
            continue
        found.append((CaseSource(case_id, _plain_loader(case)), split))
    return found, excluded


#: Layouts a dataset folder can have, and the reader of each.
LAYOUTS: dict[
    str, Callable[[Path], tuple[list[tuple[CaseSource, str | None]], list[ExcludedCase]]]
] = {
    "totalsegmentator": totalsegmentator_sources,
    "verse": verse_sources,
    "plain": plain_sources,
}


def detect_layout(root: Path) -> str:
    """'totalsegmentator', 'verse' or 'plain' from the folder's structure; InvalidInputError
    otherwise."""
    if (root / "rawdata").is_dir():
        return "verse"
    if (root / totalsegmentator.META_FILE).is_file() or any(root.glob("s*/ct.nii.gz")):
        return "totalsegmentator"
    if (root / plain.DECLARATION_FILE).is_file() and (root / plain.IMAGES_DIR).is_dir():
        return "plain"
    raise InvalidInputError(
        f"{root}: neither a TotalSegmentator folder (meta.csv, sNNNN/ct.nii.gz), a VerSe "
        "folder (rawdata/, derivatives/) nor a plain folder (images/, labels/, labels.json).",
        path=str(root),
    )


def layout_sources(
    root: Path, layout: str | None = None
) -> tuple[str, list[tuple[CaseSource, str | None]], list[ExcludedCase]]:
    """(layout, readable cases with their layout split, unreadable cases) of a folder; the
    layout is detected when not given."""
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise InvalidInputError(f"Unknown dataset layout {layout!r}; known: {sorted(LAYOUTS)}.")
    found, excluded = LAYOUTS[layout](root)
    return layout, found, excluded


def split_sources(
    found: Sequence[tuple[CaseSource, str | None]], *, val_fraction: float = 0.1
) -> tuple[list[CaseSource], list[CaseSource]]:
    """(train, val): the layout's 'train'/'val' splits; without a 'val' split, the last
    ``val_fraction`` of the training cases (at least one when there are two or more)."""
    train = [s for s, split in found if split in (None, "train")]
    val = [s for s, split in found if split == "val"]
    if not val and len(train) >= 2:
        count = max(1, round(len(train) * val_fraction))
        train, val = train[:-count], train[-count:]
    return train, val


def layout_split(root: Path) -> DataSplit:
    """Training and validation sources of a TotalSegmentator, VerSe or plain folder ('test'
    unused)."""
    layout, found, excluded = layout_sources(root)
    train, val = split_sources(found)
    return DataSplit(
        description=f"{layout} layout at {root}",
        train=train,
        val=val,
        excluded=excluded,
    )


def registered_split(
    root: Path, layout: str, splits: Mapping[str, str], *, name: str = "dataset"
) -> DataSplit:
    """Training and validation sources of a registered dataset, by its stored splits.

    ``splits`` maps case id -> 'train', 'val' or 'test' (``spinecloud_shared.db.datasets``);
    'test' cases are held out for evaluation and never trained or validated on. A stored case
    that can no longer be read is excluded with its reason.
    """
    _layout, found, excluded = layout_sources(root, layout)
    by_id = {source.case_id: source for source, _split in found}
    unreadable = {e.case_id for e in excluded}
    for case_id in sorted(splits):
        if case_id not in by_id and case_id not in unreadable:
            excluded.append(
                ExcludedCase(
                    case_id,
                    f"{case_id}: registered in {name} but no longer in {root}.",
                    "invalid_nifti",
                )
            )
    chosen = {part: [by_id[c] for c in sorted(splits) if splits[c] == part and c in by_id]
              for part in ("train", "val", "test")}  # fmt: skip
    return DataSplit(
        description=(
            f"registered dataset {name} ({layout} layout at {root}): stored splits, "
            f"{len(chosen['train'])} train, {len(chosen['val'])} val, "
            f"{len(chosen['test'])} test held out"
        ),
        train=chosen["train"],
        val=chosen["val"],
        excluded=excluded,
    )


# --- MONAI datasets ---------------------------------------------------------------------------

_KEYS = ("image", "label")


def _case_dict(case: PreparedCase) -> dict[str, Any]:
    return {"image": case.image, "label": case.label, "case_id": case.case_id}


def cached_transforms(preset: Preset) -> list[Any]:
    """Deterministic part (cached once per case): tensors, padding to a patch, crop indices."""
    return [
        EnsureTyped(keys=_KEYS, dtype=torch.float32, track_meta=False),
        SpatialPadd(keys=_KEYS, spatial_size=preset.patch_size),
        FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
    ]


def random_transforms(preset: Preset) -> list[Any]:
    """Random part: foreground-weighted crops, then augmentations that keep labels meaningful."""
    aug = preset.augment
    pos, neg = preset.pos_neg
    return [
        RandCropByPosNegLabeld(
            keys=_KEYS,
            label_key="label",
            spatial_size=preset.patch_size,
            pos=pos,
            neg=neg,
            num_samples=preset.num_samples,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        ),
        SelectItemsd(keys=_KEYS),
        RandFlipd(keys=_KEYS, spatial_axis=0, prob=aug.flip_lr_prob),
        RandAffined(
            keys=_KEYS,
            prob=aug.affine_prob,
            rotate_range=(aug.rotate_rad,) * 3,
            scale_range=(aug.scale_range,) * 3,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=aug.intensity_prob),
        RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=aug.intensity_prob),
        RandGaussianNoised(keys="image", std=aug.noise_std, prob=aug.noise_prob),
        EnsureTyped(keys=_KEYS, dtype=torch.float32, track_meta=False),
    ]


def train_dataset(cases: Sequence[PreparedCase], preset: Preset) -> CacheDataset:
    """A CacheDataset of training patches: each item is a list of ``num_samples`` crops."""
    transform = Compose([*cached_transforms(preset), *random_transforms(preset)])
    transform.set_random_state(seed=preset.seed)
    return CacheDataset(
        data=[_case_dict(c) for c in cases],
        transform=transform,
        cache_rate=1.0,
        num_workers=None,
        progress=False,
        copy_cache=False,
    )
