"""SpineCloud's Alembic environment, packaged so that images can migrate without alembic.ini."""
