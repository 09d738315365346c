"""Per-job output files: NIfTI, VerSe centroids, JSON summary, PNG preview, DICOM-SEG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pydicom
import pytest

from spinecloud_inference.dicom_seg import read_dicom_seg
from spinecloud_inference.outputs import (
    OUTPUT_FILES,
    PREVIEW_SIZE_PX,
    vertebra_volumes_ml,
    write_outputs,
    write_preview,
)
from spinecloud_shared import labels
from spinecloud_shared.centroids import read_ctd_json
from spinecloud_shared.dicom_series import read_dicom_series, read_series_datasets, to_dicom_grid
from spinecloud_shared.dicom_write import write_ct_series
from spinecloud_shared.errors import GeometryMismatchError
from spinecloud_shared.nifti import read_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

MODEL = "segresnet@1.2.0"
FINDINGS = [{"code": "missing_level", "message": "L2 is missing between L1 and L3."}]
TIMINGS = {"load": 0.5, "inference": 12.25, "write": 1.0}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    spec = PhantomSpec(seed=5, levels=("T11", "L2"), spacing_mm=(2.0, 2.5, 3.0), orientation="PIR")
    return generate_phantom(spec)


@pytest.fixture(scope="module")
def outputs(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("job")
    return write_outputs(
        phantom.ct, phantom.labels, out, model_ref=MODEL, findings=FINDINGS, timings=TIMINGS
    )


def test_every_file_is_written_and_no_seg_without_sources(outputs: dict[str, Path]) -> None:
    assert set(outputs) == set(OUTPUT_FILES) - {"dicom_seg"}
    for key, path in outputs.items():
        assert path.name == OUTPUT_FILES[key]
        assert path.is_file() and path.stat().st_size > 0
    assert not (outputs["summary_json"].parent / OUTPUT_FILES["dicom_seg"]).exists()


def test_nifti_is_the_uint8_label_map(outputs: dict[str, Path], phantom: Phantom) -> None:
    nifti = read_nifti(outputs["labels_nifti"])
    assert nifti.array.dtype == np.uint8
    assert nifti.same_grid(phantom.labels)
    np.testing.assert_array_equal(nifti.array, phantom.labels.array)


def test_centroid_file_holds_the_phantom_centroids(
    outputs: dict[str, Path], phantom: Phantom
) -> None:
    centroids = read_ctd_json(outputs["centroids_json"], phantom.labels)
    assert set(centroids) == set(phantom.centroids)
    for label_id, centre in phantom.centroids.items():
        np.testing.assert_allclose(centroids[label_id], centre, atol=1e-3)


def test_summary_volumes_levels_centroids_findings_timings(
    outputs: dict[str, Path], phantom: Phantom
) -> None:
    data = json.loads(outputs["summary_json"].read_text())
    voxel_ml = 2.0 * 2.5 * 3.0 / 1000.0
    expected_ids = list(phantom.level_ids)
    assert data["model"] == {"name": "segresnet", "version": "1.2.0", "ref": MODEL}
    assert data["levels"] == [labels.by_id(i).name for i in expected_ids]
    assert [v["id"] for v in data["vertebrae"]] == expected_ids
    for entry in data["vertebrae"]:
        count = int(np.count_nonzero(phantom.labels.array == entry["id"]))
        assert entry["voxels"] == count
        assert entry["volume_ml"] == pytest.approx(count * voxel_ml, abs=1e-3)
        assert entry["name"] == labels.by_id(entry["id"]).name
        np.testing.assert_allclose(
            entry["centroid_ras_mm"], phantom.centroids[entry["id"]], atol=0.01
        )
    assert data["findings"] == FINDINGS
    assert data["timings_s"] == TIMINGS
    assert data["grid"] == {
        "shape": list(phantom.labels.shape),
        "spacing_mm": [2.0, 2.5, 3.0],
        "orientation": "PIR",
    }


def test_volumes_in_ml_are_voxel_count_times_voxel_volume() -> None:
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[0, 0, :3] = 20
    array[1:3, 1:3, 1:3] = 26
    volume = Volume(array, np.diag([2.0, -2.0, 3.0, 1.0]))  # 12 mm³ per voxel
    assert vertebra_volumes_ml(volume) == pytest.approx({20: 3 * 0.012, 26: 8 * 0.012})


def test_preview_has_its_size_and_shows_ct_and_labels(outputs: dict[str, Path]) -> None:
    image = mpimg.imread(outputs["preview_png"])
    width, height = PREVIEW_SIZE_PX
    assert image.shape[:2] == (height, width)
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.05  # not blank
    grey = np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max(axis=-1) < 0.02
    assert 0.2 < float(grey.mean()) < 0.99  # the CT (and black margins) in grey
    assert float((~grey).mean()) > 0.005  # coloured vertebrae overlaid


def test_preview_of_an_empty_label_map_still_renders(phantom: Phantom, tmp_path: Path) -> None:
    empty = phantom.labels.with_array(np.zeros(phantom.labels.shape, dtype=np.uint8))
    path = write_preview(phantom.ct, empty, tmp_path / "p.png", model_ref=MODEL)
    assert mpimg.imread(path).shape[:2] == PREVIEW_SIZE_PX[::-1]


def test_label_map_on_another_grid_is_refused(phantom: Phantom, tmp_path: Path) -> None:
    with pytest.raises(GeometryMismatchError):
        write_outputs(phantom.ct, phantom.labels.reoriented("RAS"), tmp_path, model_ref=MODEL)


def test_seg_is_written_when_source_datasets_are_given(phantom: Phantom, tmp_path: Path) -> None:
    write_ct_series(phantom.ct, tmp_path / "ct", key="outputs-test")
    source = read_dicom_series(tmp_path / "ct")
    datasets, _ = read_series_datasets(tmp_path / "ct")
    label_map = to_dicom_grid(phantom.labels)
    paths = write_outputs(
        source, label_map, tmp_path / "out", model_ref=MODEL, source_datasets=datasets
    )
    assert set(paths) == set(OUTPUT_FILES)
    back = read_dicom_seg(pydicom.dcmread(paths["dicom_seg"]), source)
    np.testing.assert_array_equal(back.array, label_map.array)


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "ASL"])
def test_preview_reads_the_same_voxels_without_reoriented_copies(orientation: str) -> None:
    """The preview's RAS views and spine path equal those of reoriented copies."""
    from spinecloud_inference import outputs

    spec = PhantomSpec(seed=3, orientation=orientation, spacing_mm=(1.7, 2.1, 2.5))
    case = generate_phantom(spec)
    ct_ras, labels_ras = case.ct.reoriented("RAS"), case.labels.reoriented("RAS")
    view, affine = outputs._ras_view(case.ct)
    assert np.array_equal(view, ct_ras.array)
    assert np.allclose(affine, ct_ras.affine_ras)
    expected = outputs._spine_path(labels_ras.array, labels_ras.shape)
    got = outputs._labels_path(case.labels, affine, labels_ras.shape)
    assert all(np.array_equal(e, g) for e, g in zip(expected, got, strict=True))
    empty = case.labels.with_array(np.zeros_like(case.labels.array))
    middle = outputs._labels_path(empty, affine, labels_ras.shape)
    assert all(
        np.array_equal(e, g)
        for e, g in zip(
            middle,
            outputs._spine_path(np.zeros(labels_ras.shape, dtype=np.uint8), labels_ras.shape),
            strict=True,
        )
    )
