"""Dataset registry logic: the plain NIfTI layout, seeded splits, the scan and its summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spinecloud_shared import labels
from spinecloud_shared.db.datasets import (
    CaseStats,
    ExcludedEntry,
    ScanResult,
    assign_splits,
    parse_fractions,
    summarize,
)
from spinecloud_shared.errors import InvalidInputError, LabelError
from spinecloud_shared.layouts import plain, write_plain, write_totalsegmentator
from spinecloud_shared.nifti import read_nifti, write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from spinecloud_training.data import detect_layout, plain_sources, registered_split
from spinecloud_training.dataset_tasks import scan_folder
from spinecloud_training.nnunet.raw_dataset import write_raw_dataset

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    specs = [
        PhantomSpec(
            seed=s, levels=("L4", "sacrum"), spacing_mm=(4.0, 4.0, 4.0), fov_mm=(90.0, 90.0)
        )
        for s in range(3)
    ]
    return [generate_phantom(spec) for spec in specs]


# --------------------------------------------------------------------------- plain layout


def test_plain_layout_maps_declared_values_to_canonical_ids(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    v2 = labels.FROM_CANONICAL[labels.Scheme.TOTALSEG_V2]
    write_plain(tmp_path, phantoms, splits=["train", "val", "test"], values=v2)
    stored = read_nifti(tmp_path / "labels" / "case000.nii.gz").array
    present = [int(v) for v in np.unique(phantoms[0].labels.array) if v]
    assert set(np.unique(stored).tolist()) == {0, *(v2[i] for i in present)}  # v2 values
    cases = list(plain.read_plain(tmp_path))
    assert [(c.case_id, c.split) for c in cases] == [
        ("case000", "train"), ("case001", "val"), ("case002", "test"),
    ]  # fmt: skip
    for case, phantom in zip(cases, phantoms, strict=True):
        assert np.array_equal(case.load_labels().array, phantom.labels.array)
        assert case.load_ct().same_grid(phantom.ct)
    assert detect_layout(tmp_path) == "plain"


def test_plain_scheme_declaration_and_null_background(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    v1 = labels.FROM_CANONICAL[labels.Scheme.TOTALSEG_V1]
    write_plain(tmp_path, phantoms[:1], values=v1)
    (tmp_path / "labels.json").write_text(json.dumps({"scheme": "totalseg_v1"}))
    (case,) = plain.read_plain(tmp_path)
    assert np.array_equal(case.load_labels().array, phantoms[0].labels.array)

    declared = {str(v1[i]): labels.by_id(i).name for i in (22, 23, 24)} | {str(v1[26]): None}
    (tmp_path / "labels.json").write_text(json.dumps({"labels": declared}))
    (case,) = plain.read_plain(tmp_path)
    read = case.load_labels().array
    assert not np.any(read == 26)  # declared null: background
    assert np.array_equal(read > 0, np.isin(phantoms[0].labels.array, (22, 23, 24)))


def test_plain_undeclared_value_is_a_label_error_naming_the_case(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_plain(tmp_path, phantoms[:1], case_ids=["ct-7"])
    (tmp_path / "labels.json").write_text(json.dumps({"labels": {"24": "L5"}}))
    (case,) = plain.read_plain(tmp_path)
    with pytest.raises(LabelError, match=r"ct-7: label values \[22, 23, 26\] are not declared"):
        case.load_labels()


@pytest.mark.parametrize(
    "declaration",
    [
        {},
        {"labels": {"1": "C1"}, "scheme": "canonical"},
        {"scheme": "nope"},
        {"labels": {"1": "X9"}},
        {"labels": {"0": "C1"}},
        {"labels": {"1": 3.5}},
        {"labels": {"1": "C1"}, "splits": ["a"]},
    ],
)
def test_bad_declarations_are_refused(tmp_path: Path, declaration: dict[str, object]) -> None:
    (tmp_path / "labels.json").write_text(json.dumps(declaration))
    with pytest.raises(InvalidInputError, match=r"labels\.json"):
        plain.read_declaration(tmp_path)


def test_plain_sources_report_unpaired_and_off_grid_files(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_plain(tmp_path, phantoms)
    (tmp_path / "labels" / "case001.nii.gz").unlink()
    (tmp_path / "images" / "case002.nii.gz").rename(tmp_path / "images" / "case002_0000.nii.gz")
    off = Volume(np.zeros((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off, tmp_path / "labels" / "orphan.nii.gz")
    write_nifti(off, tmp_path / "images" / "small.nii.gz")
    write_nifti(
        Volume(np.zeros((5, 6, 8), dtype=np.uint8), off.affine_ras),
        tmp_path / "labels/small.nii.gz",
    )
    found, excluded = plain_sources(tmp_path)
    assert [s.case_id for s, _ in found] == ["case000", "case002"]  # nnU-Net's _0000 name too
    codes = {e.case_id: e.code for e in excluded}
    assert codes == {
        "case001": "invalid_nifti", "orphan": "invalid_nifti", "small": "geometry_mismatch",
    }  # fmt: skip


# --------------------------------------------------------------------------- splits


def test_same_seed_same_splits_and_fractions_respected() -> None:
    cases = {f"case{i:03d}": None for i in range(50)}
    first = assign_splits(cases, seed=7, fractions=FRACTIONS)
    assert first == assign_splits(dict(reversed(cases.items())), seed=7, fractions=FRACTIONS)
    assert assign_splits(cases, seed=8, fractions=FRACTIONS) != first
    counts = {name: list(first.values()).count(name) for name in ("train", "val", "test")}
    assert counts == {"train": 30, "val": 10, "test": 10}


def test_layout_splits_are_honoured_and_the_rest_drawn() -> None:
    given = {"a": "train", "b": "val", "c": "test", "d": None, "e": "other", "f": None}
    splits = assign_splits(given, seed=0, fractions={"train": 0.5, "val": 0.5, "test": 0.0})
    assert {k: splits[k] for k in "abc"} == {"a": "train", "b": "val", "c": "test"}
    drawn = sorted(splits[k] for k in "def")
    assert drawn in (["train", "train", "val"], ["train", "val", "val"])


def test_small_datasets_keep_a_training_case() -> None:
    assert assign_splits({"a": None}, seed=0, fractions=FRACTIONS) == {"a": "train"}
    two = assign_splits({"a": None, "b": None}, seed=0, fractions=FRACTIONS)
    assert sorted(two.values()) == ["train", "val"]


@pytest.mark.parametrize("value", ["0.8,0.1", "0.5,0.6,-0.1", "0.5,0.2,0.2", "0,0.5,0.5", "a,b,c"])
def test_bad_fractions_are_refused(value: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_fractions(value)


def test_fractions_parse_from_text_and_mapping() -> None:
    assert parse_fractions("0.7,0.2,0.1") == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert parse_fractions({"train": 0.9, "val": 0.1}) == {"train": 0.9, "val": 0.1, "test": 0.0}


# --------------------------------------------------------------------------- summary and scan


def test_summary_counts_classes_and_distributions() -> None:
    scan = ScanResult(
        cases=[
            CaseStats("a", (1.0, 1.0, 2.0), (100, 100, 50), (22, 23)),
            CaseStats("b", (0.5, 0.5, 1.0), (200, 200, 90), (23, 26)),
            CaseStats("c", (1.5, 1.5, 3.0), (80, 80, 40), (1,)),
        ],
        excluded=[ExcludedEntry("d", "geometry_mismatch", "d: off grid.")],
    )
    summary = summarize(scan, {"a": "train", "b": "train", "c": "val"})
    assert summary["cases"] == 3 and summary["excluded_cases"] == 1
    assert summary["excluded"] == [
        {"case_id": "d", "code": "geometry_mismatch", "reason": "d: off grid."}
    ]
    assert summary["classes_present"] == {"C1": 1, "L3": 1, "L4": 2, "sacrum": 1}
    assert list(summary["classes_present"]) == ["C1", "L3", "L4", "sacrum"]  # head to feet
    assert summary["spacing_mm"]["z"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert summary["size_voxels"]["x"] == {"min": 80, "median": 100, "max": 200}
    assert summary["splits"] == {"train": 2, "val": 1, "test": 0}


def test_scan_reports_bad_cases_and_keeps_meta_csv_splits(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_totalsegmentator(
        tmp_path, [*phantoms, phantoms[0]], splits=["test", "val", "train", "train"]
    )
    off = Volume(np.ones((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off, tmp_path / "s0001/segmentations/sacrum.nii.gz")
    empty = read_nifti(tmp_path / "s0003/ct.nii.gz")
    for mask in (tmp_path / "s0003/segmentations").glob("*.nii.gz"):
        write_nifti(empty.with_array(np.zeros(empty.shape, dtype=np.uint8)), mask)
    scan = scan_folder(tmp_path, "totalsegmentator")
    assert [c.case_id for c in scan.cases] == ["s0000", "s0002"]
    assert scan.layout_splits == {"s0000": "test", "s0002": "train"}
    reasons = {e.case_id: (e.code, e.reason) for e in scan.excluded}
    assert reasons["s0001"][0] == "geometry_mismatch" and "sacrum.nii.gz" in reasons["s0001"][1]
    assert reasons["s0003"] == ("invalid_input", "s0003: no vertebra is labelled.")
    assert scan.cases[0].label_ids == tuple(sorted(np.unique(phantoms[0].labels.array)[1:]))
    assert scan.cases[0].spacing_mm == (4.0, 4.0, 4.0)


def test_registered_split_uses_stored_splits_and_holds_test_out(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    write_plain(tmp_path, phantoms)
    stored = {"case000": "val", "case001": "test", "case002": "train", "gone": "train"}
    data = registered_split(tmp_path, "plain", stored, name="demo")
    assert [s.case_id for s in data.train] == ["case002"]
    assert [s.case_id for s in data.val] == ["case000"]
    assert [e.case_id for e in data.excluded] == ["gone"]
    assert "1 test held out" in data.description


def test_a_registered_plain_dataset_becomes_an_nnunet_raw_dataset(
    tmp_path: Path, phantoms: list[Phantom]
) -> None:
    """nnU-Net trains on what the stored splits give it (its train cases, plain layout)."""
    write_plain(
        tmp_path / "plain", phantoms, values=labels.FROM_CANONICAL[labels.Scheme.TOTALSEG_V2]
    )
    stored = {"case000": "train", "case001": "train", "case002": "test"}
    data = registered_split(tmp_path / "plain", "plain", stored)
    ids = sorted({int(v) for p in phantoms for v in np.unique(p.labels.array) if v})
    raw = write_raw_dataset(data.train, tmp_path / "raw", dataset_id=7, canonical_ids=ids)
    assert raw.cases == {"case0000": "case000", "case0001": "case001"}
    written = read_nifti(raw.folder / "labelsTr" / "case0000.nii.gz").array
    assert set(np.unique(written).tolist()) == set(range(len(ids) + 1))
