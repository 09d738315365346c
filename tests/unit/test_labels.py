"""Canonical label scheme and converters."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spinecloud_shared import labels
from spinecloud_shared.errors import LabelError
from spinecloud_shared.nifti import read_nifti


def test_standard_classes_are_c1_to_l5_and_sacrum() -> None:
    names = [labels.by_id(i).name for i in labels.STANDARD_IDS]
    assert len(names) == 25
    assert names[0] == "C1" and names[6] == "C7" and names[7] == "T1" and names[18] == "T12"
    assert names[19:24] == ["L1", "L2", "L3", "L4", "L5"] and names[24] == "sacrum"
    assert labels.by_name("t13").id == 28 and labels.by_name("L6").id == 25


def test_snomed_codes_follow_the_design_card() -> None:
    expected = {
        "C1": "14806007",
        "C7": "87391001",
        "T1": "64864005",
        "T12": "23215003",
        "L1": "66794005",
        "L5": "49668003",
        "sacrum": "54735007",
    }
    for name, code in expected.items():
        assert labels.by_name(name).snomed_code == code
    assert labels.by_name("L6").snomed_code == labels.GENERIC_VERTEBRA_CODE[0]
    assert len({labels.by_id(i).snomed_code for i in labels.STANDARD_IDS}) == 25


def test_regions_and_order() -> None:
    assert labels.ids_in_region("cervical") == tuple(range(1, 8))
    assert labels.ids_in_region(labels.Region.THORACIC) == tuple(range(8, 20))
    assert labels.ids_in_region("lumbar") == tuple(range(20, 25))
    assert labels.ids_in_region("sacrum") == (26,)
    orders = [v.order for v in labels.VERTEBRAE]
    assert orders == sorted(orders)
    assert labels.by_name("T13").order == labels.by_name("T12").order + 1


def test_colours_are_distinct_between_neighbours() -> None:
    ordered = labels.VERTEBRAE
    for upper, lower in itertools.pairwise(ordered):
        distance = np.abs(np.subtract(upper.color_rgb, lower.color_rgb)).sum()
        assert distance > 30, (upper.name, lower.name)


@pytest.mark.parametrize(
    ("scheme", "source_id", "name"),
    [
        ("totalseg_v2", 50, "C1"),
        ("totalseg_v2", 44, "C7"),
        ("totalseg_v2", 43, "T1"),
        ("totalseg_v2", 32, "T12"),
        ("totalseg_v2", 31, "L1"),
        ("totalseg_v2", 27, "L5"),
        ("totalseg_v2", 25, "sacrum"),
        ("totalseg_v2", 26, "sacrum"),
        ("totalseg_v1", 41, "C1"),
        ("totalseg_v1", 35, "C7"),
        ("totalseg_v1", 34, "T1"),
        ("totalseg_v1", 23, "T12"),
        ("totalseg_v1", 22, "L1"),
        ("totalseg_v1", 18, "L5"),
        ("totalseg_v1", 92, "sacrum"),
    ],
)
def test_known_ids_map_onto_canonical(scheme: str, source_id: int, name: str) -> None:
    converted = labels.convert(np.array([[[source_id]]]), scheme)
    assert converted[0, 0, 0] == labels.by_name(name).id


def test_non_spine_ids_are_dropped() -> None:
    liver_v2, aorta_v2, big = 5, 52, 200
    converted = labels.convert(
        np.array([liver_v2, aorta_v2, big, 30]).reshape(1, 1, 4), "totalseg_v2"
    )
    assert converted.ravel().tolist() == [0, 0, 0, labels.by_name("L2").id]


@given(arrays(np.uint8, (3, 4, 5), elements=st.sampled_from([0, *labels.STANDARD_IDS])))
def test_canonical_round_trips_through_totalsegmentator(label_map: np.ndarray) -> None:
    for scheme in ("totalseg_v2", "totalseg_v1"):
        there = labels.convert(label_map, "canonical", scheme)
        back = labels.convert(there, scheme, "canonical")
        np.testing.assert_array_equal(back, label_map)


def test_bad_label_maps_are_refused() -> None:
    with pytest.raises(LabelError, match="NaN"):
        labels.convert(np.array([[[np.nan]]]), "totalseg_v2")
    with pytest.raises(LabelError, match="non-integer"):
        labels.convert(np.array([[[1.5]]]), "totalseg_v2")
    with pytest.raises(LabelError, match="negative"):
        labels.convert(np.array([[[-1]]]), "totalseg_v2")
    with pytest.raises(LabelError, match=r"\[27\]"):
        labels.check_canonical(np.array([[[27, 1]]]))
    with pytest.raises(LabelError, match="Unknown canonical"):
        labels.by_id(99)


def test_structure_masks_merge_and_split() -> None:
    label_map = np.zeros((4, 4, 6), dtype=np.uint8)
    label_map[..., 0] = labels.by_name("T12").id
    label_map[..., 2] = labels.by_name("L1").id
    label_map[..., 5] = labels.by_name("sacrum").id
    masks: dict[str, np.ndarray] = dict(labels.split_structure_masks(label_map))
    assert set(masks) == {labels.structure_name(i) for i in labels.STANDARD_IDS}
    masks["liver"] = np.ones_like(label_map)  # not spine: ignored
    np.testing.assert_array_equal(labels.merge_structure_masks(masks), label_map)
    s1 = np.zeros_like(label_map)
    s1[..., 4] = 1
    merged = labels.merge_structure_masks({**masks, "vertebrae_S1": s1})
    assert (merged[..., 4] == labels.by_name("sacrum").id).all()


@pytest.mark.realdata
def test_totalsegmentator_v2_round_trip_on_real_output(totalseg_example: Path) -> None:
    seg = read_nifti(totalseg_example / "example_seg.nii.gz").array
    canonical = labels.convert(seg, "totalseg_v2")
    present = {labels.by_id(int(i)).name for i in np.unique(canonical) if i}
    assert present == {"T11", "T12", "L1", "L2"}
    spine = np.isin(seg, list(labels.TO_CANONICAL[labels.Scheme.TOTALSEG_V2]))
    # Every vertebra voxel is kept, everything else (organs, vessels...) becomes background.
    assert np.array_equal(canonical > 0, spine)
    assert np.any(seg[~spine] > 0), "the example has non-spine structures to drop"
    back = labels.convert(canonical, "canonical", "totalseg_v2")
    np.testing.assert_array_equal(back[spine], seg[spine])
    assert not back[~spine].any()
