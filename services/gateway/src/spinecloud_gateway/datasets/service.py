"""Registering a dataset: the row (project-scoped) and its scan, sent after the commit.

The row and the message come from ``spinecloud_shared.db.datasets.create_dataset`` (the
function the CLI uses); the message ``{"dataset_id": ...}`` goes by task name
(``spinecloud.training.register_dataset``) to the ``training`` queue, where the worker reads
every case and stores the summary and splits.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.datasets.schemas import DatasetCreate
from spinecloud_gateway.models.scoping import actor, site_path, site_roots, target_project
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db.datasets import create_dataset
from spinecloud_shared.db.models import Dataset

__all__ = ["register"]


def register(
    session: Session,
    settings: GatewaySettings,
    principal: Principal,
    body: DatasetCreate,
    celery: Celery,
) -> Dataset:
    """A queued dataset in the request's (or the caller's) project; 409 for a taken name.

    A folder must lie in the site's storage (``data_dir`` or ``artifact_dir``, 422 otherwise):
    the training worker reads whatever it is given, so a caller must not be able to point it at
    any folder the worker can read.
    """
    project_id = target_project(session, principal, body.project_id, settings)
    source = body.source()
    if body.path is not None:
        source["path"] = str(site_path(body.path, site_roots(settings), "dataset path"))
    return create_dataset(
        session,
        name=body.name,
        layout=body.layout,
        source=source,
        seed=body.seed,
        fractions=body.split.model_dump(),
        project_id=project_id,
        created_by=actor(principal),
        app=celery,
    )
