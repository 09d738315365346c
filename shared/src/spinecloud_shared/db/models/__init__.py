"""Every ORM model, imported here so that ``Base.metadata`` is complete for Alembic."""

from spinecloud_shared.db.models.audit import AuditEvent
from spinecloud_shared.db.models.auth import ApiToken, Membership, Project, Role, User
from spinecloud_shared.db.models.common import FINISHED_STATUSES, JobMixin, JobStatus
from spinecloud_shared.db.models.dataset import Dataset
from spinecloud_shared.db.models.evaluation import Evaluation, EvaluationRow
from spinecloud_shared.db.models.job import InferenceJob
from spinecloud_shared.db.models.study import OrthancCursor, Series, Study
from spinecloud_shared.db.models.training import RegisteredModel, TrainingJob

__all__ = [
    "FINISHED_STATUSES",
    "ApiToken",
    "AuditEvent",
    "Dataset",
    "Evaluation",
    "EvaluationRow",
    "InferenceJob",
    "JobMixin",
    "JobStatus",
    "Membership",
    "OrthancCursor",
    "Project",
    "RegisteredModel",
    "Role",
    "Series",
    "Study",
    "TrainingJob",
    "User",
]
