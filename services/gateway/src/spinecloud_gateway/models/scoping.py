"""Project scoping and storage paths shared by the models, trainings and evaluations APIs.

* A new registered model, training job or evaluation belongs to one project: the one the
  request names, else the caller's only project, else (unscoped callers) the site's default
  project; NULL (unassigned) when there is none.
* A row of another project answers 404, as jobs and studies do.
* Paths the gateway itself opens (model artefacts) and folders it hands to workers must lie in
  the site's storage: ``data_dir`` or ``artifact_dir``, resolved (no ``..`` escapes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from spinecloud_gateway.api.state import GatewayState
from spinecloud_gateway.audit.service import ClientInfo
from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.auth.service import ensure_project
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db.base import Base
from spinecloud_shared.db.models import Project
from spinecloud_shared.errors import InvalidInputError, NotFoundError

__all__ = ["actor", "audit", "site_path", "site_roots", "target_project", "visible_row"]


class _Scoped(Protocol):
    id: str
    project_id: str | None


RowT = TypeVar("RowT", bound=Base)


def actor(principal: Principal) -> str:
    """Who did it, as stored in ``created_by`` / ``registered_by`` / ``promoted_by``."""
    return f"{principal.actor_type}:{principal.actor_id}"


def target_project(
    session: Session, principal: Principal, requested: str | None, settings: GatewaySettings
) -> str | None:
    """The project id a new row goes to (rules in the module docstring).

    NotFoundError for a project that does not exist or that the caller does not see;
    InvalidInputError when a caller of several projects names none.
    """
    if requested is not None:
        if not principal.sees_project(requested) or session.get(Project, requested) is None:
            raise NotFoundError("No such project.")
        return requested
    if principal.project_ids is None:
        name = settings.default_project
        return ensure_project(session, name).id if name else None
    if len(principal.project_ids) == 1:
        return next(iter(principal.project_ids))
    raise InvalidInputError("You are a member of several projects; give project_id.")


def visible_row(
    session: Session, kind: type[RowT], row_id: str, principal: Principal, what: str
) -> RowT:
    """The ``kind`` row ``row_id`` if the caller's projects include it; else NotFoundError."""
    row = session.get(kind, row_id)
    project_id = getattr(row, "project_id", None)
    if row is None or not principal.sees_project(project_id):
        raise NotFoundError(f"No such {what}.")
    return row


def site_roots(settings: GatewaySettings) -> tuple[Path, ...]:
    """The folders of the site's storage: ``data_dir`` and ``artifact_dir``, resolved."""
    return tuple(p.resolve() for p in (settings.data_dir, settings.resolved_artifact_dir))


def site_path(value: str, roots: tuple[Path, ...], what: str) -> Path:
    """``value`` resolved, if it is an absolute path inside one of ``roots``.

    InvalidInputError otherwise (relative, unresolvable, or outside the site's storage).
    """
    if not value.startswith("/"):
        raise InvalidInputError(f"The {what} must be an absolute path.")
    try:
        path = Path(value).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"The {what} is not a usable path.") from exc
    if not any(path == root or path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InvalidInputError(f"The {what} must lie in the site's storage ({allowed}).")
    return path


def audit(
    state: GatewayState,
    principal: Principal,
    client: ClientInfo,
    action: str,
    row: _Scoped | None,
    outcome: str = "success",
    resource_id: str | None = None,
    *,
    resource_type: str,
) -> None:
    """Record one access to ``row`` (or to the missing ``resource_id``) in the audit log.

    Each router binds its ``resource_type`` once (``functools.partial``).
    """
    state.audit.record(
        principal=principal,
        client=client,
        action=action,
        resource_type=resource_type,
        resource_id=row.id if row is not None else resource_id,
        outcome=outcome,
        project_id=row.project_id if row is not None else None,
    )
