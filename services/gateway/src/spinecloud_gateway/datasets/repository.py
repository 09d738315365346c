"""Dataset queries (the rules live in ``spinecloud_shared.db.datasets``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_shared.db.datasets import find_dataset, list_datasets
from spinecloud_shared.db.models import Dataset

__all__ = ["search", "visible"]


def search(session: Session, principal: Principal, *, limit: int, offset: int) -> Sequence[Dataset]:
    """The datasets of the caller's projects, newest first."""
    return list_datasets(session, project_ids=principal.project_ids, limit=limit, offset=offset)


def visible(session: Session, principal: Principal, ref: str) -> Dataset | None:
    """The dataset with this id or name if the caller's projects include it."""
    dataset = find_dataset(session, ref)
    if dataset is None or not principal.sees_project(dataset.project_id):
        return None
    return dataset
