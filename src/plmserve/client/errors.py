"""Exceptions of the plmserve SDK: the OpenProtein SDK's types (``poet-api.md`` §7).

``InvalidParameterError`` and ``MissingParameterError`` are plmserve's own (the same classes the
server raises), so ``except plmserve.errors.InvalidParameterError`` catches client-side checks too.
Every exception has a ``.message``.
"""

from __future__ import annotations

from plmserve.errors import InvalidParameterError, MissingParameterError, PlmserveError

__all__ = [
    "APIError", "AuthError", "InvalidJob", "InvalidParameterError", "JobFailedException",
    "MissingParameterError", "TimeoutException",
]


class APIError(PlmserveError):
    """A request failed. ``status_code`` is the HTTP status (0 when the server could not be
    reached), ``detail`` the server's ``{"detail": ...}`` message (or the body), ``url`` the URL."""

    def __init__(self, message: str, *, status_code: int = 0, detail: object = None, url: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.url = url


class AuthError(APIError):
    """Login failed or the credentials were refused (401/403)."""

    def __init__(self, message: str = "Invalid authorization", **kwargs):
        super().__init__(message, **kwargs)


class InvalidJob(PlmserveError):
    """A job id of the wrong type was loaded (e.g. ``load_msa_job`` with a score job)."""

    def __init__(self, message: str = "No such job"):
        super().__init__(message)


class TimeoutException(PlmserveError):
    """``wait(timeout=...)`` ran out of time."""

    def __init__(self, message: str = "Request timed out!"):
        super().__init__(message)


class JobFailedException(APIError):
    """The job ended FAILURE (or CANCELED); ``failure_message`` says why."""

    def __init__(self, job_id: str, failure_message: str | None, status: str = "FAILURE"):
        super().__init__(f"job {job_id} ended {status}: {failure_message or 'no reason recorded'}")
        self.job_id = job_id
        self.failure_message = failure_message
        self.status = status
