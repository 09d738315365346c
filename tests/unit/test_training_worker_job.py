"""Pure parts of the training job: preset overrides from a job's JSON parameters, and the
error kinds a training child process reports back."""

from __future__ import annotations

import pytest

from spinecloud_shared.errors import GeometryMismatchError, InvalidInputError, SpineCloudError
from spinecloud_training.presets import DEMO, NetworkConfig
from spinecloud_training.worker_job import build_preset, error_from_child


def test_preset_overrides_from_json() -> None:
    preset = build_preset(
        "demo",
        {
            "network": {"init_filters": 4, "norm_groups": 4, "blocks_down": [1, 1, 1, 1]},
            "patch_size": [32, 32, 32],
            "spacing_mm": [4, 4, 4],
            "iterations": 5,
        },
    )
    assert preset.network == NetworkConfig(init_filters=4, norm_groups=4, blocks_down=(1, 1, 1, 1))
    assert preset.patch_size == (32, 32, 32) and preset.spacing_mm == (4, 4, 4)
    assert preset.iterations == 5 and preset.learning_rate == DEMO.learning_rate


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("huge", None, "Unknown preset"),
        ("demo", {"epochz": 3}, "Unknown preset fields"),
        ("demo", {"network": {"init_filters": 6}}, "Invalid preset overrides"),
    ],
)
def test_bad_presets_are_invalid_input(
    name: str, overrides: dict[str, object] | None, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        build_preset(name, overrides)


def test_child_errors_keep_their_kind_and_details() -> None:
    error = error_from_child("geometry_mismatch", "s1: off grid", {"excluded": [1]})
    assert isinstance(error, GeometryMismatchError) and error.details == {"excluded": [1]}
    unknown = error_from_child("something_new", "odd", {})
    assert type(unknown) is SpineCloudError and unknown.message == "odd"
