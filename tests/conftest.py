"""Fixtures every test may use: where the real data live, temporary output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    override = os.environ.get("SPINECLOUD_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real CT cases, read in place.

    Skips only when the folder is absent (a user's fresh clone); CI always has it, and
    ``.ci/run`` refuses to start without it.
    """
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def totalseg_example(shared_data: Path) -> Path:
    """The TotalSegmentator example case (CT crop, its segmentation, a real DICOM series)."""
    path = shared_data / "totalsegmentator-example"
    assert path.is_dir(), f"{path} is missing from the shared data folder"
    return path


pytest_plugins = ["tests.fixtures.services"]
