"""Inference jobs: creation (idempotent), listing, cancel and retry."""
