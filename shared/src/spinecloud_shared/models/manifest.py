"""The model manifest: what a served or trained model is, independent of its backend.

Every model artefact (a MONAI bundle folder, an nnU-Net v2 model folder or export zip) carries
a ``spinecloud.json`` manifest beside the backend's own files. Training writes it; inference
reads it to know how to prepare a volume, how to map the network's output channels onto the
canonical vertebra ids, and which weights it was given (sha256).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError, ModelArtifactError

MANIFEST_FILE = "spinecloud.json"


class Backend(StrEnum):
    """How the model's weights are run."""

    MONAI_BUNDLE = "monai_bundle"
    NNUNET = "nnunet"


class ModelState(StrEnum):
    """Life cycle of a registered model version."""

    DRAFT = "draft"
    VALIDATED = "validated"
    PRODUCTION = "production"
    RETIRED = "retired"


class Intensity(BaseModel):
    """Intensity preprocessing: clip HU to a window, then scale to [0, 1] or z-score.

    ``none``: the model normalises intensities itself (nnU-Net, from its plans); the prepared
    image carries HU unchanged and ``window_hu`` is not applied.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_hu: tuple[float, float] = (-1000.0, 2000.0)
    normalisation: str = Field(default="clip_scale", pattern="^(clip_scale|zscore|none)$")
    mean: float | None = None
    std: float | None = None


class Lineage(BaseModel):
    """Where a model came from: enough to reproduce or audit it."""

    model_config = ConfigDict(extra="allow")

    parent: str | None = None
    dataset: str | None = None
    split: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: str | None = None
    command: str | None = None


class Manifest(BaseModel):
    """Identity, preprocessing, label map and provenance of one model version."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$")
    backend: Backend
    #: Network output channel (or nnU-Net label value) -> canonical VerSe id; 0 is background.
    labels: dict[int, int]
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    #: Axis codes the network expects its input in (RAS unless trained otherwise).
    orientation: str = "RAS"
    intensity: Intensity = Field(default_factory=Intensity)
    description: str = ""
    state: ModelState = ModelState.DRAFT
    lineage: Lineage = Field(default_factory=Lineage)
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: Relative path of each weights file -> sha256 hex digest.
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("labels")
    @classmethod
    def _canonical_targets(cls, value: dict[int, int]) -> dict[int, int]:
        for channel, target in value.items():
            if channel < 0:
                raise ValueError(f"output channel {channel} is negative")
            if target != 0 and target not in labels.ALL_IDS:
                raise ValueError(f"output channel {channel} maps to unknown canonical id {target}")
        targets = [t for t in value.values() if t != 0]
        if len(targets) != len(set(targets)):
            raise ValueError("two output channels map onto the same canonical id")
        return value

    @property
    def ref(self) -> str:
        """``name@version``, how jobs and the CLI name a model."""
        return f"{self.name}@{self.version}"


def sha256_file(path: Path) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write ``spinecloud.json`` into an artefact folder, with digests of the listed weights."""
    digests = {rel: sha256_file(folder / rel) for rel in manifest.weights_sha256}
    final = manifest.model_copy(update={"weights_sha256": digests})
    path = folder / MANIFEST_FILE
    path.write_text(final.model_dump_json(indent=2))
    return path


def read_manifest(folder: Path, *, verify: bool = True) -> Manifest:
    """Read and validate an artefact's manifest; with ``verify``, check every weights digest."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelArtifactError(f"{folder}: no {MANIFEST_FILE}; not a SpineCloud model artefact.")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ModelArtifactError(f"{path}: invalid manifest ({exc}).") from exc
    if verify:
        for rel, expected in manifest.weights_sha256.items():
            weights = folder / rel
            if not weights.is_file():
                raise ModelArtifactError(f"{folder}: weights file {rel} is missing.")
            if sha256_file(weights) != expected:
                raise ModelArtifactError(
                    f"{weights}: sha256 does not match the manifest; the file is corrupt or "
                    "was replaced."
                )
    return manifest


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """'name' or 'name@version' -> (name, version or None)."""
    name, _, version = ref.partition("@")
    if not name:
        raise InvalidInputError(f"Not a model reference: {ref!r} (expected NAME[@VERSION]).")
    return name, version or None
