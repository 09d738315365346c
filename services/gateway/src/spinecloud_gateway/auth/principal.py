"""The authenticated caller: who (user or token), with which role, in which projects."""

from __future__ import annotations

from dataclasses import dataclass

from spinecloud_gateway.core.errors import PermissionDeniedError
from spinecloud_shared.db.models import Role

__all__ = ["HUMAN_ROLES", "Principal"]

#: Roles allowed to read patient data (studies, results, DICOMweb).
HUMAN_ROLES = frozenset({Role.CLINICIAN, Role.RESEARCHER, Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``project_ids`` None means every project (admin users, unscoped admin/service tokens).
    """

    actor_type: str  # "user" or "token"
    actor_id: str
    role: Role
    project_ids: frozenset[str] | None

    def sees_project(self, project_id: str | None) -> bool:
        """Whether data of ``project_id`` (None: unassigned) is visible to this caller."""
        if self.project_ids is None:
            return True
        return project_id is not None and project_id in self.project_ids

    def require(self, *roles: Role) -> None:
        """PermissionDeniedError unless the caller has one of ``roles``."""
        if self.role not in roles:
            allowed = ", ".join(sorted(roles))
            raise PermissionDeniedError(f"This operation needs one of the roles: {allowed}.")
