"""Per-class centres of mass measured inside bounding boxes equal scipy's whole-volume ones."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from spinecloud_shared.centroids import voxel_centres


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(1, 26))
def test_voxel_centres_match_scipy(seed: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 24, size=3))
    label_map = np.zeros(shape, np.uint8)
    for label in rng.choice(np.arange(1, 27), size=classes, replace=False):
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a, n)) + 1 for a, n in zip(lo, shape, strict=True)]
        block = label_map[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        block[rng.random(block.shape) < 0.6] = label
    present = [int(v) for v in np.unique(label_map) if v]
    expected = ndimage.center_of_mass(np.ones(shape), label_map, present) if present else []
    centres = voxel_centres(label_map)
    assert sorted(centres) == present
    for label, centre in zip(present, expected, strict=True):
        np.testing.assert_allclose(centres[label], centre, atol=1e-9)


def test_voxel_centres_of_an_empty_map() -> None:
    assert voxel_centres(np.zeros((4, 5, 6), np.uint8)) == {}
