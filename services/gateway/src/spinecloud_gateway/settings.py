"""Gateway settings: the shared ones plus OIDC, CORS, size limits, routing rules and poller.

Read from ``SPINECLOUD_`` environment variables (lists and rules as JSON). The object refuses
to be built with an unsafe combination, so a misconfigured gateway fails at start, not at the
first request.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, Field, field_validator, model_validator

from spinecloud_shared.settings import Settings

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_MODEL_VERSION", "GatewaySettings", "RoutingRule"]

#: The model the inference package ships (``default_models/spine-segresnet-demo/0.1.0``): jobs
#: that name no model get this one, so a fresh deployment segments without a model registry.
DEFAULT_MODEL_NAME = "spine-segresnet-demo"
DEFAULT_MODEL_VERSION = "0.1.0"


class RoutingRule(BaseModel):
    """Which arriving series a model segments: all given conditions must hold.

    Regular expressions are matched case-insensitively with ``re.search``; ``exclude_*``
    patterns veto a series (e.g. scouts, localizers, dose reports).
    """

    name: str = Field(min_length=1, max_length=100)
    model_name: str = Field(default=DEFAULT_MODEL_NAME, min_length=1, max_length=100)
    model_version: str = Field(default=DEFAULT_MODEL_VERSION, min_length=1, max_length=64)
    modality: str = "CT"
    min_slices: int = Field(default=20, ge=1)
    max_slices: int | None = Field(default=None, ge=1)
    body_part_regex: str | None = None
    description_regex: str | None = None
    exclude_description_regex: str | None = r"scout|localizer|topogram|dose"
    priority: int = Field(default=5, ge=0, le=9)
    #: Project that a study matched by this rule belongs to (by name); None: the default one.
    project: str | None = None

    @field_validator("body_part_regex", "description_regex", "exclude_description_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """Refuse a pattern that does not compile, at start-up rather than at arrival."""
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class GatewaySettings(Settings):
    """Everything the gateway process needs (``SPINECLOUD_*``)."""

    oidc_issuer: str | None = Field(default=None, description="Expected `iss` of user JWTs")
    oidc_audience: str | None = Field(default=None, description="Expected `aud` of user JWTs")
    oidc_jwks_url: str | None = Field(default=None, description="Where the signing keys are")
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    oidc_jwks_cache_s: int = Field(default=300, ge=0, description="How long keys are cached")
    oidc_leeway_s: int = Field(default=30, ge=0, description="Clock skew allowed on exp/nbf")
    viewer_origins: list[str] = Field(
        default_factory=list, description="Browser origins (the OHIF viewer) allowed by CORS"
    )
    max_request_bytes: int = Field(default=1 << 20, ge=1024, description="API body limit")
    max_stow_bytes: int = Field(default=4 << 30, ge=1024, description="STOW-RS body limit")
    routing_rules: list[RoutingRule] = Field(
        default_factory=lambda: [RoutingRule(name="ct-spine")],
        description="Which arriving series are segmented by which model (JSON list)",
    )
    default_project: str | None = Field(
        default=None, description="Project of arriving studies that no rule assigns"
    )
    migrate_on_startup: bool = True
    poller_enabled: bool = Field(default=False, description="Run the /changes poller loop")
    poller_interval_s: float = Field(default=10.0, gt=0)
    orthanc_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _safe(self) -> Self:
        """Refuse half-configured OIDC, and unsafe values outside development and tests."""
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url)
        if any(oidc) and not all(oidc):
            raise ValueError(
                "SPINECLOUD_OIDC_ISSUER, SPINECLOUD_OIDC_AUDIENCE and SPINECLOUD_OIDC_JWKS_URL "
                "must be set together"
            )
        unsupported = set(self.oidc_algorithms) - {"RS256", "ES256"}
        if unsupported:
            raise ValueError(f"unsupported OIDC algorithms {sorted(unsupported)}; RS256, ES256")
        if "*" in self.viewer_origins:
            raise ValueError("SPINECLOUD_VIEWER_ORIGINS must list origins, not '*'")
        if self.environment == "production":
            self._check_production()
        return self

    def _check_production(self) -> None:
        """Production needs a real database, a protected Orthanc and user authentication."""
        if self.database_url is None or self.database_url.startswith("sqlite"):
            raise ValueError("production needs SPINECLOUD_DATABASE_URL (PostgreSQL)")
        if self.orthanc_password is None:
            raise ValueError("production needs SPINECLOUD_ORTHANC_PASSWORD")
        if self.oidc_issuer is None:
            raise ValueError("production needs SPINECLOUD_OIDC_ISSUER/AUDIENCE/JWKS_URL")
        if self.oidc_jwks_url is not None and not self.oidc_jwks_url.startswith("https://"):
            raise ValueError("production needs an https:// SPINECLOUD_OIDC_JWKS_URL")
