"""SpineCloud gateway: the only entry point for people and programs.

REST API for inference jobs and the audit log, an authenticated, project-scoped DICOMweb
proxy in front of Orthanc, and study arrival from Orthanc (Lua ``OnStableStudy`` call and a
``/changes`` poller). Build the application with :func:`spinecloud_gateway.app.create_app`.
"""
