"""SpineCloud common library.

Every service imports this package and never another service. It holds what all of them agree
on: settings, the error hierarchy, the geometry convention of a volume, DICOM and NIfTI I/O,
the canonical vertebra label scheme and the procedural spine phantoms used by tests and demos.
"""

__version__ = "0.1.0"
