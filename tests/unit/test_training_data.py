"""Bad datasets: every kind of bad case is excluded with its reason and code, per case; nothing
usable left is one clear error that lists them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinecloud_shared import labels
from spinecloud_shared.errors import InvalidInputError
from spinecloud_shared.layouts import write_totalsegmentator, write_verse
from spinecloud_shared.nifti import write_nifti
from spinecloud_shared.phantom import Phantom, PhantomSpec, generate_phantom
from spinecloud_shared.volume import Volume
from spinecloud_training.data import (
    DEFAULT_CHANNELS,
    CaseSource,
    DataSplit,
    layout_split,
    load_cases,
)
from spinecloud_training.nnunet.raw_dataset import write_raw_dataset
from spinecloud_training.presets import DEMO
from spinecloud_training.segresnet import TrainRequest, train_segresnet

PRESET = DEMO.with_overrides(spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32))


def _phantom(seed: int) -> Phantom:
    spec = PhantomSpec(seed=seed, levels=("L4", "sacrum"), spacing_mm=(4.0,) * 3)
    return generate_phantom(spec)


def _with_t13(phantom: Phantom) -> tuple[Volume, Volume]:
    array = phantom.labels.array.copy()
    array[array == labels.by_name("L4").id] = labels.by_name("T13").id
    return phantom.ct, phantom.labels.with_array(array)


def test_verse_masks_without_ct_and_subjects_without_scan_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "verse"
    write_verse(root, [_phantom(0), _phantom(1), _phantom(2)], splits=["train", "train", "val"])
    (ct_path,) = (root / "rawdata").glob("sub-*001/*_ct.nii.gz")
    ct_path.unlink()
    data = layout_split(root)
    reasons = {e.case_id: e.reason for e in data.excluded}
    stem = ct_path.name.removesuffix("_ct.nii.gz")
    assert "the mask has no CT" in reasons[stem]
    assert "no CT scan" in reasons[ct_path.parent.name]
    assert len(data.train) + len(data.val) == 2


def test_labels_outside_the_declared_classes_exclude_the_case() -> None:
    good, odd = _phantom(0), _phantom(1)
    sources = [
        CaseSource("good", lambda: (good.ct, good.labels)),
        CaseSource("t13", lambda: _with_t13(odd)),
    ]
    result = load_cases(sources, PRESET, DEFAULT_CHANNELS)
    assert [c.case_id for c in result.cases] == ["good"]
    (excluded,) = result.excluded
    assert excluded.code == "invalid_labels" and "T13" in excluded.reason


def test_a_loader_that_raises_anything_is_excluded_not_fatal() -> None:
    def broken() -> tuple[Volume, Volume]:
        raise EOFError("truncated")

    good = _phantom(0)
    sources = [CaseSource("broken", broken), CaseSource("good", lambda: (good.ct, good.labels))]
    result = load_cases(sources, PRESET, DEFAULT_CHANNELS)
    assert [c.case_id for c in result.cases] == ["good"]
    assert "EOFError" in result.excluded[0].reason


def test_nothing_usable_fails_with_every_reason(tmp_path: Path) -> None:
    root = tmp_path / "totalseg"
    write_totalsegmentator(root, [_phantom(0), _phantom(1)])
    (root / "s0000" / "ct.nii.gz").write_bytes(b"not a nifti file")
    off_grid = Volume(np.ones((5, 6, 7), dtype=np.uint8), np.diag([4.0, 4.0, 4.0, 1.0]))
    write_nifti(off_grid, root / "s0001/segmentations/sacrum.nii.gz")
    data = layout_split(root)
    request = TrainRequest(preset=PRESET, data=data, output_dir=tmp_path / "out")
    with pytest.raises(InvalidInputError) as caught:
        train_segresnet(request)
    excluded = {e["case_id"]: e["code"] for e in caught.value.details["excluded"]}
    assert excluded == {"s0000": "invalid_nifti", "s0001": "geometry_mismatch"}


def test_raw_dataset_excludes_labels_outside_its_table(tmp_path: Path) -> None:
    good, odd = _phantom(0), _phantom(1)
    sources = [
        CaseSource("good", lambda: (good.ct, good.labels)),
        CaseSource("t13", lambda: _with_t13(odd)),
    ]
    raw = write_raw_dataset(sources, tmp_path, dataset_id=9, canonical_ids=list(good.level_ids))
    assert list(raw.cases.values()) == ["good"]
    assert raw.excluded[0].code == "invalid_labels"
    with pytest.raises(InvalidInputError) as caught:
        write_raw_dataset(sources[1:], tmp_path, dataset_id=10, canonical_ids=[23, 24])
    assert caught.value.details["excluded"][0]["case_id"] == "t13"


def test_empty_split_description() -> None:
    data = DataSplit(description="nothing", train=[], val=[])
    with pytest.raises(InvalidInputError, match="training split is empty"):
        train_segresnet(TrainRequest(preset=PRESET, data=data, output_dir=Path("/nonexistent")))
