"""Evaluations through the API: start, list, read, and the metrics service's tables and report."""
