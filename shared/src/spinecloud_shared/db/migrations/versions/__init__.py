"""Alembic revisions (file names start with a letter so that they stay importable modules)."""
