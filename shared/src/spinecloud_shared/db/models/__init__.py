"""Every ORM model, imported here so that ``Base.metadata`` is complete for Alembic."""

from spinecloud_shared.db.models.common import FINISHED_STATUSES, JobMixin, JobStatus
from spinecloud_shared.db.models.evaluation import Evaluation, EvaluationRow

__all__ = ["FINISHED_STATUSES", "Evaluation", "EvaluationRow", "JobMixin", "JobStatus"]
