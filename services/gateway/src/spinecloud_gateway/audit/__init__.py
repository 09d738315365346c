"""The audit log of patient-data access."""
