"""Model manifests: validation, digests, references."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError, ModelArtifactError
from spinecloud_shared.models.manifest import (
    Backend,
    Manifest,
    parse_model_ref,
    read_manifest,
    write_manifest,
)


def _manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "spine-test",
        "version": "1.0.0",
        "backend": Backend.MONAI_BUNDLE,
        "labels": {0: 0, **{c: i for c, i in enumerate(labels.STANDARD_IDS, start=1)}},
        "target_spacing_mm": (1.5, 1.5, 1.5),
        "patch_size": (96, 96, 96),
        "weights_sha256": {"models/model.pt": ""},
    }
    return Manifest.model_validate({**fields, **overrides})


def test_write_and_read_back_with_digest(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    write_manifest(_manifest(), tmp_path)
    manifest = read_manifest(tmp_path)
    assert manifest.ref == "spine-test@1.0.0"
    assert manifest.labels[25] == labels.by_name("sacrum").id
    assert len(manifest.weights_sha256["models/model.pt"]) == 64


def test_corrupt_or_missing_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "model.pt"
    weights.write_bytes(b"weights")
    write_manifest(_manifest(), tmp_path)
    weights.write_bytes(b"tampered")
    with pytest.raises(ModelArtifactError, match="sha256 does not match"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path, verify=False).name == "spine-test"
    weights.unlink()
    with pytest.raises(ModelArtifactError, match="missing"):
        read_manifest(tmp_path)
    with pytest.raises(ModelArtifactError, match=r"no spinecloud\.json"):
        read_manifest(tmp_path / "models")
    (tmp_path / "spinecloud.json").write_text("{not json")
    with pytest.raises(ModelArtifactError, match="invalid manifest"):
        read_manifest(tmp_path)


def test_labels_must_map_onto_distinct_canonical_ids() -> None:
    with pytest.raises(ValidationError, match="unknown canonical id 99"):
        _manifest(labels={1: 99})
    with pytest.raises(ValidationError, match="same canonical id"):
        _manifest(labels={1: 20, 2: 20})
    with pytest.raises(ValidationError):
        _manifest(name="Bad Name")


def test_model_references() -> None:
    assert parse_model_ref("spine@1.2") == ("spine", "1.2")
    assert parse_model_ref("spine") == ("spine", None)
    with pytest.raises(InvalidInputError):
        parse_model_ref("@1.0")
