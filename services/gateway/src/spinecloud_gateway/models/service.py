"""Registering, promoting and retiring model versions through the shared registry.

The rules (states, metrics needed, one production version per name) live in
``spinecloud_shared.db.registry``; this module adds what the API needs around them: the
artefact must lie in the site's storage, the version belongs to a project, and a caller may
not take a name's production slot from a project they do not see (model names are site-wide:
the production version of a name is what inference serves for it).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spinecloud_gateway.auth.principal import Principal
from spinecloud_gateway.core.errors import PermissionDeniedError
from spinecloud_gateway.models import repository
from spinecloud_gateway.models.schemas import ModelPromote, ModelRegister
from spinecloud_gateway.models.scoping import actor, site_path, site_roots, target_project
from spinecloud_gateway.settings import GatewaySettings
from spinecloud_shared.db import registry
from spinecloud_shared.db.models import RegisteredModel
from spinecloud_shared.errors import InvalidInputError
from spinecloud_shared.models.manifest import ModelState

__all__ = ["promote", "register", "retire"]


def register(
    session: Session, settings: GatewaySettings, principal: Principal, body: ModelRegister
) -> tuple[RegisteredModel, bool]:
    """The version in ``body.artifact_path``: (registered model, whether it is new).

    Registering the same folder again returns the existing version when the caller sees it;
    a version of another project is a conflict (its artefact is already registered).
    """
    folder = site_path(body.artifact_path, site_roots(settings), "artifact_path")
    project_id = target_project(session, principal, body.project_id, settings)
    known = set(
        session.scalars(
            select(RegisteredModel.id).where(RegisteredModel.artifact_uri == str(folder))
        )
    )
    try:
        try:
            with session.begin_nested():
                model = registry.register_model(
                    session, folder, registered_by=actor(principal), project_id=project_id
                )
        except IntegrityError:  # registered concurrently: the second call finds that row
            model = registry.register_model(session, folder, registered_by=actor(principal))
    except OSError as exc:
        raise InvalidInputError(f"The artefact at {folder} cannot be read ({exc}).") from exc
    created = model.id not in known
    if not created and not principal.sees_project(model.project_id):
        raise registry.RegistryConflictError(
            f"Model {model.name}@{model.version} is already registered by another project.",
            model=f"{model.name}@{model.version}",
        )
    return model, created


def promote(
    session: Session, principal: Principal, model: RegisteredModel, body: ModelPromote
) -> RegisteredModel:
    """Move ``model`` to ``body.to`` under the registry's rules (409 ``registry_conflict``)."""
    if body.to is ModelState.PRODUCTION:
        current = repository.production_elsewhere(session, model.name, principal.project_ids)
        if current is not None:
            raise PermissionDeniedError(
                f"The production version of {model.name} belongs to another project; an "
                "admin of both projects must promote this one."
            )
    return registry.promote(
        session, model.name, model.version, to=body.to, by=actor(principal), reason=body.reason
    )


def retire(
    session: Session, principal: Principal, model: RegisteredModel, reason: str | None
) -> RegisteredModel:
    """Retire ``model`` for good (a production version leaves production)."""
    return registry.retire(session, model.name, model.version, by=actor(principal), reason=reason)
