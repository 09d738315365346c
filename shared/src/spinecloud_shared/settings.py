"""One settings object for every SpineCloud process.

All values come from environment variables prefixed ``SPINECLOUD_`` (or a ``.env`` file); the
embedded defaults make a single developer machine work offline: a SQLite database and an
artefact folder under ``./var``. Deployments set the PostgreSQL, Redis and Orthanc addresses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings shared by the gateway, the workers and the command line."""

    model_config = SettingsConfigDict(
        env_prefix="SPINECLOUD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: str = Field(default="development", description="development, test or production")
    data_dir: Path = Field(default=Path("var"), description="Root of the embedded defaults")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to a SQLite file under data_dir",
    )
    artifact_dir: Path | None = Field(
        default=None, description="Where models, outputs and reports are stored; data_dir/artifacts"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_username: str | None = None
    orthanc_password: SecretStr | None = None
    log_level: str = "INFO"

    # Fine-tuning from clinicians' corrections (``spinecloud_training.finetune_job``).
    finetune_threshold: int = Field(
        default=20,
        ge=0,
        description="Unused corrections of a production model that start a fine-tune; 0: never",
    )
    finetune_margin: float = Field(
        default=0.01,
        description="Mean Dice a fine-tuned version may lose on the held-out cases and still "
        "be registered (negative: it must gain at least that much)",
    )
    finetune_iterations: int = Field(default=60, ge=1, description="Fine-tuning optimiser steps")
    finetune_lr_factor: float = Field(
        default=0.1, gt=0, description="Parent's learning rate times this"
    )
    finetune_replay: int = Field(
        default=8, ge=0, description="Cases of the parent's original training data mixed in"
    )
    finetune_holdout: int = Field(
        default=4, ge=0, description="Held-out cases of the original data added to the check"
    )
    finetune_val_fraction: float = Field(
        default=0.25, ge=0, lt=1, description="Share of the corrections held out for the check"
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, falling back to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'spinecloud.sqlite3').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        """The artefact folder, falling back to data_dir/artifacts."""
        return self.artifact_dir if self.artifact_dir is not None else self.data_dir / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
