"""The segmentation pipeline: a CT volume in, a canonical vertebra label map on its grid out.

Stages (each timed, in seconds, in ``SegmentationResult.timings_s``):

1. ``load`` (only when a model reference is given): find, verify and load the model, or take it
   from the in-process cache (``backends.load_model``).
2. ``preprocess``: refuse unsuitable input (below), reorient exactly to the manifest's
   orientation, resample linearly to its target spacing (voxels outside the source read
   -1024 HU), clip to the intensity window and normalise (``clip_scale`` to [0, 1] or
   ``zscore`` with the manifest's mean and std).
3. ``forward``: the backend gives network channels; the argmax is taken if it gave scores.
4. ``postprocess``: channels become canonical ids through ``manifest.labels``; the map is
   resampled with nearest neighbour onto exactly the source grid (same shape and affine);
   ``postprocess.clean_labels`` keeps one component per class and drops fragments;
   ``plausibility.check_plausibility`` lists findings; per-level volumes and centroids.

Refusals, all ``InvalidInputError`` subclasses with a sentence an operator can act on:

- ``ImageTooSmallError``: the field of view is shorter than ``min_extent_mm`` (16 mm, about a
  cervical vertebral body plus its disc) along some axis; no level can be labelled in it.
- ``NoBodyInImageError``: fewer than ``min_body_fraction`` (0.1 %) of the voxels are above
  ``body_hu`` (-500 HU, between lung and fat): an empty scan, air, or a wrong rescale.
- ``MetalImageError``: more than ``max_metal_fraction`` (50 %) of those body voxels are at or
  above ``metal_hu`` (2500 HU, denser than any bone): a metal object or saturated data.
- ``UnsuitableImageError``: NaN or infinite voxels.
- ``ModelArtifactError``: a manifest whose labels do not give every network output channel a
  canonical id (channel missing, channel beyond the network's outputs, no vertebra at all), or
  a ``zscore`` normalisation without mean and std.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from spinecloud_inference.backends import (
    InferenceOptions,
    SegmentationBackend,
    load_model,
)
from spinecloud_inference.plausibility import Finding, check_plausibility
from spinecloud_inference.postprocess import (
    DEFAULT_MIN_FRAGMENT_ML,
    ClassComponents,
    clean_labels,
)
from spinecloud_shared import labels
from spinecloud_shared.centroids import centroids_from_labels
from spinecloud_shared.errors import (
    ImageTooSmallError,
    MetalImageError,
    ModelArtifactError,
    NoBodyInImageError,
    UnsuitableImageError,
)
from spinecloud_shared.models.manifest import Intensity, Manifest
from spinecloud_shared.resample import Interpolation, resample_to_grid, resample_to_spacing
from spinecloud_shared.volume import Volume

#: HU given to voxels of the model grid that fall outside the source volume.
OUTSIDE_HU = -1024.0


class Stage(StrEnum):
    """Timed stages of the pipeline, in order."""

    LOAD = "load"
    PREPROCESS = "preprocess"
    FORWARD = "forward"
    POSTPROCESS = "postprocess"


#: Called with a stage and the fraction (0..1) of it that is done.
ProgressCallback = Callable[[Stage, float], None]


@dataclass(frozen=True, kw_only=True)
class SegmentOptions:
    """Input refusal thresholds and cleaning settings (see the module docstring)."""

    min_extent_mm: float = 16.0
    body_hu: float = -500.0
    min_body_fraction: float = 0.001
    metal_hu: float = 2500.0
    max_metal_fraction: float = 0.5
    min_fragment_ml: float = DEFAULT_MIN_FRAGMENT_ML


@dataclass(frozen=True)
class LevelSummary:
    """One labelled level of the result: id, name, volume (ml) and centroid (RAS mm)."""

    label: int
    name: str
    volume_ml: float
    centroid_ras: tuple[float, float, float]


@dataclass(frozen=True)
class SegmentationResult:
    """A segmentation on the source grid, with findings, stage timings and the model used."""

    labels: Volume
    findings: list[Finding]
    timings_s: dict[str, float]
    model_ref: str
    manifest: Manifest
    device: str
    levels: tuple[LevelSummary, ...] = ()
    components: dict[int, ClassComponents] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


def check_input(ct: Volume, options: SegmentOptions | None = None) -> None:
    """Refuse a CT the model cannot be run on (rules in the module docstring)."""
    options = options or SegmentOptions()
    extent = [n * s for n, s in zip(ct.shape, ct.spacing_mm, strict=True)]
    if min(extent) < options.min_extent_mm:
        sizes = " x ".join(f"{e:.1f}" for e in extent)
        raise ImageTooSmallError(
            f"The image covers {sizes} mm; every side must be at least "
            f"{options.min_extent_mm:g} mm to hold a vertebra.",
            extent_mm=extent,
        )
    array = ct.array
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise UnsuitableImageError("The image contains NaN or infinite values.")
    body = array > options.body_hu
    body_count = int(np.count_nonzero(body))
    if body_count < options.min_body_fraction * array.size:
        raise NoBodyInImageError(
            f"Only {100 * body_count / array.size:.3f} % of the voxels are denser than "
            f"{options.body_hu:g} HU: no patient in the field of view (or wrong HU rescale)."
        )
    metal = int(np.count_nonzero(array >= options.metal_hu))
    if metal > options.max_metal_fraction * body_count:
        raise MetalImageError(
            f"{100 * metal / body_count:.0f} % of the body is at or above "
            f"{options.metal_hu:g} HU (metal or saturated values); not a CT that can be segmented."
        )


def channel_table(manifest: Manifest, num_channels: int) -> npt.NDArray[np.uint8]:
    """Lookup table network channel -> canonical id; refuses labels that do not fit."""
    where = f"model {manifest.ref}"
    extra = sorted(c for c in manifest.labels if c >= num_channels)
    if extra:
        raise ModelArtifactError(
            f"{where}: manifest labels name channels {extra} but the network has "
            f"{num_channels} outputs."
        )
    missing = [c for c in range(1, num_channels) if c not in manifest.labels]
    if missing:
        raise ModelArtifactError(f"{where}: output channels {missing} have no canonical id.")
    table = np.zeros(num_channels, dtype=np.uint8)
    for channel, target in manifest.labels.items():
        if target != 0:
            labels.by_id(target)  # the manifest validated it; this guards other sources
        table[channel] = target
    if not np.any(table):
        raise ModelArtifactError(f"{where}: no output channel maps to a vertebra.")
    return table


# --------------------------------------------------------------------------- stages


def normalise(array: npt.NDArray[Any], intensity: Intensity) -> npt.NDArray[np.float32]:
    """Clip HU to the window, then scale to [0, 1] or z-score, as float32.

    ``none`` leaves HU unchanged: the backend normalises itself (nnU-Net, from its plans).
    """
    if intensity.normalisation == "none":
        return array.astype(np.float32, copy=False)
    low, high = intensity.window_hu
    clipped = np.clip(array.astype(np.float32, copy=False), low, high)
    if intensity.normalisation == "clip_scale":
        return ((clipped - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    if intensity.mean is None or not intensity.std:
        raise ModelArtifactError("zscore normalisation needs the manifest's mean and std.")
    return ((clipped - np.float32(intensity.mean)) / np.float32(intensity.std)).astype(np.float32)


def _oriented_view(ct: Volume, codes: str) -> Volume:
    """``ct.reoriented(codes)`` with its array left a view (axes permuted and flipped, no copy)."""
    transform = nio.ornt_transform(
        nio.io_orientation(ct.affine_ras), nio.axcodes2ornt(tuple(codes.upper()))
    )
    array = nio.apply_orientation(ct.array, transform)
    return Volume(array, ct.affine_ras @ nio.inv_ornt_aff(transform, ct.array.shape))


def prepare(ct: Volume, manifest: Manifest) -> Volume:
    """The CT on the model's grid (orientation, spacing), normalised, as float32.

    An integer CT of at most 16 bits (every DICOM series) is reoriented as a view and
    interpolated in float32 by the resampler itself: the same values as casting the whole CT to
    float32 and copying it into the model's orientation first, without those two full-size
    copies (about a second on a 512 x 512 x 300 CT, ``bench/inference_e2e.py``).
    """
    array = ct.array
    exact_in_float32 = array.dtype.kind in "iu" and array.dtype.itemsize <= 2
    source = ct if exact_in_float32 else ct.with_array(array.astype(np.float32))
    resampled = resample_to_spacing(
        _oriented_view(source, manifest.orientation),
        manifest.target_spacing_mm,
        interpolation=Interpolation.LINEAR,
        fill_value=OUTSIDE_HU,
        dtype=np.float32,
    )
    return resampled.with_array(normalise(resampled.array, manifest.intensity))


def channel_map(
    output: npt.NDArray[Any], shape: tuple[int, ...], channels: int
) -> npt.NDArray[Any]:
    """The backend's output as a channel map of ``shape`` (argmax over channel scores)."""
    if output.ndim == 4:
        output = np.argmax(output, axis=0)
    if tuple(output.shape) != tuple(shape):
        raise ValueError(f"backend output shape {output.shape} does not match input {shape}")
    if output.dtype.kind not in "iu" or (output.size and int(output.max()) >= channels):
        raise ValueError("backend output is not a channel map within the network's channels")
    return output


def to_source_grid(
    channels: npt.NDArray[Any], table: npt.NDArray[np.uint8], model_grid: Volume, ct: Volume
) -> Volume:
    """Canonical ids, resampled with nearest neighbour onto exactly ``ct``'s grid."""
    canonical = model_grid.with_array(table[channels])
    resampled = resample_to_grid(
        canonical, ct.affine_ras, ct.shape, interpolation=Interpolation.NEAREST
    )
    return ct.with_array(resampled.array.astype(np.uint8, copy=False), kind="labels")


def summarise(
    label_map: Volume, components: dict[int, ClassComponents]
) -> tuple[LevelSummary, ...]:
    """Per-level volume and centroid, head to feet."""
    centres = centroids_from_labels(label_map)
    ordered = sorted(centres, key=lambda i: labels.by_id(i).order)
    return tuple(
        LevelSummary(
            label=i,
            name=labels.by_id(i).name,
            volume_ml=components[i].kept_ml,
            centroid_ras=(float(centres[i][0]), float(centres[i][1]), float(centres[i][2])),
        )
        for i in ordered
    )


# --------------------------------------------------------------------------- driver


class _Clock:
    """Times named stages and reports their start and end to the progress callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        self.report(stage, 0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage.value] = time.perf_counter() - start
        self.report(stage, 1.0)

    def report(self, stage: Stage, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)


def _backend(
    model: SegmentationBackend | str | Path,
    clock: _Clock,
    *,
    device: str | None,
    models_dir: Path | None,
    inference_options: InferenceOptions | None,
) -> SegmentationBackend:
    if not isinstance(model, str | Path):
        return model
    with clock.stage(Stage.LOAD):
        return load_model(model, models_dir=models_dir, device=device, options=inference_options)


def segment_volume(
    ct: Volume,
    model: SegmentationBackend | str | Path,
    *,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    models_dir: Path | None = None,
    options: SegmentOptions | None = None,
    inference_options: InferenceOptions | None = None,
) -> SegmentationResult:
    """Segment the vertebrae of ``ct`` (HU) with ``model``; the label map lies on ``ct``'s grid.

    ``model`` is a loaded backend or a model reference (name, name@version, folder), loaded
    once per process. ``device`` (cpu, cuda, cuda:N; default: the GPU when there is one) and
    ``inference_options`` apply when a reference is loaded. Stages, refusals: module docstring.
    """
    options = options or SegmentOptions()
    clock = _Clock(progress)
    check_input(ct, options)
    backend = _backend(
        model, clock, device=device, models_dir=models_dir, inference_options=inference_options
    )
    manifest = backend.manifest
    table = channel_table(manifest, backend.num_channels)
    with clock.stage(Stage.PREPROCESS):
        prepared = prepare(ct, manifest)
    with clock.stage(Stage.FORWARD):
        output = backend.predict(
            prepared.array[None], progress=lambda f: clock.report(Stage.FORWARD, f)
        )
        channels = channel_map(output, prepared.shape, backend.num_channels)
    with clock.stage(Stage.POSTPROCESS):
        raw = to_source_grid(channels, table, prepared, ct)
        cleaned = clean_labels(raw, min_fragment_ml=options.min_fragment_ml)
        levels = summarise(cleaned.labels, cleaned.components)
        centroids = {level.label: np.asarray(level.centroid_ras) for level in levels}
        findings = check_plausibility(cleaned.components, centroids)
    clock.seconds["total"] = sum(clock.seconds.values())
    return SegmentationResult(
        labels=cleaned.labels,
        findings=findings,
        timings_s=dict(clock.seconds),
        model_ref=manifest.ref,
        manifest=manifest,
        device=backend.device,
        levels=levels,
        components=cleaned.components,
    )
