"""Regular expressions that request parameters must match (checked before any query runs)."""

from __future__ import annotations

__all__ = ["MODEL_NAME_PATTERN", "UID_PATTERN"]

#: A DICOM UID: dot-separated numbers (at most 64 characters, checked with max_length).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
#: A model name as in model manifests.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
