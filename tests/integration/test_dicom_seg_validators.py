"""Our DICOM-SEG judged by other people's tools.

- ``dciodvfy`` (dicom3tools) checks the object against the standard's modules: no "Error" line.
- ``segimage2itkimage`` (dcmqi, the reader 3D Slicer uses; PyPI package ``dcmqi``) converts it
  to NIfTI: the voxels, placed by that NIfTI's own affine, must be our label map's.

Each tool missing is a skip locally and a failure in CI (``CI`` set).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from spinecloud_inference.dicom_seg import write_dicom_seg
from spinecloud_shared import labels
from spinecloud_shared.dicom_series import read_dicom_series, read_series_datasets, to_dicom_grid
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.phantom import PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from tests.integration.conftest import require_tool

pytestmark = pytest.mark.integration


def _dcmqi_tool(name: str) -> str:
    """A dcmqi command: beside this Python (the ``dcmqi`` wheel in .venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else require_tool(name)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume]:
    """A SEG of an LPS phantom with anisotropic voxels and reversed InstanceNumbers."""
    folder = tmp_path_factory.mktemp("validators")
    spec = PhantomSpec(seed=11, levels=("T12", "L3"), spacing_mm=(2.0, 3.0, 2.5), orientation="LPS")
    phantom = generate_phantom(spec)
    write_ct_series(phantom.ct, folder / "ct", key="validators", reverse_instance_numbers=True)
    source = read_dicom_series(folder / "ct")
    label_map = to_dicom_grid(phantom.labels)
    datasets, _ = read_series_datasets(folder / "ct")
    path = write_dicom_seg(label_map, datasets, folder / "seg.dcm", model="segresnet@1.0")
    assert source.same_grid(label_map)
    return path, label_map


def test_dciodvfy_finds_no_error(written: tuple[Path, Volume]) -> None:
    dciodvfy = require_tool("dciodvfy")
    result = subprocess.run(
        [dciodvfy, str(written[0])], capture_output=True, text=True, timeout=120, check=False
    )
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    assert "Segmentation" in report  # it recognised the IOD


def _on_our_grid(image: Volume, grid: Volume) -> npt.NDArray[np.int64]:
    """``image``'s voxels placed on ``grid`` through both affines (exact; 0 outside ``image``)."""
    to_image = np.linalg.inv(image.affine_ras) @ grid.affine_ras
    ijk = np.indices(grid.shape).reshape(3, -1).T
    mapped = ijk @ to_image[:3, :3].T + to_image[:3, 3]
    rounded = np.rint(mapped)
    assert np.allclose(mapped, rounded, atol=1e-2), "the grids are not aligned voxel to voxel"
    index = rounded.astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(image.shape)), axis=1)
    values = np.zeros(len(index), dtype=np.int64)
    values[inside] = image.array[tuple(index[inside].T)]
    return values.reshape(grid.shape)


def test_dcmqi_reads_the_same_voxels(written: tuple[Path, Volume], tmp_path: Path) -> None:
    path, label_map = written
    tool = _dcmqi_tool("segimage2itkimage")
    command = [tool, "--inputDICOM", str(path), "--outputDirectory", str(tmp_path)]
    result = subprocess.run(
        [*command, "-t", "nii", "--mergeSegments"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # dcmqi numbers its merged labels by segment; meta.json names each one.
    meta = json.loads((tmp_path / "meta.json").read_text())
    to_canonical = np.zeros(256, dtype=np.uint8)
    for segment in meta["segmentAttributes"][0]:
        vertebra = labels.by_name(segment["SegmentLabel"])
        assert segment["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == vertebra.snomed_code
        to_canonical[segment["labelID"]] = vertebra.id
    # ITK writes NIfTI in RAS like nibabel; it covers only the slices that hold a segment.
    dcmqi = read_nifti(tmp_path / "1.nii.gz")
    placed = to_canonical[_on_our_grid(dcmqi, label_map)]
    np.testing.assert_array_equal(placed, label_map.array)
    assert int(np.count_nonzero(dcmqi.array)) == int(np.count_nonzero(label_map.array))
