"""Domain errors raised by services; the app turns each into a 4xx JSON response.

Response body: ``{"detail": "<message naming the problem>", "error": "<kind>"}``.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    kind = "bad_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(ServiceError):
    status_code = 400
    kind = "bad_input"


class NotFound(ServiceError):
    status_code = 404
    kind = "not_found"


class Conflict(ServiceError):
    status_code = 409
    kind = "conflict"


class Unauthorized(ServiceError):
    status_code = 401
    kind = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    kind = "forbidden"


class PayloadTooLarge(ServiceError):
    status_code = 413
    kind = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    kind = "unsupported_media_type"
