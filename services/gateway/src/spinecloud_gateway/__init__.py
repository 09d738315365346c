"""SpineCloud gateway: the only entry point for people and programs.

Planned here (the gateway issue): REST API for jobs, studies, models, datasets, trainings and
reports; the authenticated DICOMweb proxy in front of Orthanc; study arrival from Orthanc.
Nothing is implemented yet; the package exists so the layout, packaging and dependency
direction (no torch in this image) are fixed from the start.
"""
