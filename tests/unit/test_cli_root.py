"""The root ``spinecloud`` command loads only the sub-command it is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from spinecloud_shared.cli.app import _requested_command, build_app


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["segment", "in", "-o", "out"], "segment"),
        (["phantom", "generate"], "phantom"),
        (["--help"], None),
        ([], None),
        (["no-such-command"], None),
    ],
)
def test_requested_command(argv: list[str], expected: str | None) -> None:
    assert _requested_command(argv) == expected


def test_a_single_command_app_stays_a_group() -> None:
    result = CliRunner().invoke(build_app("segment"), ["segment", "--help"])
    assert result.exit_code == 0, result.output
    assert "INPUT" in result.output


def test_full_app_lists_every_service() -> None:
    result = CliRunner().invoke(build_app(), ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("segment", "train", "datasets", "models", "metrics", "serve", "phantom"):
        assert name in result.output


def test_phantom_command_imports_no_service() -> None:
    code = (
        "import sys\n"
        "from spinecloud_shared.cli.app import build_app\n"
        "build_app('phantom')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'monai', 'fastapi', 'spinecloud_training', 'spinecloud_gateway')]\n"
        "print(','.join(sorted(loaded)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
