"""Sliding-window overlap: the caller's, else 0.5 (not the bundle's validation setting)."""

from __future__ import annotations

import pytest

from spinecloud_inference.backends import DEFAULT_MODEL, InferenceOptions, load_model
from spinecloud_inference.backends.base import DEFAULT_OVERLAP


def test_window_overlap_is_the_callers_else_the_default() -> None:
    assert InferenceOptions(overlap=0.6).window_overlap() == 0.6
    assert InferenceOptions(overlap=0.0).window_overlap() == 0.0
    assert InferenceOptions().window_overlap() == DEFAULT_OVERLAP == 0.5
    with pytest.raises(ValueError, match="overlap"):
        InferenceOptions(overlap=1.0)


def test_default_model_runs_at_the_default_overlap_not_its_bundles() -> None:
    default = load_model(DEFAULT_MODEL, device="cpu")
    assert default.overlap == DEFAULT_OVERLAP  # type: ignore[attr-defined]
    chosen = load_model(DEFAULT_MODEL, device="cpu", options=InferenceOptions(overlap=0.25))
    assert chosen.overlap == 0.25  # type: ignore[attr-defined]
