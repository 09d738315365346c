"""Clinicians' corrections arriving with a study: ask the training worker to count them.

A stable study that holds a SEG series not written by SpineCloud (its ``Manufacturer`` is not
SpineCloud's, the device identity of the inference worker's SEGs) may hold a correction. The
gateway does not judge it: it sends ``spinecloud.training.check_corrections`` by name after the
commit, and the training worker applies the full corrections rule, counts what each production
model has not used yet and starts a fine-tune at the threshold. Celery beat is not needed.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_gateway.studies.orthanc import SeriesInfo, StudyInfo
from spinecloud_shared.dicom_seg_read import SEG_MANUFACTURER
from spinecloud_shared.queue import enqueue_after_commit
from spinecloud_shared.task_names import CHECK_CORRECTIONS

__all__ = ["holds_foreign_seg", "request_correction_check"]


def _foreign_seg(series: SeriesInfo) -> bool:
    return (series.modality or "").upper() == "SEG" and (
        (series.manufacturer or "").strip() != SEG_MANUFACTURER
    )


def holds_foreign_seg(info: StudyInfo) -> bool:
    """Whether the study holds a SEG series that SpineCloud did not write."""
    return any(_foreign_seg(series) for series in info.series)


def request_correction_check(session: Session, info: StudyInfo, celery: Celery) -> bool:
    """Send the correction check after the commit when the study may hold a correction;
    whether it was requested."""
    if not holds_foreign_seg(info):
        return False
    reason = {"orthanc_study_id": info.orthanc_id}
    enqueue_after_commit(session, CHECK_CORRECTIONS, reason, app=celery)
    return True
