"""The gateway's correction trigger: which stable studies ask the training worker to count."""

from __future__ import annotations

from spinecloud_gateway.studies.corrections import holds_foreign_seg
from spinecloud_gateway.studies.orthanc import SeriesInfo, StudyInfo


def _study(*series: tuple[str, str | None]) -> StudyInfo:
    return StudyInfo(
        orthanc_id="s",
        study_instance_uid="1.2.3",
        description=None,
        series=[
            SeriesInfo(f"o{i}", f"1.2.3.{i}", modality, 1, None, None, i, manufacturer)
            for i, (modality, manufacturer) in enumerate(series)
        ],
    )


def test_only_a_seg_that_spinecloud_did_not_write_asks_for_the_check() -> None:
    assert not holds_foreign_seg(_study(("CT", "Siemens")))
    assert not holds_foreign_seg(_study(("CT", "SpineCloud"), ("SEG", "SpineCloud")))
    assert not holds_foreign_seg(_study(("SEG", " SpineCloud ")))
    assert holds_foreign_seg(_study(("CT", None), ("SEG", "SpineCloud"), ("SEG", "OHIF")))
    assert holds_foreign_seg(_study(("seg", None)))
