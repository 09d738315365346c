"""Backends by kind, device choice, and loaded models kept in memory between jobs.

``LOADERS`` maps a manifest ``Backend`` to the function that loads it: the MONAI bundle and
nnU-Net loaders are registered here (nnunetv2 itself is imported only when an nnU-Net model is
loaded); ``register_backend`` adds or replaces one.
``load_model`` resolves a reference, verifies the manifest's weight digests and loads the
backend once: later calls for the same folder, device and options return the same object
until a file of the artefact changes (its manifest or weights modification time or size).
A loaded model whose output channels do not all map to canonical ids (``check_label_map``) is
refused with ``ModelLabelError`` (``model_labels_unmapped``) and not cached, so a job fails
before any image is processed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from spinecloud_inference.backends.base import (
    BackendLoader,
    InferenceOptions,
    SegmentationBackend,
)
from spinecloud_inference.backends.lookup import resolve_model_folder
from spinecloud_inference.backends.monai_bundle import load_monai_bundle
from spinecloud_inference.backends.nnunet import load_nnunet_model
from spinecloud_shared import labels
from spinecloud_shared.errors import ConfigurationError, ModelArtifactError, ModelLabelError
from spinecloud_shared.models.manifest import MANIFEST_FILE, Backend, Manifest, read_manifest

LOADERS: dict[Backend, BackendLoader] = {
    Backend.MONAI_BUNDLE: load_monai_bundle,
    Backend.NNUNET: load_nnunet_model,
}
#: Loaded models kept at once (each may hold GPU memory).
CACHE_SIZE = 2

_CacheKey = tuple[str, str, InferenceOptions, tuple[tuple[str, int, int], ...]]
_cache: OrderedDict[_CacheKey, SegmentationBackend] = OrderedDict()
_lock = threading.Lock()


def register_backend(kind: Backend | str, loader: BackendLoader) -> None:
    """Make ``load_model`` load artefacts of ``kind`` with ``loader`` (e.g. nnU-Net)."""
    LOADERS[Backend(kind)] = loader


def resolve_device(device: str | None = None) -> str:
    """'cuda' when a GPU is visible and none was asked for, else 'cpu'; checks a request."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigurationError(f"Device {device!r} was requested but no GPU is visible.")
        return device
    if device != "cpu":
        raise ConfigurationError(f"Unknown device {device!r}: use cpu, cuda or cuda:N.")
    return device


def check_label_map(manifest: Manifest, num_channels: int) -> None:
    """Refuse a model whose ``num_channels`` outputs do not all map to canonical ids.

    Every channel 1..N-1 needs an entry in ``manifest.labels`` (0 = background is allowed),
    no entry may name a channel the network lacks, and at least one channel must be a vertebra:
    otherwise ``ModelLabelError`` says which channels are wrong.
    """
    where = f"Model {manifest.ref}"
    extra = sorted(c for c in manifest.labels if c >= num_channels)
    if extra:
        raise ModelLabelError(
            f"{where}: manifest labels name channels {extra} but the network has "
            f"{num_channels} outputs; fix the model's spinecloud.json labels.",
            model=manifest.ref,
        )
    missing = [c for c in range(1, num_channels) if c not in manifest.labels]
    if missing:
        raise ModelLabelError(
            f"{where}: output channels {missing} have no canonical id; give each one a "
            "vertebra id (or 0 for background) in the model's spinecloud.json labels.",
            model=manifest.ref,
        )
    if not any(target in labels.ALL_IDS for target in manifest.labels.values()):
        raise ModelLabelError(
            f"{where}: no output channel maps to a vertebra (C1-L5, sacrum); it is not a "
            "spine model, or its label names are not known to SpineCloud. Give its channels "
            "canonical ids in spinecloud.json.",
            model=manifest.ref,
        )


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime, size) of the manifest and every file under ``models/``: changes reload."""
    files = [folder / MANIFEST_FILE, *sorted((folder / "models").glob("*"))]
    stats = []
    for path in files:
        if path.is_file():
            info = path.stat()
            stats.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(stats)


def load_backend(
    folder: Path, *, device: str | None = None, options: InferenceOptions | None = None
) -> SegmentationBackend:
    """Load the artefact in ``folder`` (digests verified) or return the copy already loaded."""
    folder = Path(folder).resolve()
    device = resolve_device(device)
    options = options or InferenceOptions()
    key = (str(folder), device, options, _fingerprint(folder))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        manifest = read_manifest(folder, verify=True)
        loader = LOADERS.get(manifest.backend)
        if loader is None:
            raise ModelArtifactError(
                f"{folder}: backend {manifest.backend.value!r} is not installed in this worker.",
                path=str(folder),
            )
        backend = loader(folder, manifest, device=device, options=options)
        check_label_map(backend.manifest, backend.num_channels)
        _cache[key] = backend
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return backend


def load_model(
    ref: str | Path,
    *,
    models_dir: Path | None = None,
    device: str | None = None,
    options: InferenceOptions | None = None,
) -> SegmentationBackend:
    """Resolve a model reference (``backends.lookup``) and load it (cached)."""
    folder = resolve_model_folder(ref, models_dir=models_dir)
    return load_backend(folder, device=device, options=options)


def clear_model_cache() -> None:
    """Drop every loaded model (frees their memory once no job holds them)."""
    with _lock:
        _cache.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
