"""Model backends: the ``SegmentationBackend`` contract, loaders per kind, model lookup.

``load_model("spine-segresnet-demo")`` finds, verifies and loads a model once per process;
the pipeline (``spinecloud_inference.pipeline``) runs it on volumes.
"""

from spinecloud_inference.backends.base import (
    BackendLoader,
    FractionCallback,
    InferenceOptions,
    SegmentationBackend,
)
from spinecloud_inference.backends.lookup import (
    DEFAULT_MODEL,
    DEFAULT_MODELS_DIR,
    resolve_model_folder,
    search_roots,
)
from spinecloud_inference.backends.monai_bundle import MonaiBundleBackend, load_monai_bundle
from spinecloud_inference.backends.registry import (
    LOADERS,
    check_label_map,
    clear_model_cache,
    load_backend,
    load_model,
    register_backend,
    resolve_device,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODELS_DIR",
    "LOADERS",
    "BackendLoader",
    "FractionCallback",
    "InferenceOptions",
    "MonaiBundleBackend",
    "SegmentationBackend",
    "check_label_map",
    "clear_model_cache",
    "load_backend",
    "load_model",
    "load_monai_bundle",
    "register_backend",
    "resolve_device",
    "resolve_model_folder",
    "search_roots",
]
