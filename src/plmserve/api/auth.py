"""Authentication for every route: ``Authorization: Token <key>`` or ``Bearer <key>``.

A credential is accepted when it is one of the configured API keys (``Settings.api_keys``) or
when a registered token validator (e.g. the job service's user access tokens) recognises it.
With ``Settings.no_auth`` (allowed only on 127.0.0.1) every request is the local user.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Callable, Literal

from fastapi import Request

from plmserve.errors import AuthenticationError


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``user_id`` is set for job-service users; ``name`` is for logs/ownership."""

    name: str
    kind: Literal["key", "user", "local"]
    user_id: int | None = None


LOCAL_PRINCIPAL = Principal(name="local", kind="local")

# (request, token) -> Principal or None when the token is not one of the validator's.
TokenValidator = Callable[[Request, str], "Principal | None"]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """True for the loopback addresses ``--no-auth`` may bind to (127.0.0.1, localhost, ::1)."""
    return host.strip().strip("[]").lower() in LOOPBACK_HOSTS


def check_auth_config(settings, *, has_users: bool = False) -> None:
    """Refuse a server configuration that would expose models without credentials.

    Rules: ``no_auth`` only with a loopback ``host``; otherwise at least one API key, or at least
    one job-service user (``plmserve users add NAME``; ``has_users``) who logs in for a token.

    Raises:
        InvalidParameterError: the message says which rule was broken and how to fix it
            (``PLMSERVE_API_KEYS`` / ``--api-key``, or ``--no-auth`` on 127.0.0.1).
    """
    from plmserve.errors import InvalidParameterError

    if settings.no_auth:
        if not is_loopback(settings.host):
            raise InvalidParameterError(
                f"--no-auth is only allowed when the server binds to 127.0.0.1/localhost, not "
                f"'{settings.host}': anyone who can reach {settings.host} could use it. Configure API keys "
                "instead (--api-key KEY or PLMSERVE_API_KEYS='[\"KEY\"]')"
            )
        return
    if not settings.api_keys and not has_users:
        raise InvalidParameterError(
            "no API keys and no users configured: set PLMSERVE_API_KEYS='[\"KEY\"]' (or pass --api-key KEY) "
            "and send 'Authorization: Token KEY', or create a user with 'plmserve users add NAME', or pass "
            "--no-auth to serve without credentials on 127.0.0.1 only"
        )


def add_token_validator(app, validator: TokenValidator) -> None:
    """Register an extra way to accept a token (called in registration order)."""
    app.state.token_validators.append(validator)


def parse_authorization(header: str | None) -> str | None:
    """The token of ``Token <t>`` / ``Bearer <t>`` (case-insensitive scheme), or None."""
    if not header:
        return None
    parts = header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() not in ("token", "bearer"):
        return None
    return parts[1].strip() or None


def require_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller, or a 401 ``AuthenticationError``.

    The caller is also kept in ``request.state.principal`` (access logs, fairness keys)."""
    principal = _resolve_principal(request)
    request.state.principal = principal
    return principal


def _resolve_principal(request: Request) -> Principal:
    settings = request.app.state.settings
    token = parse_authorization(request.headers.get("authorization"))
    if token is not None:
        for key in settings.api_keys:
            if hmac.compare_digest(token.encode(), key.encode()):
                from plmserve.serving.ops import key_label

                # the name is also the fairness key of the batching schedulers: a digest of the
                # whole key, so two keys with a common prefix are two principals (never the key itself)
                request.state.principal_log = key_label(key)
                return Principal(name=key_label(key), kind="key")
        for validator in request.app.state.token_validators:
            principal = validator(request, token)
            if principal is not None:
                return principal
    if settings.no_auth:
        return LOCAL_PRINCIPAL
    if token is None:
        raise AuthenticationError(
            "missing credentials: send 'Authorization: Token <key>' (or 'Bearer <key>')"
        )
    raise AuthenticationError("invalid API key or token")
