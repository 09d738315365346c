"""The contract every segmentation backend keeps, and what the pipeline may rely on.

A backend is a loaded model: its network and weights live in memory (on ``device``) from the
moment it is loaded until it is dropped, so that a worker pays the loading cost once and then
segments one volume after another. The pipeline does everything geometric and clinical around
it (orientation, spacing, intensity window, canonical ids, the source grid); a backend only maps
a prepared image to network output channels.

Contract of ``predict``:

- **Input**: a ``float32`` array of shape ``(1, X, Y, Z)`` (one CT channel) that is already
  prepared as the model's manifest asks: axes along ``manifest.orientation``, voxels of
  ``manifest.target_spacing_mm``, intensities clipped to the window and normalised. The backend
  must not resample, reorient or rescale it.
- **Output**: on the same spatial grid ``(X, Y, Z)``, either an integer channel map (each voxel
  holds the index of the winning output channel, ``0 <= value < num_channels``) or per-channel
  scores of shape ``(num_channels, X, Y, Z)`` (probabilities or logits; the pipeline takes the
  argmax over axis 0). Channels are the network's, not canonical ids: the pipeline maps them
  through ``manifest.labels``.
- ``progress``, when given, is called with the fraction (0..1) of the forward pass done.
- A backend holds no per-volume state: two calls with the same input give the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from spinecloud_shared.models.manifest import Manifest

#: Called with the fraction (0..1) of the current stage that is done.
FractionCallback = Callable[[float], None]


@runtime_checkable
class SegmentationBackend(Protocol):
    """A loaded segmentation model; see the module docstring for the contract."""

    @property
    def manifest(self) -> Manifest:
        """The model's manifest (preprocessing, label map, identity)."""
        ...

    @property
    def device(self) -> str:
        """Where the network runs: 'cpu', 'cuda' or 'cuda:N'."""
        ...

    @property
    def num_channels(self) -> int:
        """Number of network output channels (background included)."""
        ...

    def predict(
        self, image: npt.NDArray[np.float32], *, progress: FractionCallback | None = None
    ) -> npt.NDArray[Any]:
        """Channel map ``(X, Y, Z)`` or channel scores ``(C, X, Y, Z)`` for a prepared image."""
        ...


#: Sliding-window overlap unless the caller gives one. Not the bundle's ``inferer.overlap``
#: (0.25 for the SegResNet presets, a training-time validation setting): the shipped demo model
#: scores thoracic Dice 0.84 at 0.5 and 0.67 at 0.25 on the demo phantom (one level missed).
DEFAULT_OVERLAP = 0.5


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """How a backend runs its network; each backend uses the fields that apply to it.

    ``overlap`` is the fraction of a patch shared by neighbouring sliding windows; None (the
    default) means ``DEFAULT_OVERLAP`` (0.5, nnU-Net's usual step too);
    ``sw_batch_size`` the number of windows per forward call; ``amp`` enables float16/bfloat16
    autocast on CUDA (never on CPU); ``max_stitch_bytes`` bounds the stitched per-channel output
    held at once: larger volumes are processed in slabs (see ``monai_bundle``).
    """

    overlap: float | None = None
    sw_batch_size: int = 2
    amp: bool = True
    max_stitch_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}.")
        if self.sw_batch_size < 1 or self.max_stitch_bytes < 1:
            raise ValueError("sw_batch_size and max_stitch_bytes must be positive.")

    def window_overlap(self) -> float:
        """The overlap to run with: the caller's, else ``DEFAULT_OVERLAP``."""
        return DEFAULT_OVERLAP if self.overlap is None else self.overlap


class BackendLoader(Protocol):
    """Loads the artefact in ``folder``, whose manifest was read and verified already."""

    def __call__(
        self, folder: Path, manifest: Manifest, *, device: str, options: InferenceOptions
    ) -> SegmentationBackend:
        """The loaded backend, with its network on ``device``."""
        ...
