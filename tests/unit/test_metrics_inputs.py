"""Bad input gets a clear error naming the file; folders pair up by file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinecloud_metrics.api import Options, evaluate_files, evaluate_volumes
from spinecloud_metrics.inputs import canonical_labels, pair_folders
from spinecloud_shared.errors import (
    GeometryMismatchError,
    InvalidInputError,
    LabelError,
    NiftiInputError,
)
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.volume import Volume

AFFINE = np.diag([0.8, 0.8, 1.0, 1.0])


def _labels(shape: tuple[int, int, int] = (16, 16, 12)) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[3:9, 3:9, 2:6] = 20
    arr[4:10, 4:10, 6:10] = 21
    return arr


def _write(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    return write_nifti(Volume(arr, affine), path)


def test_non_integer_labels_name_the_file(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.nii.gz", _labels())
    pred = _write(tmp_path / "pred.nii.gz", _labels().astype(np.float32) + 0.5)
    with pytest.raises(LabelError, match=r"pred\.nii\.gz: label map contains non-integer values"):
        evaluate_files(pred, ref)


def test_nan_is_refused_naming_the_file(tmp_path: Path) -> None:
    arr = _labels().astype(np.float32)
    arr[0, 0, 0] = np.nan
    pred = _write(tmp_path / "nan.nii.gz", arr)
    ref = _write(tmp_path / "ref.nii.gz", _labels())
    with pytest.raises(NiftiInputError, match=r"nan\.nii\.gz: contains NaN"):
        evaluate_files(pred, ref)


def test_unknown_ids_name_the_file_and_the_ids(tmp_path: Path) -> None:
    arr = _labels()
    arr[0, 0, 0] = 77
    pred = _write(tmp_path / "organs.nii.gz", arr)
    ref = _write(tmp_path / "ref.nii.gz", _labels())
    with pytest.raises(LabelError, match=r"organs\.nii\.gz: label ids \[77\] are not canonical"):
        evaluate_files(pred, ref)


def test_unknown_ids_are_dropped_when_a_scheme_is_given() -> None:
    arr = np.zeros((4, 4, 4), np.int16)
    arr[0, 0, 0], arr[1, 1, 1] = 5, 31  # v2: liver, L1
    assert set(np.unique(canonical_labels(arr, "totalseg_v2", "x").array)) == {0, 20}


def test_negative_ids_are_refused() -> None:
    with pytest.raises(LabelError, match="x: label map contains negative"):
        canonical_labels(-np.ones((2, 2, 2), np.int16), "canonical", "x")


def test_mismatched_grids_are_refused_unless_resampling_is_asked(tmp_path: Path) -> None:
    ref = _write(tmp_path / "ref.nii.gz", _labels())
    pred = _write(tmp_path / "pred.nii.gz", _labels((16, 16, 13)))
    with pytest.raises(
        GeometryMismatchError, match=r"pred\.nii\.gz and .*ref\.nii\.gz are not on the same grid"
    ):
        evaluate_files(pred, ref)
    shifted = _write(tmp_path / "moved.nii.gz", _labels(), AFFINE + _offset())
    with pytest.raises(GeometryMismatchError):
        evaluate_files(shifted, ref)
    result = evaluate_files(pred, ref, options=Options(resample=True))
    assert {r.label: r.metrics["dice"] for r in result.classes if r.label in (20, 21)} == {
        20: 1.0,
        21: 1.0,
    }


def _offset() -> np.ndarray:
    offset = np.zeros((4, 4))
    offset[0, 3] = 5.0
    return offset


def test_shapes_must_match_for_volumes() -> None:
    with pytest.raises(GeometryMismatchError):
        evaluate_volumes(Volume(_labels((8, 8, 8)), AFFINE), Volume(_labels(), AFFINE))


def test_folders_pair_by_file_name(tmp_path: Path) -> None:
    for folder in ("pred", "ref"):
        for name in ("a.nii.gz", "b.nii"):
            _write(tmp_path / folder / name, _labels())
    pairs = pair_folders(tmp_path / "pred", tmp_path / "ref")
    assert [p.case_id for p in pairs] == ["a", "b"]
    (tmp_path / "pred" / "b.nii").unlink()
    _write(tmp_path / "pred" / "c.nii.gz", _labels())
    with pytest.raises(
        InvalidInputError, match=r"no prediction for \['b'\], no reference for \['c'\]"
    ):
        pair_folders(tmp_path / "pred", tmp_path / "ref")
