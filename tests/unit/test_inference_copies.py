"""The row-by-row frame copies equal the plain transposed copies they replace."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from spinecloud_shared.dicom_series import array_to_frames, frames_to_array


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 4, 6), (3, 1, 2), (4, 6, 1)])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_frames_to_array_and_back(shape: tuple[int, int, int], dtype: type) -> None:
    frames: npt.NDArray[Any] = (np.random.default_rng(0).random(shape) * 100).astype(dtype)
    array = frames_to_array(frames)
    assert array.flags.c_contiguous and array.dtype == frames.dtype
    assert np.array_equal(array, frames.transpose(2, 1, 0)[:, ::-1, :])
    back = array_to_frames(array)
    assert back.flags.c_contiguous and np.array_equal(back, frames)


def test_views_are_copied_not_aliased() -> None:
    base = np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10)
    view = base[:, ::2, ::-1]
    array = frames_to_array(view)
    assert np.array_equal(array, view.transpose(2, 1, 0)[:, ::-1, :])
    array[0, 0, 0] = -1
    assert base.min() == 0
