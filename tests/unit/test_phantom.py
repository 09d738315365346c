"""The procedural spine phantom: determinism, exact labels, plausible anatomy and HU, geometry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spinecloud_shared import labels
from spinecloud_shared.centroids import centroids_from_labels
from spinecloud_shared.phantom import SPINE, Phantom, PhantomSpec, Tissue, generate_phantom

FAST = {"spacing_mm": (2.0, 2.0, 2.0)}


def _phantom(**kwargs: object) -> Phantom:
    return generate_phantom(PhantomSpec(**{**FAST, **kwargs}))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def lumbar() -> Phantom:
    return _phantom(seed=11, levels=("T11", "sacrum"))


@pytest.fixture(scope="module")
def whole_spine() -> Phantom:
    return _phantom(seed=5, levels=("C1", "L5"), spacing_mm=(2.5, 2.5, 2.5))


def test_same_seed_gives_identical_arrays() -> None:
    a = _phantom(seed=3, levels=("T12", "L2"))
    b = _phantom(seed=3, levels=("T12", "L2"))
    assert np.array_equal(a.ct.array, b.ct.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert np.array_equal(a.ct.affine_ras, b.ct.affine_ras)


def test_different_seeds_give_different_phantoms() -> None:
    a = _phantom(seed=3, levels=("T12", "L2"))
    b = _phantom(seed=4, levels=("T12", "L2"))
    same = a.ct.shape == b.ct.shape and np.array_equal(a.ct.array, b.ct.array)
    assert not same


def test_types_and_grid(lumbar: Phantom) -> None:
    assert lumbar.ct.array.dtype == np.int16
    assert lumbar.labels.array.dtype == np.uint8
    assert lumbar.ct.same_grid(lumbar.labels)
    assert lumbar.ct.same_grid(lumbar.tissues)
    assert lumbar.ct.spacing_mm == pytest.approx((2.0, 2.0, 2.0))


def test_label_map_holds_only_canonical_ids(lumbar: Phantom) -> None:
    present = set(np.unique(lumbar.labels.array).tolist())
    assert present <= {0, *labels.STANDARD_IDS}
    labels.check_canonical(lumbar.labels.array)


def test_requested_levels_are_all_present(lumbar: Phantom) -> None:
    wanted = [labels.by_name(n).id for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")]
    assert set(wanted) | {26} <= set(lumbar.level_ids)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_levels_are_contiguous_and_run_head_to_feet(seed: int) -> None:
    phantom = _phantom(seed=seed, spacing_mm=(4.0, 4.0, 4.0), blur_mm=0.0)
    assert set(np.unique(phantom.labels.array).tolist()) <= {0, *labels.STANDARD_IDS}
    spine_ids = [v.id for v in SPINE]
    positions = [spine_ids.index(i) for i in phantom.level_ids]
    assert positions == list(range(positions[0], positions[0] + len(positions)))
    z = [phantom.centroids[i][2] for i in phantom.level_ids]
    assert all(upper > lower for upper, lower in itertools.pairwise(z))


def test_default_run_length_is_honoured() -> None:
    phantom = _phantom(seed=9, run_length=(5, 5), margin_mm=0.0, spacing_mm=(3.0, 3.0, 3.0))
    # The margin is zero, but sloping processes of a neighbour may still reach into the FOV.
    assert 5 <= len(phantom.level_ids) <= 7


def test_hu_order_of_tissues(lumbar: Phantom) -> None:
    ct, tissues = lumbar.ct.array, lumbar.tissues.array
    mean = {t: float(ct[tissues == t].mean()) for t in Tissue if np.any(tissues == t)}
    assert mean[Tissue.CORTICAL] > mean[Tissue.CANCELLOUS] > mean[Tissue.DISC]
    assert mean[Tissue.CANCELLOUS] > mean[Tissue.SOFT] > mean[Tissue.FAT] > mean[Tissue.AIR]
    assert 600 < mean[Tissue.CORTICAL] < 1100
    assert 120 < mean[Tissue.CANCELLOUS] < 320
    assert -150 < mean[Tissue.FAT] < -60
    assert mean[Tissue.AIR] < -950


def test_bone_is_exactly_the_labelled_voxels(lumbar: Phantom) -> None:
    bone = np.isin(lumbar.tissues.array, [Tissue.CORTICAL, Tissue.CANCELLOUS])
    assert np.array_equal(bone, lumbar.labels.array > 0)
    assert float(lumbar.ct.array[bone].mean()) > 200


def test_discs_exist_between_bodies_and_are_not_labelled(lumbar: Phantom) -> None:
    disc = lumbar.tissues.array == Tissue.DISC
    assert disc.sum() > 100
    assert not np.any(lumbar.labels.array[disc])
    assert 60 < float(lumbar.ct.array[disc].mean()) < 120


def test_lungs_appear_in_the_thorax_only() -> None:
    thorax = _phantom(seed=2, levels=("T4", "T7"))
    pelvis = _phantom(seed=2, levels=("L4", "sacrum"))
    assert np.any(thorax.tissues.array == Tissue.LUNG)
    assert not np.any(pelvis.tissues.array == Tissue.LUNG)
    assert float(thorax.ct.array[thorax.tissues.array == Tissue.LUNG].mean()) < -750


def test_vertebrae_grow_from_cervical_to_lumbar(whole_spine: Phantom) -> None:
    voxels = {i: int(np.count_nonzero(whole_spine.labels.array == i)) for i in labels.ALL_IDS}

    def region_mean(region: labels.Region) -> float:
        return float(np.mean([voxels[i] for i in labels.ids_in_region(region)]))

    cervical = region_mean(labels.Region.CERVICAL)
    thoracic = region_mean(labels.Region.THORACIC)
    lumbar = region_mean(labels.Region.LUMBAR)
    assert cervical < thoracic < lumbar
    assert voxels[3] < voxels[8] < voxels[19] < voxels[24]  # C3 < T1 < T12 < L5


@pytest.mark.parametrize(
    ("orientation", "spacing"),
    [("LPS", (1.5, 2.0, 2.5)), ("PIR", (2.0, 2.5, 1.5)), ("ASL", (2.0, 2.5, 1.5))],
)
def test_orientation_keeps_world_geometry(
    orientation: str, spacing: tuple[float, float, float]
) -> None:
    ras = _phantom(seed=21, levels=("L3", "L5"), spacing_mm=(1.5, 2.0, 2.5))
    other = _phantom(seed=21, levels=("L3", "L5"), spacing_mm=spacing, orientation=orientation)
    assert other.ct.orientation == orientation
    assert other.ct.spacing_mm == pytest.approx(spacing)
    back_ct, back_labels = other.ct.reoriented("RAS"), other.labels.reoriented("RAS")
    assert np.allclose(back_ct.affine_ras, ras.ct.affine_ras, atol=1e-9)
    assert np.array_equal(back_ct.array, ras.ct.array)
    assert np.array_equal(back_labels.array, ras.labels.array)
    for label, centre in ras.centroids.items():
        assert np.allclose(other.centroids[label], centre, atol=1e-6)


@pytest.mark.parametrize("orientation", ["RAS", "LPI"])
def test_centroids_are_the_label_centres_of_mass(orientation: str) -> None:
    phantom = _phantom(seed=8, levels=("T8", "T10"), orientation=orientation)
    expected = centroids_from_labels(phantom.labels)
    assert set(phantom.centroids) == set(expected)
    for label, centre in expected.items():
        assert np.allclose(phantom.centroids[label], centre, atol=1e-6)


def test_same_seed_is_the_same_patient_for_another_field_of_view() -> None:
    wide = _phantom(seed=13, levels=("L1", "L5"))
    narrow = _phantom(seed=13, levels=("L2", "L3"), margin_mm=0.0)
    for label in (21, 22):  # L2, L3 lie wholly in both fields of view
        assert np.allclose(wide.centroids[label], narrow.centroids[label], atol=1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"orientation": "RAX"},
        {"orientation": "RRS"},
        {"levels": ("L5", "L1")},
        {"levels": ("L6", "sacrum")},
        {"spacing_mm": (1.0, 0.0, 1.0)},
        {"run_length": (0, 3)},
        {"noise_hu": -1.0},
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PhantomSpec(**kwargs)  # type: ignore[arg-type]
