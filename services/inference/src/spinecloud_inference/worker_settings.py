"""Settings of the inference worker process, read from ``SPINECLOUD_INFERENCE_*`` variables.

They complement the platform's ``spinecloud_shared.settings`` with what only the inference
worker needs:

- ``SPINECLOUD_INFERENCE_NNUNET_PROCESSES`` (default 1): nnU-Net's ``nnUNet_def_n_proc``, the
  size of its process pools and the cap on torch threads during its forward pass. nnU-Net reads
  the variable once, when ``nnunetv2`` is first imported, and otherwise defaults to 8 processes,
  too many for a small CPU worker that already runs one job at a time. The worker exports it
  at start-up (``configure_nnunet_environment``); raise it on a many-core CPU worker.
- ``SPINECLOUD_INFERENCE_RETRY_MAX`` (default 5), ``SPINECLOUD_INFERENCE_RETRY_BASE_S`` (2 s)
  and ``SPINECLOUD_INFERENCE_RETRY_MAX_DELAY_S`` (300 s): how a job that met a transient fault
  (Orthanc down or answering 5xx) is retried: after ``base * 2**n`` seconds, capped, at most
  ``max`` times; then it fails with ``upstream_unavailable``.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from spinecloud_shared.jobs import RetryPolicy

__all__ = [
    "NNUNET_PROCESSES_ENV",
    "InferenceWorkerSettings",
    "configure_nnunet_environment",
    "get_worker_settings",
]

#: The variable nnU-Net v2 reads (``nnunetv2.configuration.default_num_processes``).
NNUNET_PROCESSES_ENV = "nnUNet_def_n_proc"


class InferenceWorkerSettings(BaseSettings):
    """What the inference worker reads from its environment (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="SPINECLOUD_INFERENCE_", extra="ignore")

    nnunet_processes: int = Field(default=1, ge=1, description="nnU-Net's nnUNet_def_n_proc")
    retry_max: int = Field(default=5, ge=0, description="Retries of a transient failure")
    retry_base_s: float = Field(default=2.0, gt=0, description="First retry delay (seconds)")
    retry_max_delay_s: float = Field(default=300.0, gt=0, description="Longest retry delay")

    def retry_policy(self) -> RetryPolicy:
        """The job retry policy these settings describe."""
        return RetryPolicy(
            max_retries=self.retry_max, base_s=self.retry_base_s, max_delay_s=self.retry_max_delay_s
        )


@lru_cache(maxsize=1)
def get_worker_settings() -> InferenceWorkerSettings:
    """The worker's settings, read once from the environment."""
    return InferenceWorkerSettings()


def configure_nnunet_environment(settings: InferenceWorkerSettings | None = None) -> None:
    """Export ``nnUNet_def_n_proc`` from the settings, before nnunetv2 is first imported.

    An ``nnUNet_def_n_proc`` already in the environment is left as it is (an operator who set
    nnU-Net's own variable meant it). Called when the task module is imported, i.e. when the
    worker starts, and again before an nnU-Net model is loaded; it is idempotent.
    """
    settings = settings or get_worker_settings()
    os.environ.setdefault(NNUNET_PROCESSES_ENV, str(settings.nnunet_processes))
