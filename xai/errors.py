"""Every stable error code, with its HTTP status and message, and the typed errors that carry them.

``ErrorCode`` is the one list of codes: the gateway renders an error as
``{"error": {"code": ..., "message": ...}}`` with the code's HTTP status, workers store the same
pair on a failed job, and the README's error table is generated from it (``python -m xai.errors``;
a test keeps the two equal). A raise site may give a more specific message than the code's own;
it may not invent a code (``ErrorCode(value)`` refuses an unknown one).
"""

from __future__ import annotations

from enum import StrEnum


class _CodeBase(StrEnum):
    """What every error code carries. ``ErrorCode`` is this with the rows of ``_CODES`` as members, made by
    the functional Enum API: a class body would need one assignment statement per code."""

    http_status: int
    message: str
    group: str

    def __new__(cls, value: str, http_status: int, group: str, message: str) -> _CodeBase:
        member = str.__new__(cls, value)
        member._value_ = value
        member.http_status = http_status
        member.group = group
        member.message = message
        return member

    def body(self, message: str | None = None) -> dict[str, str]:
        """The ``{"code", "message"}`` pair a caller sees."""
        return {"code": self.value, "message": message or self.message}


# (code, HTTP status, group, message), grouped as the README table lists them; one row per line, so
# some rows are long. A member's name is its code in capitals (ErrorCode.INVALID_REQUEST).
_CODES: tuple[tuple[str, int, str, str], ...] = (
    ("invalid_request", 422, "request", "a field is missing or malformed (the message names it)"),
    ("invalid_params", 422, "request", "a method parameter is unknown, of the wrong type or out of range"),
    ("invalid_target", 422, "request", "the target is not a class index or name of the model"),
    ("invalid_quality", 422, "request", "an unknown quality metric was asked for"),
    ("unknown_method", 422, "request", "no such method; GET /v1/methods lists them"),
    ("not_trainable", 422, "request", "the method has no per-model artifacts to train"),
    ("method_not_allowed", 405, "request", "this path does not answer that HTTP method"),
    ("not_found", 404, "request", "no such route"),
    ("http_error", 400, "request", "the HTTP request is malformed"),
    ("request_in_progress", 409, "request", "a request with this Idempotency-Key is still being accepted; send it again after Retry-After seconds"),
    ("invalid_cursor", 422, "request", "the job list cursor is not one a previous page returned"),
    ("invalid_callback_url", 422, "request", "callback_url must be an absolute http or https URL without credentials"),
    ("invalid_stow_request", 415, "request", "STOW-RS takes multipart/related; type=\"application/dicom\" with one Part 10 file per part"),
    ("invalid_outputs", 422, "request", "outputs is a comma-separated list of png and dicom"),
    ("unknown_destination", 422, "request", "destination names none of XAI_DICOMWEB_DESTINATIONS, or the job has no DICOM outputs"),
    ("no_dicom_route", 422, "request", "no rule of XAI_DICOM_ROUTES matches the instance (Modality, Body Part Examined, SOP Class)"),
    ("callback_not_allowed", 422, "request", "callbacks go only to hosts in XAI_CALLBACK_HOSTS, for API keys with a callback_secret"),
    ("empty_file", 422, "upload", "the uploaded file is empty"),
    ("corrupt_image", 422, "upload", "the upload is truncated or corrupt"),
    ("unsupported_format", 415, "upload", "not PNG, JPEG, TIFF or DICOM (sniffed from the bytes, never the file name)"),
    ("dicom_no_pixel_data", 422, "upload", "the DICOM instance has no (7FE0,0010) Pixel Data"),
    ("dicom_truncated_pixel_data", 422, "upload", "the DICOM Pixel Data is shorter than its rows, columns and bits say"),
    ("dicom_unsupported_transfer_syntax", 415, "upload", "the DICOM transfer syntax cannot be decoded here (the message names it)"),
    ("dicom_unsupported_photometric", 415, "upload", "the DICOM photometric interpretation is not supported (the message names it)"),
    ("frame_out_of_range", 422, "upload", "frame is beyond (0028,0008) Number of Frames"),
    ("invalid_image_shape", 422, "upload", "the image is neither grey nor RGB"),
    ("invalid_annotation", 422, "upload", "boxes are not [[x, y, w, h], ...] inside the image, or the mask has another shape"),
    ("empty_annotation", 422, "upload", "the annotation marks no pixel"),
    ("payload_too_large", 413, "upload", "the upload is larger than XAI_MAX_UPLOAD_BYTES"),
    ("image_too_large", 413, "upload", "the image has more pixels than XAI_MAX_PIXELS"),
    ("too_many_frames", 413, "upload", "the DICOM has more frames than XAI_MAX_FRAMES"),
    ("dicom_output_needs_dicom_input", 422, "upload", "outputs=dicom needs a DICOM upload: its results are filed in the source's study"),
    ("dicom_output_needs_uids", 422, "upload", "outputs=dicom needs the instance's Study, SOP Class and SOP Instance UIDs"),
    ("image_smaller_than_patch", 422, "upload", "patch mode needs an image larger than the model's input"),
    ("unknown_model", 404, "lookup", "no model registered under that id"),
    ("unknown_model_version", 404, "lookup", "the model has no such version"),
    ("unknown_job", 404, "lookup", "no such job for this API key (it may have expired or been deleted)"),
    ("unknown_file", 404, "lookup", "the job has no such result file (the message lists its files)"),
    ("unknown_demo", 422, "lookup", "no shipped demo model of that name"),
    ("method_unavailable", 409, "model", "the model lacks the method's artifacts (train them) or a target layer"),
    ("model_not_ready", 409, "model", "the model is still being validated, or was found invalid"),
    ("invalid_manifest", 422, "model", "the registration manifest does not validate"),
    ("unknown_architecture", 422, "model", "the manifest names an architecture not offered"),
    ("invalid_architecture_args", 422, "model", "the architecture's arguments are invalid"),
    ("weights_unreadable", 422, "model", "the weights file is neither a state_dict nor TorchScript"),
    ("weights_do_not_match_architecture", 422, "model", "the weights do not fit the architecture"),
    ("weights_checksum_mismatch", 500, "model", "the stored weights no longer match their recorded sha256"),
    ("wrong_number_of_outputs", 422, "model", "the model's output width differs from its class names"),
    ("model_forward_failed", 422, "model", "the model raised an error on an input of its spec"),
    ("non_finite_output", 422, "model", "the model produced NaN or infinite outputs"),
    ("unknown_layer", 422, "model", "the manifest's target layer is not in the network"),
    ("target_layer_required", 422, "model", "a CAM method needs a target layer in the manifest"),
    ("method_unsupported_by_model", 422, "model", "the method cannot run on this network (the message says why)"),
    ("target_out_of_range", 422, "model", "the target class index is beyond the model's classes"),
    ("class_not_predicted", 422, "model", "a one-vs-rest method was asked for a class outside its trained pair"),
    ("artifact_missing", 409, "model", "the method's trained artifact is missing"),
    ("artifact_unreadable", 500, "model", "the method's trained artifact cannot be read"),
    ("artifact_mismatch", 409, "model", "the artifact was trained for other model weights; train it again"),
    ("artifact_input_mismatch", 422, "model", "the artifact was trained at another input size or channel count"),
    ("gad_not_trained", 409, "model", "GAD support models are not trained for this model"),
    ("gad_artifact_unreadable", 409, "model", "the GAD support models cannot be read"),
    ("gad_artifact_mismatch", 409, "model", "the GAD support models were trained for other model weights"),
    ("target_not_in_class_pair", 409, "model", "the target is outside the class pair the artifact was trained on"),
    ("base_method_unsupported", 422, "model", "GAD cannot use that base method"),
    ("invalid_training_data", 422, "training", "'data' must name a readable folder of images under the training data root"),
    ("invalid_training_images", 422, "training", "the training images cannot be used"),
    ("no_images", 422, "training", "the training folder holds no readable image"),
    ("unlabelled_images", 422, "training", "images lie outside the per-class sub-folders"),
    ("too_few_classes", 422, "training", "a classifier needs at least two class folders"),
    ("invalid_class_pair", 422, "training", "the class pair is not two distinct classes"),
    ("class_pair_required", 422, "training", "a multi-class model needs a class pair"),
    ("target_class_required", 422, "training", "a multi-class model needs target_class for one-vs-rest training"),
    ("invalid_target_class", 422, "training", "target_class is not a class of the model"),
    ("single_decision_side", 422, "training", "the classifier puts every training image on one side; SyCE needs both"),
    ("checkpoint_mismatch", 409, "training", "the checkpoint in the work folder belongs to other settings; remove it or resume with them"),
    ("missing_api_key", 401, "access", "send an API key as 'Authorization: Bearer <key>'"),
    ("invalid_api_key", 401, "access", "the API key is not valid"),
    ("insufficient_scope", 403, "access", "the API key lacks the scope this route needs"),
    ("signature_invalid", 403, "access", "a signed result file URL was altered or is malformed; use the URL the job lists"),
    ("signature_expired", 403, "access", "a signed result file URL has expired; GET the job again for fresh URLs"),
    ("input_expired", 404, "job", "the uploaded input expired before a worker reached it; submit it again"),
    ("worker_lost", 500, "job", "the worker running this job stopped (killed or crashed) twice before finishing; submit the request again"),
    ("timeout", 504, "job", "the job ran past its queue's time limit; try fewer steps or iterations, or a smaller image"),
    ("canceled", 409, "job", "the job was canceled at the caller's request"),
    ("out_of_memory", 503, "job", "the worker ran out of device memory; lower internal_batch_size or the image size and retry"),
    ("explanation_failed", 500, "job", "the worker failed while computing; the operators have the details in the worker log"),
    ("corrupt_stored_input", 500, "job", "the stored input is damaged; submit the job again"),
    ("queue_full", 429, "service", "the queue holds XAI_MAX_QUEUE_DEPTH waiting jobs; retry after Retry-After seconds"),
    ("rate_limited", 429, "service", "this API key sent more than XAI_RATE_LIMIT_PER_MINUTE jobs this minute; retry after Retry-After seconds"),
    ("storage_full", 503, "service", "Redis is near its memory limit; retry after Retry-After seconds, when finished jobs have expired"),
    ("service_unavailable", 503, "service", "the service cannot take requests now; retry later"),
    ("internal_error", 500, "service", "an unexpected error occurred; it has been logged"),
)

ErrorCode = _CodeBase("ErrorCode", [(row[0].upper(), row) for row in _CODES], module=__name__)
ErrorCode.__doc__ = "A stable error code: ``value`` is what callers see; ``http_status`` and ``message`` go with it."


class ServiceError(Exception):
    """Base class: a stable ``code`` (an ``ErrorCode``, whose HTTP status it answers with) and a message."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str | None = None, *, code: ErrorCode | str | None = None):
        # An unknown code is a programming error: ErrorCode() raises ValueError for it.
        self.code = ErrorCode(self.code if code is None else code)
        self.message = message or self.code.message
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return self.code.http_status

    def to_dict(self) -> dict[str, str]:
        return self.code.body(self.message)


class InvalidInput(ServiceError):
    """The request itself is malformed (a field missing, a value out of range)."""

    code = ErrorCode.INVALID_REQUEST


class InvalidImage(ServiceError):
    """The uploaded bytes are not a decodable image of a supported kind."""

    code = ErrorCode.CORRUPT_IMAGE


class UnsupportedMediaType(ServiceError):
    code = ErrorCode.UNSUPPORTED_FORMAT


class PayloadTooLarge(ServiceError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class NotFound(ServiceError):
    code = ErrorCode.NOT_FOUND


class Unauthorized(ServiceError):
    code = ErrorCode.MISSING_API_KEY


class Forbidden(ServiceError):
    code = ErrorCode.INSUFFICIENT_SCOPE


class Conflict(ServiceError):
    code = ErrorCode.METHOD_UNAVAILABLE


class Unavailable(ServiceError):
    code = ErrorCode.SERVICE_UNAVAILABLE


class Overloaded(ServiceError):
    """Refused for now, not for what was asked: the caller sends the same request again after ``retry_after_s``."""

    code = ErrorCode.QUEUE_FULL

    def __init__(self, message: str | None = None, *, code: ErrorCode | str | None = None, retry_after_s: int):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class JobCancelled(Exception):
    """Raised inside a running job when its caller asked to cancel it.

    Not a ServiceError: it is control flow, caught by the worker, never shown as a failure.
    """


_GROUP_TITLES = {
    "request": "The request", "upload": "The upload", "lookup": "Lookups", "model": "The model and its artifacts",
    "training": "Training", "access": "Access", "job": "A job's end (in the job's `error`)",
    "service": "The service",
}


def markdown_table() -> str:
    """The README's error table, generated from ``ErrorCode``."""
    lines = ["| code | HTTP | when |", "|---|---|---|"]
    for group, title in _GROUP_TITLES.items():
        lines.append(f"| **{title}** | | |")
        lines += [f"| `{code.value}` | {code.http_status} | {code.message} |" for code in ErrorCode if code.group == group]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
