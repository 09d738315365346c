"""The ``spinecloud`` command line: shared commands plus each installed service's sub-app."""
