"""Registered datasets: where the cases are, what a scan found in them, and their splits.

A ``Dataset`` is registered in one step (the row, status ``queued``) and scanned in another
(the training worker's ``spinecloud.training.register_dataset`` task, or the CLI in-process):
every case is read and validated, ``summary`` and ``splits`` are written and the status becomes
``succeeded`` (ready to train on) or ``failed`` with a code and a sentence. A scan can take
minutes on a real dataset, hence the job columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from spinecloud_shared.db.base import Base, TimestampMixin, UUIDPrimaryKeyMixin
from spinecloud_shared.db.models.common import JobMixin

__all__ = ["Dataset"]


class Dataset(UUIDPrimaryKeyMixin, TimestampMixin, JobMixin, Base):
    """One registered dataset (see the module doc); names are unique across the site."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: The project whose members see the dataset; NULL: unassigned (admins only).
    project_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    #: ``totalsegmentator``, ``verse``, ``plain`` or ``orthanc`` (corrected SEGs in Orthanc).
    layout: Mapped[str] = mapped_column(String(32))
    #: ``{"path": folder}`` or ``{"orthanc": {"study_uids": [...] | null}}``.
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The folder the cases are read from (for ``orthanc``: the folder the scan wrote).
    root: Mapped[str | None] = mapped_column(Text)
    #: Seed and fractions of the splits drawn for cases the layout gives no split.
    seed: Mapped[int] = mapped_column(Integer, default=0)
    split_fractions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Cases, excluded cases with reasons, classes present, spacing and size distribution.
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Case id -> ``train``, ``val`` or ``test`` (usable cases only).
    splits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(255))
