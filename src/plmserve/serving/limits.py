"""Limits of job-creating requests, checked before any work is queued.

:func:`job_limits` is a FastAPI dependency for routers that create jobs (the OpenProtein routes
use it as a router dependency, so it runs before every route of the router, right after
authentication):

* uploaded files: at most ``max_upload_bytes`` each (413); the whole body is already bounded by
  :class:`plmserve.serving.ops.ServingMiddleware` before it is read;
* PoET sequences (``variant``, the sequences of ``variant_file``, a seed): at most
  ``poet_max_sequence_length`` residues (400);
* single-site scans: at most ``poet_max_single_site_positions`` positions (400);
* jobs: at most ``max_active_jobs_per_user`` PENDING or RUNNING jobs per owner (429 with
  ``Retry-After``).

Every refusal names the setting and the value sent.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from plmserve.api.auth import Principal, parse_authorization, require_principal
from plmserve.errors import LimitExceededError

#: multipart fields whose sequences are PoET inputs (checked for length)
_SEQUENCE_FILES = ("variant_file",)


def check_poet_sequence(length: int, settings: Any, what: str) -> None:
    """Raise :class:`LimitExceededError` (400) when a PoET sequence is longer than allowed."""
    limit = int(settings.poet_max_sequence_length)
    if length > limit:
        raise LimitExceededError(
            f"{what} has {length} residues; at most {limit} per PoET sequence "
            "(server setting PLMSERVE_POET_MAX_SEQUENCE_LENGTH)")


def check_active_jobs(store: Any, owner: str, settings: Any) -> None:
    """Raise :class:`LimitExceededError` (429, ``Retry-After``) when ``owner`` already has
    ``max_active_jobs_per_user`` PENDING or RUNNING jobs."""
    limit = int(settings.max_active_jobs_per_user)
    active = sum(len(store.list_jobs(owner, status=s, limit=limit + 1)) for s in ("PENDING", "RUNNING"))
    if active >= limit:
        raise LimitExceededError(
            f"you have {active} unfinished jobs; at most {limit} may be pending or running at once "
            "(server setting PLMSERVE_MAX_ACTIVE_JOBS_PER_USER); wait for some to finish or cancel them",
            status_code=429, retry_after=10)


async def job_limits(request: Request, principal: Principal = Depends(require_principal)) -> None:
    """FastAPI dependency: the limits of the module docstring, for POST routes that create jobs."""
    if request.method != "POST" or request.url.path.rstrip("/").endswith("/cancel"):
        return
    from starlette.concurrency import run_in_threadpool

    settings = request.app.state.settings
    path = request.url.path.rstrip("/")
    variant = request.query_params.get("variant")
    if variant is not None:
        n = len("".join(variant.split()))
        check_poet_sequence(n, settings, "variant")
        cap = int(settings.poet_max_single_site_positions)
        if path.endswith("/single_site") and n > cap:
            raise LimitExceededError(
                f"a single-site scan of {n} positions ({1 + 19 * n} records) is over the limit of {cap} positions "
                "(server setting PLMSERVE_POET_MAX_SINGLE_SITE_POSITIONS)")
    ctype = request.headers.get("content-type", "")
    if "multipart/form-data" in ctype:
        form = await request.form()
        limit = int(settings.max_upload_bytes)
        for field, value in form.multi_items():
            if isinstance(value, str):
                size = len(value.encode())
                content = None
            else:
                size = value.size if value.size is not None else len(await value.read())
                content = value
            if size > limit:
                raise LimitExceededError(
                    f"file '{field}' has {size} bytes; at most {limit} (server setting PLMSERVE_MAX_UPLOAD_BYTES)",
                    status_code=413)
            if field in _SEQUENCE_FILES:
                raw = value.encode() if isinstance(value, str) else await content.read()
                if content is not None:
                    await content.seek(0)
                _check_file_sequences(raw, field, settings)
    from plmserve.api.openprotein import get_service, owner_of

    owner = owner_of(principal, parse_authorization(request.headers.get("authorization")))
    svc = get_service(request.app)
    await run_in_threadpool(check_active_jobs, svc.store, owner, settings)


def _check_file_sequences(raw: bytes, field: str, settings: Any) -> None:
    from plmserve.jobs import poet as pj

    try:
        seqs = pj.parse_sequence_list(raw, source=field, default_name=None)
    except Exception:  # malformed files are reported by the route with its own message
        return
    for i, (_name, seq) in enumerate(seqs):
        check_poet_sequence(len(seq), settings, f"{field} sequence {i + 1}")


def parse_age(text: str):
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` -> :class:`datetime.timedelta`.

    Raises:
        InvalidParameterError: any other form (the message shows the accepted ones).
    """
    import re
    from datetime import timedelta

    from plmserve.errors import InvalidParameterError

    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not m:
        raise InvalidParameterError(f"invalid age {text!r}: use a number and a unit, e.g. 30d, 12h, 90m, 45s, 2w")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})
