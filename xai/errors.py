"""Typed errors with stable codes, carried from the first layer that detects them to the HTTP body.

Every error a caller can cause has a code here; the gateway renders it as
``{"error": {"code": ..., "message": ...}}`` with the HTTP status given by the class.
Workers store the same code and message on a failed job.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a stable ``code``, a message a person can act on, and an HTTP status."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(ServiceError):
    """The request itself is malformed (a field missing, a value out of range)."""

    code = "invalid_request"
    http_status = 422


class InvalidImage(ServiceError):
    """The uploaded bytes are not a decodable image of a supported kind."""

    code = "invalid_image"
    http_status = 422


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"
    http_status = 415


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413


class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


class Unauthorized(ServiceError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ServiceError):
    code = "forbidden"
    http_status = 403


class Conflict(ServiceError):
    code = "conflict"
    http_status = 409


class Unavailable(ServiceError):
    code = "service_unavailable"
    http_status = 503


class JobCancelled(Exception):
    """Raised inside a running job when its caller asked to cancel it.

    Not a ServiceError: it is control flow, caught by the worker, never shown as a failure.
    """
