"""The model registry through the API: list, read, register, promote and retire versions.

``scoping`` also holds what trainings and evaluations share with it: the project a new row
belongs to, the visible row by id, paths inside the site's storage and audit events.
"""
