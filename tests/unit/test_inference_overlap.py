"""Sliding-window overlap: the caller's, else the model's own (its bundle's inferer), else 0.5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spinecloud_inference.backends import (
    DEFAULT_MODEL,
    InferenceOptions,
    load_model,
    resolve_model_folder,
)
from spinecloud_inference.backends.base import DEFAULT_OVERLAP
from spinecloud_inference.backends.monai_bundle import INFERENCE_FILE, model_overlap


def test_window_overlap_prefers_the_caller_then_the_model() -> None:
    assert InferenceOptions(overlap=0.6).window_overlap(0.25) == 0.6
    assert InferenceOptions().window_overlap(0.25) == 0.25
    assert InferenceOptions().window_overlap(None) == DEFAULT_OVERLAP
    assert InferenceOptions().window_overlap(1.5) == DEFAULT_OVERLAP  # not a valid overlap
    with pytest.raises(ValueError, match="overlap"):
        InferenceOptions(overlap=1.0)


def test_default_model_runs_with_its_validation_overlap() -> None:
    default = load_model(DEFAULT_MODEL, device="cpu")
    assert default.overlap == 0.25  # type: ignore[attr-defined]
    chosen = load_model(DEFAULT_MODEL, device="cpu", options=InferenceOptions(overlap=0.5))
    assert chosen.overlap == 0.5  # type: ignore[attr-defined]


def test_bundle_without_an_inferer_gets_the_default(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(resolve_model_folder(DEFAULT_MODEL), folder)
    config = json.loads((folder / INFERENCE_FILE).read_text())
    assert model_overlap(folder) == config["inferer"]["overlap"]
    del config["inferer"]
    (folder / INFERENCE_FILE).write_text(json.dumps(config))
    assert model_overlap(folder) is None
    backend = load_model(folder, device="cpu")
    assert backend.overlap == DEFAULT_OVERLAP  # type: ignore[attr-defined]
