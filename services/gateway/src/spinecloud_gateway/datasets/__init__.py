"""Registered datasets: registration (the scan runs on the training worker), listing, reading."""
