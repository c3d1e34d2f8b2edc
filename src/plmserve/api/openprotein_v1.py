"""The current OpenProtein API (``openprotein-python`` 0.17): v1 auth, model registry, PoET
via ``v1/embeddings``, the prompt service and its queries.

Facts: ``shared/specs/openprotein-v1-api.md`` (route table §2, job model §3, align §4, prompt
service §5, models §6, request bodies §7, result formats §8). Everything is under ``/api/v1``
and lives beside the 0.2.x routes of :mod:`plmserve.api.openprotein` (same job store, same
users, same jobs: a prompt sampled with either generation is usable by the other).

====================================================== =========================================
``POST auth/login``                                    form ``username``/``password`` -> access +
                                                       refresh token, ``expires_in`` (seconds)
``POST auth/refresh``                                  JSON ``{refresh_token}`` -> new pair (401
                                                       for an unknown, used or expired token)
``GET  embeddings/models[?verbose=true]``              every servable model (ModelMetadata)
``GET  embeddings/models/{model_id}``                  one model (``poet-2``: 404, no weights)
``POST embeddings/models/poet/{score,score/indel,``    PoET jobs (``/poet/score``,
``score_single_site,generate,embed,logits}``           ``/poet/single_site``, ...)
``GET  embeddings/{job_id}/{scores,generate,stream}``  CSV with header / framed ``.npy`` stream
``GET  embeddings/{kind}/{job_id}/{sequence}``         one ``.npy`` array (``kind``: embed, logits)
``GET  embeddings/{kind}/{job_id}/sequences``          the job's sequences (JSON list)
``POST prompt/create_prompt``, ``GET prompt[/{id}]``   prompts (uploaded, or sampled by
``GET  prompt/{id}/content``                           ``align/prompt``): zip of ``context-*.zip``
``POST prompt/query``, ``GET prompt/query/{id}[/..]``  PoET-2 queries (lowercase UUIDv4 ids)
====================================================== =========================================

The align routes (``v1/align/msa``, ``inputs``, ``prompt``) and ``v1/jobs`` are shared with
0.2.x and served by :mod:`plmserve.api.openprotein`.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from plmserve.api import access_log
from plmserve.api.openprotein import _store
from plmserve.errors import AuthenticationError, MissingParameterError

logger = logging.getLogger(__name__)

#: Lifetime of the access tokens ``v1/auth/login`` issues (the SDK refreshes 30 s before).
ACCESS_TOKEN_LIFETIME = timedelta(hours=12)
#: Lifetime of a refresh token (each is usable once; refreshing issues a new one).
REFRESH_TOKEN_LIFETIME = timedelta(days=30)

public = APIRouter(tags=["openprotein-v1"])
router = APIRouter(tags=["openprotein-v1"])


# ---------------------------------------------------------------------- auth
def _token_pair(store, user_id: int) -> dict[str, Any]:
    return {
        "access_token": store.issue_token(user_id, ACCESS_TOKEN_LIFETIME),
        "refresh_token": store.issue_refresh_token(user_id, REFRESH_TOKEN_LIFETIME),
        "expires_in": int(ACCESS_TOKEN_LIFETIME.total_seconds()),
        "token_type": "bearer",
    }


@public.post("/auth/login")
async def auth_login(request: Request):
    """Exchange a form-encoded ``username``/``password`` for ``{access_token, refresh_token,
    expires_in, token_type}`` (401 for a wrong password or an unknown user, which take the same
    time: one scrypt verification each)."""
    username = password = None
    ctype = request.headers.get("content-type", "")
    if "form" in ctype:
        form = await request.form()
        username, password = form.get("username"), form.get("password")
    elif "json" in ctype:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if isinstance(body, dict):
            username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username or not isinstance(password, str):
        raise MissingParameterError("username and password are required (form fields 'username' and 'password')")
    store = _store(request)
    user = await run_in_threadpool(store.authenticate, username, password)
    if user is None:
        raise AuthenticationError("invalid username or password")
    return await run_in_threadpool(_token_pair, store, user.id)


@public.post("/auth/refresh")
async def auth_refresh(request: Request):
    """Exchange a refresh token (JSON ``{"refresh_token": ...}``) for a new token pair. The old
    refresh token is consumed. An unknown, used, revoked or expired token is a 401 (the SDK then
    logs in again with the stored credentials)."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    token = body.get("refresh_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthenticationError("missing refresh token: send JSON {\"refresh_token\": \"...\"}")
    store = _store(request)
    user = await run_in_threadpool(store.use_refresh_token, token)
    if user is None:
        raise AuthenticationError("invalid or expired refresh token; log in again")
    return await run_in_threadpool(_token_pair, store, user.id)


# ---------------------------------------------------------------------- wiring
def _startup(app: FastAPI) -> None:
    access_log.install()


def include(app: FastAPI) -> None:
    """Add the v1 routes under ``/api/v1`` and the access-log credential filter."""
    access_log.install()
    app.state.startup.append(_startup)
    app.include_router(public, prefix="/api/v1")
    app.include_router(router, prefix="/api/v1")
