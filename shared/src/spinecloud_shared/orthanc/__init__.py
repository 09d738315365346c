"""Orthanc: a REST client wrapper (pyorthanc) and a launcher for a local Orthanc process."""
