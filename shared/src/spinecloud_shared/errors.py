"""The domain error hierarchy shared by every SpineCloud service.

Each error carries a stable machine ``code`` (used as a job failure code and in HTTP problem
responses) and a sentence a clinician or an administrator can act on. The mapping to HTTP
status lives here too, so that it is defined exactly once.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SpineCloudError(Exception):
    """Base class: a failure SpineCloud understands and can report."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    #: Whether retrying the same operation later may succeed (network, busy server).
    transient: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_problem(self) -> dict[str, Any]:
        """An RFC 9457 problem body for this error."""
        return {
            "type": f"https://spinecloud.invalid/problems/{self.code}",
            "title": self.code.replace("_", " "),
            "status": self.http_status,
            "detail": self.message,
            "code": self.code,
            **({"details": self.details} if self.details else {}),
        }


class ConfigurationError(SpineCloudError):
    """The deployment's settings are missing or inconsistent."""

    code = "configuration_error"


class InvalidInputError(SpineCloudError):
    """Input data that SpineCloud refuses; subclasses say what is wrong with it."""

    code = "invalid_input"
    http_status = 422


class DicomInputError(InvalidInputError):
    """A DICOM series that cannot be turned into a volume."""

    code = "invalid_dicom"


class MissingUidError(DicomInputError):
    """Instances lack the UIDs that identify them (SOP class/instance, study, series)."""

    code = "dicom_missing_uid"


class MixedSeriesError(DicomInputError):
    """Files from more than one series, or with different image geometry, were given together."""

    code = "dicom_mixed_series"


class NotCtError(DicomInputError):
    """The series is not a CT image series."""

    code = "dicom_not_ct"


class NonImageObjectError(DicomInputError):
    """An object without pixel data (SR, SEG, presentation state...) was given as an image."""

    code = "dicom_not_image"


class SliceGeometryError(DicomInputError):
    """Slices are missing, duplicated or unevenly spaced along the slice normal."""

    code = "dicom_slice_geometry"


class GantryTiltError(DicomInputError):
    """The slices are sheared (gantry tilt): positions do not run along the slice normal."""

    code = "dicom_gantry_tilt"


class CorruptFileError(DicomInputError):
    """A file is not readable DICOM, or its pixel data cannot be decoded."""

    code = "dicom_corrupt"


class NiftiInputError(InvalidInputError):
    """A NIfTI file that cannot be used (unreadable, NaN, empty, bad affine)."""

    code = "invalid_nifti"


class GeometryMismatchError(InvalidInputError):
    """Two volumes that must share a grid do not."""

    code = "geometry_mismatch"


class LabelError(InvalidInputError):
    """Label ids that the scheme does not know, or a label map that is not integer."""

    code = "invalid_labels"


class ModelArtifactError(InvalidInputError):
    """A model artefact that is missing, incomplete, corrupt or inconsistent."""

    code = "invalid_model"


class ModelNotFoundError(ModelArtifactError):
    """No model artefact answers a model reference (name, name@version or folder)."""

    code = "model_not_found"


class ModelLabelError(ModelArtifactError):
    """A model whose output channels do not all map to canonical vertebra ids.

    Raised when a model is loaded: a channel without an entry in the manifest's labels, a label
    for a channel the network does not have, or no channel mapping to any vertebra (a published
    model of organs, say). Serving it would give unlabelled or meaningless segments.
    """

    code = "model_labels_unmapped"


class UnsuitableImageError(InvalidInputError):
    """A readable image whose content a segmentation model cannot be run on."""

    code = "unsuitable_image"


class ImageTooSmallError(UnsuitableImageError):
    """The field of view is too small along some axis to hold a vertebra."""

    code = "image_too_small"


class NoBodyInImageError(UnsuitableImageError):
    """Almost nothing in the image is denser than air: no patient in the field of view."""

    code = "image_all_air"


class MetalImageError(UnsuitableImageError):
    """Most of the body is at metal or saturated densities: not a diagnostic CT."""

    code = "image_all_metal"


class NotFoundError(SpineCloudError):
    """A requested object (study, series, model, job...) does not exist."""

    code = "not_found"
    http_status = 404


class UpstreamError(SpineCloudError):
    """A server SpineCloud depends on (Orthanc, database, broker) failed or is unreachable."""

    code = "upstream_unavailable"
    http_status = 502
    transient = True


class GpuMemoryError(SpineCloudError):
    """A run does not fit in the GPU's memory even at its smallest batch and patch."""

    code = "gpu_out_of_memory"
    http_status = 507
