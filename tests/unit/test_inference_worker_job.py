"""Pure parts of the inference worker job: stage timings and the SEG's DICOMweb path."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from spinecloud_inference.pipeline import SegmentationResult
from spinecloud_inference.worker_job import Timer, dicomweb_path


def test_timer_records_stages_and_pipeline_timings() -> None:
    timer = Timer()
    with timer.stage("fetch"):
        pass
    result = cast(
        SegmentationResult,
        SimpleNamespace(timings_s={"preprocess": 0.5, "forward": 1.25, "total": 9.0}),
    )
    timer.add_pipeline(result)
    assert set(timer.seconds) == {"fetch_s", "preprocess_s", "forward_s"}
    assert timer.seconds["forward_s"] == 1.25 and timer.seconds["fetch_s"] >= 0.0


def test_timer_records_a_stage_that_raised() -> None:
    timer = Timer()
    try:
        with timer.stage("store"):
            raise RuntimeError
    except RuntimeError:
        pass
    seconds: dict[str, Any] = timer.seconds
    assert "store_s" in seconds


def test_dicomweb_path() -> None:
    assert dicomweb_path("1.2", "1.2.3", "1.2.3.4") == (
        "/studies/1.2/series/1.2.3/instances/1.2.3.4"
    )
