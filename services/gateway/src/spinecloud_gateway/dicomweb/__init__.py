"""The authenticated, project-scoped DICOMweb proxy in front of Orthanc."""
