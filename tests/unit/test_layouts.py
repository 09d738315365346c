"""TotalSegmentator and VerSe layouts: write phantoms, read them back, report bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spinecloud_shared.errors import (
    GeometryMismatchError,
    InvalidInputError,
    LabelError,
    NiftiInputError,
)
from spinecloud_shared.layouts import (
    read_meta,
    read_totalsegmentator,
    read_verse,
    write_totalsegmentator,
    write_verse,
)
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume

SPLITS = ["train", "val", "test"]


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    """Three small phantoms, one of them not in RAS and with anisotropic voxels."""
    specs = [
        PhantomSpec(seed=1, levels=("L4", "sacrum"), spacing_mm=(3.0, 3.0, 3.0)),
        PhantomSpec(seed=2, levels=("T11", "L1"), spacing_mm=(3.0, 3.0, 3.0), orientation="LPS"),
        PhantomSpec(seed=3, levels=("C5", "T1"), spacing_mm=(2.5, 3.5, 3.0), orientation="PIR"),
    ]
    return [generate_phantom(spec) for spec in specs]


def _same_affine(a: Volume, b: Volume) -> bool:
    return bool(np.allclose(a.affine_ras, b.affine_ras, atol=1e-3, rtol=0.0))


# --- TotalSegmentator -------------------------------------------------------------------------


def test_totalsegmentator_round_trip(tmp_path: Path, phantoms: list[Phantom]) -> None:
    ids = write_totalsegmentator(tmp_path, phantoms, splits=SPLITS)
    assert ids == ["s0000", "s0001", "s0002"]
    assert (tmp_path / "s0001" / "segmentations" / "vertebrae_T12.nii.gz").is_file()
    cases = list(read_totalsegmentator(tmp_path))
    assert [c.case_id for c in cases] == ids
    assert [c.split for c in cases] == SPLITS
    for case, phantom in zip(cases, phantoms, strict=True):
        ct = case.load_ct()
        assert ct.array.dtype == np.int16
        assert np.array_equal(ct.array, phantom.ct.array)
        assert _same_affine(ct, phantom.ct)
        assert case.labels.array.dtype == np.uint8
        assert np.array_equal(case.labels.array, phantom.labels.array)
        assert _same_affine(case.labels, phantom.labels)


def test_totalsegmentator_meta_is_semicolon_separated(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_totalsegmentator(tmp_path, phantoms[:2], splits=["train", "test"])
    header = (tmp_path / "meta.csv").read_text().splitlines()[0]
    assert header.startswith("image_id;") and header.split(";")[5] == "split"
    assert read_meta(tmp_path)["s0001"]["split"] == "test"


def test_totalsegmentator_split_is_honoured(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms, splits=SPLITS)
    assert [c.case_id for c in read_totalsegmentator(tmp_path, split="val")] == ["s0001"]
    assert list(read_totalsegmentator(tmp_path, split="nonexistent")) == []


def test_totalsegmentator_writer_appends_cases(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms[:1], splits=["train"])
    write_totalsegmentator(tmp_path, phantoms[1:2], splits=["test"], first_index=1)
    cases = list(read_totalsegmentator(tmp_path))
    assert [(c.case_id, c.split) for c in cases] == [("s0000", "train"), ("s0001", "test")]


def test_totalsegmentator_reads_real_meta_columns(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms[:1])
    (tmp_path / "meta.csv").write_text(
        "image_id;age;gender;institute;study_type;split;manufacturer\n"
        "s0000;63;m;A;ct abdomen;val;siemens\n"
    )
    [case] = read_totalsegmentator(tmp_path)
    assert case.split == "val"


def test_totalsegmentator_ignores_other_structures(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms[:1])
    phantom = phantoms[0]
    seg = tmp_path / "s0000" / "segmentations"
    liver = phantom.labels.with_array((phantom.ct.array > 0).astype(np.uint8))
    write_nifti(liver, seg / "liver.nii.gz", dtype=np.uint8)
    # A non-spine structure may even be on another grid: it is never opened.
    write_nifti(Volume(np.ones((4, 4, 4), np.uint8), np.eye(4)), seg / "rib_left_1.nii.gz")
    [case] = read_totalsegmentator(tmp_path)
    assert np.array_equal(case.labels.array, phantom.labels.array)


def test_totalsegmentator_geometry_mismatch_names_the_case(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_totalsegmentator(tmp_path, phantoms[:2])
    path = tmp_path / "s0001" / "segmentations" / "vertebrae_L1.nii.gz"
    mask = read_nifti(path)
    shifted = mask.affine_ras.copy()
    shifted[:3, 3] += 5.0
    write_nifti(Volume(mask.array, shifted), path)
    with pytest.raises(GeometryMismatchError, match="s0001") as info:
        list(read_totalsegmentator(tmp_path))
    assert str(path) in str(info.value)


def test_totalsegmentator_missing_ct(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms[:1])
    (tmp_path / "s0000" / "ct.nii.gz").unlink()
    with pytest.raises(NiftiInputError, match=r"s0000.*ct\.nii\.gz"):
        list(read_totalsegmentator(tmp_path))


def test_totalsegmentator_non_binary_mask(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_totalsegmentator(tmp_path, phantoms[:1])
    path = tmp_path / "s0000" / "segmentations" / "vertebrae_L5.nii.gz"
    mask = read_nifti(path)
    write_nifti(mask.with_array(mask.array * 3), path)
    with pytest.raises(LabelError, match=r"s0000.*vertebrae_L5"):
        list(read_totalsegmentator(tmp_path))


def test_totalsegmentator_writer_rejects_transitional_ids(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    phantom = phantoms[0]
    label_map = phantom.labels.array.copy()
    label_map[label_map == 24] = 25  # L5 -> L6
    with pytest.raises(LabelError, match="s0000"):
        write_totalsegmentator(tmp_path, [(phantom.ct, phantom.labels.with_array(label_map))])


# --- VerSe ------------------------------------------------------------------------------------


def test_verse_round_trip(tmp_path: Path, phantoms: list[Phantom]) -> None:
    stems = write_verse(tmp_path, phantoms, splits=SPLITS)
    assert stems[0] == "sub-phantom000_dir-ax"
    assert (tmp_path / "rawdata" / "sub-phantom000" / "sub-phantom000_dir-ax_ct.nii.gz").is_file()
    cases = list(read_verse(tmp_path))
    assert [c.case_id for c in cases] == stems
    assert [c.split for c in cases] == SPLITS
    for case, phantom in zip(cases, phantoms, strict=True):
        ct, label_map = case.load_ct(), case.load_labels()
        assert np.array_equal(ct.array, phantom.ct.array)
        assert np.array_equal(label_map.array, phantom.labels.array)
        assert _same_affine(ct, phantom.ct) and _same_affine(label_map, phantom.labels)
        assert set(case.centroids) == set(phantom.centroids)
        for label, centre in phantom.centroids.items():
            assert np.allclose(case.centroids[label], centre, atol=1e-3)


def test_verse_centroid_file_has_direction(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_verse(tmp_path, phantoms[:1])
    ctd = tmp_path / "derivatives/sub-phantom000/sub-phantom000_dir-ax_seg-subreg_ctd.json"
    entries = json.loads(ctd.read_text())
    assert entries[0] == {"direction": ["P", "I", "R"]}
    assert {e["label"] for e in entries[1:]} == set(phantoms[0].centroids)


def test_verse_pairs_get_centroids_from_labels(tmp_path: Path, phantoms: list[Phantom]) -> None:
    phantom = phantoms[1]
    write_verse(tmp_path, [(phantom.ct, phantom.labels)])
    [case] = read_verse(tmp_path)
    for label, centre in phantom.centroids.items():
        assert np.allclose(case.centroids[label], centre, atol=1e-3)


def test_verse_split_is_honoured(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_verse(tmp_path, phantoms, splits=SPLITS)
    assert [c.subject for c in read_verse(tmp_path, split="test")] == ["sub-phantom002"]
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits == {
        "train": ["sub-phantom000"],
        "val": ["sub-phantom001"],
        "test": ["sub-phantom002"],
    }


def test_verse_split_needs_a_splits_file(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_verse(tmp_path, phantoms[:1])
    (tmp_path / "splits.json").unlink()
    [case] = read_verse(tmp_path)
    assert case.split is None
    with pytest.raises(InvalidInputError, match=r"splits\.json"):
        list(read_verse(tmp_path, split="train"))


def test_verse_geometry_mismatch_names_the_case(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_verse(tmp_path, phantoms[:2])
    mask_path = tmp_path / "derivatives/sub-phantom001/sub-phantom001_dir-ax_seg-vert_msk.nii.gz"
    mask = read_nifti(mask_path)
    write_nifti(Volume(mask.array[:, :, :-1], mask.affine_ras), mask_path)
    with pytest.raises(GeometryMismatchError, match="sub-phantom001_dir-ax") as info:
        list(read_verse(tmp_path))
    assert str(mask_path) in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "error"),
    [("_seg-vert_msk.nii.gz", NiftiInputError), ("_seg-subreg_ctd.json", InvalidInputError)],
)
def test_verse_missing_files(
    tmp_path: Path, phantoms: list[Phantom], suffix: str, error: type[Exception]
) -> None:
    write_verse(tmp_path, phantoms[:1])
    path = tmp_path / "derivatives" / "sub-phantom000" / f"sub-phantom000_dir-ax{suffix}"
    path.unlink()
    with pytest.raises(error, match="sub-phantom000_dir-ax") as info:
        list(read_verse(tmp_path))
    assert str(path) in str(info.value)


def test_verse_bad_labels_name_the_case(tmp_path: Path, phantoms: list[Phantom]) -> None:
    write_verse(tmp_path, phantoms[:1])
    mask_path = tmp_path / "derivatives/sub-phantom000/sub-phantom000_dir-ax_seg-vert_msk.nii.gz"
    mask = read_nifti(mask_path)
    write_nifti(mask.with_array(np.where(mask.array == 24, 40, mask.array)), mask_path)
    [case] = read_verse(tmp_path)
    with pytest.raises(LabelError, match="sub-phantom000_dir-ax"):
        case.load_labels()


def test_writers_reject_mismatched_pairs(tmp_path: Path, phantoms: list[Phantom]) -> None:
    a, b = phantoms[0], phantoms[1]
    with pytest.raises(GeometryMismatchError, match="sub-phantom000"):
        write_verse(tmp_path, [(a.ct, b.labels)])
    with pytest.raises(GeometryMismatchError, match="s0000"):
        write_totalsegmentator(tmp_path, [(a.ct, b.labels)])
