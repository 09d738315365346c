"""The MONAI bundle backend: a SegResNet (or other ``monai.networks.nets`` network) bundle.

Artefact layout (written by training, read here offline; nothing is downloaded)::

    <folder>/spinecloud.json         the Manifest (backend "monai_bundle", weights digests)
    <folder>/configs/metadata.json   MONAI bundle metadata
    <folder>/configs/inference.json  at least {"network_def": {"_target_": ..., "out_channels": N}}
    <folder>/models/model.pt         a state_dict, or models/model.ts (TorchScript)

The weights file must be listed in the manifest's ``weights_sha256`` (the registry verifies
the digests before this loader runs), so that no unverified weights are ever executed. Only
``network_def`` is instantiated, with ``monai.bundle.ConfigParser``; its ``_target_`` must be
a ``monai.networks.nets`` class and ``$`` expressions (Python evaluated by MONAI) are refused.

Inference: MONAI ``sliding_window_inference`` over the manifest's patch size with Gaussian
blending, under ``torch.inference_mode``; on CUDA with autocast (bfloat16 where supported,
else float16). Memory is bounded: when the stitched scores of all channels would exceed
``InferenceOptions.max_stitch_bytes``, the volume is cut along its longest axis into slabs
with a halo of at least one patch, each slab's core is reduced to a uint8 channel map by a
chunked argmax, and the halo is dropped. Slab starts sit on the sliding-window grid, so every
core voxel is covered by exactly the windows a whole-volume pass would use: the result equals
the whole-volume result up to float rounding. On CUDA, a slab's stitched scores stay on the
GPU only when they take less than a quarter of its free memory, else they go to the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from spinecloud_inference.backends.base import FractionCallback, InferenceOptions
from spinecloud_shared.errors import ModelArtifactError
from spinecloud_shared.models.manifest import Manifest

logger = logging.getLogger(__name__)

METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
#: Weights files in order of preference: a state_dict, then TorchScript.
WEIGHTS_FILES = ("models/model.pt", "models/model.ts")
_NETS_PREFIX = "monai.networks.nets."
_STATE_DICT_KEYS = ("state_dict", "model", "network", "net")
#: Planes per argmax chunk: bounds the temporary int64 index array.
_ARGMAX_CHUNK_PLANES = 16


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelArtifactError(f"{path}: missing from the MONAI bundle.", path=str(path))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelArtifactError(f"{path}: not valid JSON ({exc}).", path=str(path)) from exc
    if not isinstance(data, dict):
        raise ModelArtifactError(f"{path}: expected a JSON object.", path=str(path))
    return data


def _refuse_expressions(value: Any, path: Path) -> None:
    """Refuse ``$`` expressions anywhere in the network definition: MONAI evaluates them."""
    if isinstance(value, str) and value.startswith("$"):
        raise ModelArtifactError(
            f"{path}: network_def contains a Python expression ({value[:40]!r}); refused.",
            path=str(path),
        )
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            _refuse_expressions(child, path)


def _network_definition(folder: Path) -> tuple[dict[str, Any], int]:
    """The checked ``network_def`` of the bundle and its number of output channels."""
    path = folder / INFERENCE_FILE
    config = _read_json(path)
    network_def = config.get("network_def")
    if not isinstance(network_def, dict):
        raise ModelArtifactError(f"{path}: no 'network_def' object.", path=str(path))
    _refuse_expressions(network_def, path)
    target = str(network_def.get("_target_", ""))
    if not target.startswith(_NETS_PREFIX):
        raise ModelArtifactError(
            f"{path}: network_def._target_ {target!r} is not a {_NETS_PREFIX}* class.",
            path=str(path),
        )
    channels = network_def.get("out_channels")
    if not isinstance(channels, int) or not 2 <= channels <= 255:
        raise ModelArtifactError(
            f"{path}: network_def.out_channels must be an integer in 2..255, got {channels!r}.",
            path=str(path),
        )
    return network_def, channels


def _instantiate(network_def: dict[str, Any], path: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": network_def})
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # MONAI wraps constructor errors in several types
        raise ModelArtifactError(
            f"{path}: network_def cannot be instantiated ({exc}).", path=str(path)
        ) from exc
    if not isinstance(network, torch.nn.Module):
        raise ModelArtifactError(f"{path}: network_def is not a torch module.", path=str(path))
    return network


def _weights_file(folder: Path, manifest: Manifest) -> Path:
    """The bundle's weights file; it must exist and be covered by the manifest's digests."""
    present = [rel for rel in WEIGHTS_FILES if (folder / rel).is_file()]
    if not present:
        raise ModelArtifactError(
            f"{folder}: no weights file (expected {' or '.join(WEIGHTS_FILES)}).",
            path=str(folder / WEIGHTS_FILES[0]),
        )
    for rel in present:
        if rel in manifest.weights_sha256:
            return folder / rel
    raise ModelArtifactError(
        f"{folder / present[0]}: not listed in the manifest's weights_sha256, so it cannot be "
        "verified; refusing to load it.",
        path=str(folder / present[0]),
    )


def _state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap a saved state_dict (plain, under a common key, or from DataParallel)."""
    if isinstance(raw, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelArtifactError(f"{path}: not a torch state_dict.", path=str(path))
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def _load_state_dict(network: torch.nn.Module, path: Path) -> torch.nn.Module:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors for damaged files
        raise ModelArtifactError(f"{path}: unreadable weights ({exc}).", path=str(path)) from exc
    try:
        network.load_state_dict(_state_dict(raw, path), strict=True)
    except RuntimeError as exc:
        raise ModelArtifactError(
            f"{path}: the weights do not fit network_def ({exc}).", path=str(path)
        ) from exc
    return network


def _load_torchscript(path: Path) -> torch.nn.Module:
    try:
        module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # TorchScript raises RuntimeError and others for bad archives
        raise ModelArtifactError(
            f"{path}: unreadable TorchScript model ({exc}).", path=str(path)
        ) from exc
    return module


def load_monai_bundle(
    folder: Path, manifest: Manifest, *, device: str, options: InferenceOptions
) -> MonaiBundleBackend:
    """Load a MONAI bundle folder (manifest already verified) onto ``device``, in eval mode."""
    metadata = _read_json(folder / METADATA_FILE)
    network_def, channels = _network_definition(folder)
    weights = _weights_file(folder, manifest)
    if weights.suffix == ".ts":
        network = _load_torchscript(weights)
    else:
        network = _load_state_dict(_instantiate(network_def, folder / INFERENCE_FILE), weights)
    network = network.to(device).eval()
    overlap = options.window_overlap()
    logger.info(
        "loaded MONAI bundle %s (%s) on %s, overlap %g", manifest.ref, weights.name, device, overlap
    )
    return MonaiBundleBackend(
        network=network,
        manifest=manifest,
        device=device,
        num_channels=channels,
        options=dataclasses.replace(options, overlap=overlap),
        metadata=metadata,
    )


# --------------------------------------------------------------------------- slab plan


@dataclass(frozen=True)
class Slab:
    """A run of planes along ``axis``: the network sees ``[start, stop)``, keeps the core."""

    axis: int
    start: int
    stop: int
    core_start: int
    core_stop: int


def _scan_interval(patch: int, overlap: float) -> int:
    """MONAI's sliding-window step along one axis (``int(patch * (1 - overlap))``, at least 1)."""
    return max(int(patch * (1.0 - overlap)), 1)


def window_count(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> int:
    """Number of windows ``sliding_window_inference`` places on an image of ``shape``."""
    total = 1
    for extent, roi in zip(shape, patch, strict=True):
        size = max(extent, roi)  # MONAI pads smaller images up to the patch
        step = roi if size == roi else _scan_interval(roi, overlap)
        total *= 1 + max(math.ceil((size - roi) / step), 0)
    return total


def plan_slabs(
    shape: tuple[int, int, int],
    patch: tuple[int, int, int],
    *,
    overlap: float,
    num_channels: int,
    max_stitch_bytes: int,
) -> list[Slab]:
    """Cut ``shape`` into slabs whose stitched float32 scores fit ``max_stitch_bytes``.

    One slab when the whole volume fits (or is too short to cut). Otherwise slabs along the
    longest axis; cores are multiples of the window step and halos at least one patch, both on
    the window grid, so the slab results equal the whole-volume result (module docstring).
    """
    axis = int(np.argmax(shape))
    size, roi = shape[axis], patch[axis]
    whole = Slab(axis, 0, size, 0, size)
    plane_bytes = 4 * num_channels * math.prod(shape) // size
    step = _scan_interval(roi, overlap)
    halo = math.ceil(roi / step) * step
    if plane_bytes * size <= max_stitch_bytes or size <= roi + 2 * halo:
        return [whole]
    core = max(step, (max_stitch_bytes // plane_bytes - 2 * halo) // step * step)
    slabs = []
    for core_start in range(0, size, core):
        core_stop = min(core_start + core, size)
        start, stop = max(core_start - halo, 0), min(core_stop + halo, size)
        slabs.append(Slab(axis, start, stop, core_start, core_stop))
    return slabs


# --------------------------------------------------------------------------- backend


class _CountingPredictor:
    """Wraps the network to report the fraction of sliding-window batches done."""

    def __init__(
        self, network: Callable[[torch.Tensor], Any], total: int, progress: FractionCallback | None
    ) -> None:
        self.network, self.total, self.progress, self.done = network, max(total, 1), progress, 0

    def __call__(self, batch: torch.Tensor) -> Any:
        # Stitch in float32 even under autocast: blending sums in bfloat16 lose precision.
        output = self.network(batch)
        if isinstance(output, torch.Tensor):
            output = output.float()
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done / self.total, 1.0))
        return output


class MonaiBundleBackend:
    """A MONAI network kept loaded on its device; implements ``SegmentationBackend``."""

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        manifest: Manifest,
        device: str,
        num_channels: int,
        options: InferenceOptions,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.network = network
        self._manifest = manifest
        self._device = device
        self._num_channels = num_channels
        self.options = options
        self.metadata = metadata or {}

    @property
    def manifest(self) -> Manifest:
        """The model's manifest."""
        return self._manifest

    @property
    def overlap(self) -> float:
        """The sliding-window overlap this backend runs with (resolved when it was loaded)."""
        return self.options.window_overlap()

    @property
    def device(self) -> str:
        """Where the network runs."""
        return self._device

    @property
    def num_channels(self) -> int:
        """Network output channels, background included."""
        return self._num_channels

    def predict(
        self, image: npt.NDArray[np.float32], *, progress: FractionCallback | None = None
    ) -> npt.NDArray[np.uint8]:
        """uint8 channel map ``(X, Y, Z)`` of a prepared ``(1, X, Y, Z)`` float32 image."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"expected a (1, X, Y, Z) image, got shape {image.shape}")
        shape = (int(image.shape[1]), int(image.shape[2]), int(image.shape[3]))
        patch = self.manifest.patch_size
        slabs = plan_slabs(
            shape,
            patch,
            overlap=self.overlap,
            num_channels=self.num_channels,
            max_stitch_bytes=self.options.max_stitch_bytes,
        )
        batches = sum(
            math.ceil(
                window_count(_slab_shape(shape, s), patch, self.overlap)
                / self.options.sw_batch_size
            )
            for s in slabs
        )
        predictor = _CountingPredictor(self.network, batches, progress)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        out = np.empty(shape, dtype=np.uint8)
        for slab in slabs:
            scores = self._stitch(_take(tensor, slab, slab.start, slab.stop), predictor)
            _argmax_into(scores, slab, out)
            del scores
        return out

    def _stitch(self, tensor: torch.Tensor, predictor: _CountingPredictor) -> torch.Tensor:
        """Sliding-window scores (1, C, x, y, z) of one slab."""
        from monai.inferers import sliding_window_inference

        with torch.inference_mode(), self._autocast():
            scores = sliding_window_inference(
                tensor,
                roi_size=self.manifest.patch_size,
                sw_batch_size=self.options.sw_batch_size,
                predictor=predictor,
                overlap=self.overlap,
                mode="gaussian",
                sw_device=self.device,
                device=self._stitch_device(tensor),
            )
        if not isinstance(scores, torch.Tensor):
            raise ModelArtifactError(
                f"{self.manifest.ref}: the network returned {type(scores).__name__}, "
                "not one tensor."
            )
        return scores

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not (self.options.amp and self.device.startswith("cuda")):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _stitch_device(self, tensor: torch.Tensor) -> str:
        """The GPU when the slab's scores take under a quarter of its free memory, else CPU."""
        if not self.device.startswith("cuda"):
            return "cpu"
        needed = 4 * (self.num_channels + 1) * tensor[0, 0].numel()
        free, _total = torch.cuda.mem_get_info(torch.device(self.device))
        return self.device if needed < free // 4 else "cpu"


def _slab_shape(shape: tuple[int, int, int], slab: Slab) -> tuple[int, int, int]:
    out = list(shape)
    out[slab.axis] = slab.stop - slab.start
    return out[0], out[1], out[2]


def _take(tensor: torch.Tensor, slab: Slab, start: int, stop: int) -> torch.Tensor:
    """Planes ``[start, stop)`` of a (N, C, X, Y, Z) tensor along the slab's spatial axis."""
    return tensor.narrow(2 + slab.axis, start, stop - start)


def _chunks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for first in range(start, stop, _ARGMAX_CHUNK_PLANES):
        yield first, min(first + _ARGMAX_CHUNK_PLANES, stop)


def _argmax_into(scores: torch.Tensor, slab: Slab, out: npt.NDArray[np.uint8]) -> None:
    """Write the argmax over channels of the slab's core into ``out``, a few planes at a time."""
    for first, last in _chunks(slab.core_start, slab.core_stop):
        part = _take(scores, slab, first - slab.start, last - slab.start)
        labels = torch.argmax(part[0], dim=0).to(torch.uint8).cpu().numpy()
        index: list[slice] = [slice(None)] * 3
        index[slab.axis] = slice(first, last)
        out[tuple(index)] = labels
