"""The one exception hierarchy of plmserve.

Every error a user can cause derives from :class:`PlmserveError`. The HTTP layer maps
``status_code`` to the response status and ``str(error)`` to ``{"detail": ...}``; the CLI
prints ``error: <message>`` on one line and exits with code 2. A 5xx is only ever a bug.
"""

from __future__ import annotations


class PlmserveError(Exception):
    """Base class of all errors plmserve raises on purpose.

    Attributes:
        status_code: the HTTP status the API answers with (4xx for the caller's errors).
    """

    status_code: int = 400
    #: extra HTTP response headers (e.g. ``Retry-After``); None for most errors.
    headers: dict[str, str] | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class InvalidInputError(PlmserveError, ValueError):
    """The caller's data is malformed (sequence letters, MSA rows, files, mutation codes).

    The message says what is wrong and where: item index, row, position/column, character.
    Optional attributes carry the same facts for programs: ``item``, ``position``, ``character``.
    """

    status_code = 400

    def __init__(
        self,
        message: str,
        *,
        item: int | None = None,
        position: int | None = None,
        character: str | None = None,
    ):
        super().__init__(message)
        self.item = item
        self.position = position
        self.character = character


class InvalidParameterError(PlmserveError, ValueError):
    """A parameter is out of range or inconsistent (wording follows the OpenProtein SDK)."""

    status_code = 400


class MissingParameterError(PlmserveError, ValueError):
    """A required parameter is absent (wording follows the OpenProtein SDK)."""

    status_code = 400


class NotFoundError(PlmserveError, LookupError):
    """A named thing (model slug, job, user) does not exist, or is not visible to the caller."""

    status_code = 404


class ModelNotFoundError(NotFoundError):
    """An unknown model name or alias."""


class WeightsNotFoundError(PlmserveError):
    """A known model whose weights are not available locally (and cannot be downloaded).

    The message names the model, every place searched and how to obtain the weights.
    """

    status_code = 503


class ModelLoadError(PlmserveError):
    """Weights were found but the model could not be built from them (corrupt file, shape
    mismatch, out of memory)."""

    status_code = 503


class ConflictError(PlmserveError):
    """The request conflicts with the current state (e.g. a job that is not finished yet)."""

    status_code = 409


class AuthenticationError(PlmserveError):
    """Missing or invalid credentials."""

    status_code = 401


class PermissionDeniedError(PlmserveError):
    """Valid credentials that do not allow the operation."""

    status_code = 403


class LimitExceededError(PlmserveError):
    """A request exceeds a server limit (items, residues, forward passes, positions, file size).

    The message names the limit (its setting) and the value sent. ``status_code`` is 400 unless
    given (413 for bodies and files that are too large, 429 for too many concurrent jobs).
    """

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        if retry_after is not None:
            self.headers = {"Retry-After": str(int(retry_after))}


class ServiceUnavailableError(PlmserveError):
    """The server cannot take the work now (a model's queue is full, it is shutting down);
    the response carries ``Retry-After`` (seconds)."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(int(retry_after))}
