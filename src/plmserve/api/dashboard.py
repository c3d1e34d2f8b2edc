"""The web dashboard served at ``/``: server-rendered pages (Jinja2) with htmx (vendored, no CDN).

Pages (all under ``/ui`` except the home page):

============================== ==========================================================
``GET /``                      the caller's jobs, live status and progress (htmx polling)
``GET/POST /ui/login``         login form (users of ``plmserve users add``); session cookie
``POST /ui/logout``            revoke the session token, clear the cookie
``GET /ui/jobs/{id}``          job detail: parameters, lineage, results, single-site heatmap
``GET /ui/jobs/{id}/results.csv`` the results as CSV (``.fasta`` for generated sequences)
``POST /ui/jobs/{id}/cancel``  cancel a PENDING/RUNNING job
``GET/POST /ui/submit``        PoET score / single-site / generate from an MSA, seed or prompt upload
``GET /ui/models``             registry models: loaded or not, where the weights are, licence
``GET /ui/msa``, ``/ui/msa/{id}`` MSA jobs: depth, N_eff, per-column coverage plot
============================== ==========================================================

Authentication: a browser logs in with a user name and password and gets a session cookie
(``plmserve_session``: a job-service access token valid 12 hours, ``HttpOnly``, ``SameSite=Lax``,
``Secure`` over HTTPS, revoked at logout). Scripts send ``Authorization: Token <key>`` /
``Bearer <token>`` as on every API route. With ``--no-auth`` (loopback only) the browser is the
local user. Users see only their own jobs: another owner's job is a 404, as on the API.

CSRF: every form POST made with the cookie (or without credentials under ``--no-auth``) must
carry the ``csrf_token`` field (or an ``X-CSRF-Token`` header) equal to the ``plmserve_csrf``
cookie (random, ``HttpOnly``, ``SameSite=Strict``), and a present ``Origin`` header must be this
server's. Requests authenticated by an ``Authorization`` header are not subject to it (browsers
never add that header on their own).

Jobs are created by calling the same functions the OpenProtein routes run
(:mod:`plmserve.api.openprotein`), so the dashboard and the API create identical jobs.
"""

from __future__ import annotations

import csv
import hmac
import io
import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from plmserve.api import openprotein as op
from plmserve.api.auth import Principal, parse_authorization, require_principal
from plmserve.errors import (
    AuthenticationError,
    InvalidInputError,
    InvalidParameterError,
    NotFoundError,
    PermissionDeniedError,
    PlmserveError,
)
from plmserve.jobs import poet as pj
from plmserve.jobs.store import DONE_STATUSES, SUCCESS, JobRecord, JobStore

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

SESSION_COOKIE = "plmserve_session"
CSRF_COOKIE = "plmserve_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME = timedelta(hours=12)
#: Name of the wild-type row in the dashboard's tables and CSV files (``X0X`` stays on the
#: OpenProtein routes, whose contract demands it).
WILD_TYPE_NAME = "WT"
#: Rows of a result table rendered in the page (the CSV always has every row).
TABLE_ROWS = 200

JOB_LABELS = {
    pj.JOB_MSA: "MSA",
    pj.JOB_PROMPT: "prompt",
    pj.JOB_SCORE: "score",
    pj.JOB_SCORE_NEW: "score",
    pj.JOB_SINGLE_SITE: "single-site",
    pj.JOB_GENERATE: "generate",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["job_label"] = lambda t: JOB_LABELS.get(t, t)
templates.env.globals["quote"] = quote

router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------------- callers
@dataclass(frozen=True)
class Caller:
    """Who uses the dashboard: the principal, the owner string of its jobs, and how it
    authenticated (``session`` cookie, ``header`` credentials, or ``local`` under --no-auth)."""

    principal: Principal
    owner: str
    via: str

    @property
    def display_name(self) -> str:
        return self.principal.name


class LoginRequired(Exception):
    """No usable credentials: browsers are sent to the login page."""


def _store(request: Request) -> JobStore:
    return op.get_service(request.app).store


def _session_caller(request: Request) -> Caller | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    user = _store(request).user_for_token(token)
    if user is None:
        return None
    principal = Principal(name=user.name, kind="user", user_id=user.id)
    return Caller(principal, user.owner, "session")


def resolve_caller(request: Request) -> Caller:
    """The dashboard caller: the session cookie, else the ``Authorization`` header (API keys and
    user tokens, exactly as the API routes accept them), else the local user under --no-auth.

    Raises:
        AuthenticationError: an ``Authorization`` header that is not valid (401).
        LoginRequired: no credentials at all.
    """
    caller = _session_caller(request)
    if caller is not None:
        return caller
    token = parse_authorization(request.headers.get("authorization"))
    settings = request.app.state.settings
    if token is not None:
        principal = require_principal(request)
        return Caller(principal, op.owner_of(principal, token), "header")
    if settings.no_auth:
        principal = require_principal(request)
        return Caller(principal, op.owner_of(principal), "local")
    raise LoginRequired()


def _csrf_value(request: Request) -> tuple[str, bool]:
    """(the CSRF token of this browser, whether it is new and must be set as a cookie)."""
    value = request.cookies.get(CSRF_COOKIE)
    if value and 20 <= len(value) <= 100:
        return value, False
    return secrets.token_urlsafe(32), True


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def check_csrf(request: Request, form: Any, caller: Caller | None) -> None:
    """Refuse a cross-site form POST (see the module docstring).

    Raises:
        PermissionDeniedError: a foreign ``Origin`` or a missing/wrong CSRF token (403).
    """
    if caller is not None and caller.via == "header":
        return
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise PermissionDeniedError(f"cross-site request refused (Origin {origin} is not {host})")
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = request.headers.get(CSRF_HEADER) or (form.get(CSRF_FIELD) if form is not None else None) or ""
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise PermissionDeniedError("the form's CSRF token is missing or wrong: reload the page and submit again")


def render(request: Request, name: str, context: dict[str, Any] | None = None, *, status_code: int = 200,
           caller: Caller | None = None, headers: dict[str, str] | None = None) -> HTMLResponse:
    """Render ``templates/dashboard/<name>`` with the caller, the CSRF token and security headers."""
    csrf, new = _csrf_value(request)
    ctx = {"caller": caller, "csrf_token": csrf, "csrf_field": CSRF_FIELD}
    ctx.update(context or {})
    response = templates.TemplateResponse(request, f"dashboard/{name}", ctx, status_code=status_code)
    for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
        response.headers[k] = v
    if new:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=_secure(request), path="/")
    return response


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"/ui/login?next={quote(target, safe='')}"
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def _error_page(request: Request, exc: PlmserveError, caller: Caller | None) -> Response:
    if request.headers.get("hx-request"):
        return Response(str(exc), status_code=exc.status_code, media_type="text/plain")
    return render(request, "error.html", {"status": exc.status_code, "message": str(exc)},
                  status_code=exc.status_code, caller=caller)


async def page(request: Request, handler, *, form: bool = False) -> Response:
    """Run ``handler(caller[, form])`` for an authenticated caller; login redirect or error page otherwise."""
    caller = None
    try:
        caller = await run_in_threadpool(resolve_caller, request)
        if form:
            data = await request.form()
            check_csrf(request, data, caller)
            return await handler(caller, data)
        return await handler(caller)
    except LoginRequired:
        return _login_redirect(request)
    except PlmserveError as exc:
        return _error_page(request, exc, caller)


# ---------------------------------------------------------------------- login / logout
def _safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/ui/login")
def login_form(request: Request, next: str | None = None):
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/ui/login")
async def login_submit(request: Request):
    form = await request.form()
    nxt = _safe_next(str(form.get("next") or "/"))
    try:
        check_csrf(request, form, None)
    except PermissionDeniedError as exc:
        return render(request, "login.html", {"next": nxt, "error": str(exc)}, status_code=403)
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    store = _store(request)
    user = await run_in_threadpool(store.authenticate, username, password) if username and password else None
    if user is None:
        return render(request, "login.html", {"next": nxt, "error": "invalid user name or password",
                                              "username": username}, status_code=401)
    token = await run_in_threadpool(store.issue_token, user.id, SESSION_LIFETIME)
    response = RedirectResponse(nxt, status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(SESSION_LIFETIME.total_seconds()), httponly=True,
                        samesite="lax", secure=_secure(request), path="/")
    return response


@router.post("/ui/logout")
async def logout(request: Request):
    form = await request.form()
    try:
        check_csrf(request, form, None)
    except PermissionDeniedError as exc:
        return _error_page(request, exc, None)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await run_in_threadpool(_store(request).revoke_token, token)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))
    return response


# ---------------------------------------------------------------------- jobs
def _job_view(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.job_id, "type": job.job_type, "label": JOB_LABELS.get(job.job_type, job.job_type),
        "status": job.status, "done": job.done, "progress": job.progress_counter or 0,
        "message": job.progress_message, "created": job.created_date.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "ended": job.end_date.strftime("%Y-%m-%d %H:%M:%S UTC") if job.end_date else None,
        "num_records": job.num_records, "failure": job.failure_message, "parent_id": job.parent_id,
    }


def _jobs_context(store: JobStore, owner: str) -> dict[str, Any]:
    jobs = [_job_view(j) for j in store.list_jobs(owner, limit=500)]
    return {"jobs": jobs, "polling": any(not j["done"] for j in jobs)}


@router.get("/")
async def home(request: Request):
    async def handler(caller: Caller):
        ctx = await run_in_threadpool(_jobs_context, _store(request), caller.owner)
        return render(request, "jobs.html", ctx, caller=caller)

    return await page(request, handler)


@router.get("/ui/jobs/rows")
async def job_rows(request: Request):
    async def handler(caller: Caller):
        ctx = await run_in_threadpool(_jobs_context, _store(request), caller.owner)
        return render(request, "_job_rows.html", ctx, caller=caller)

    return await page(request, handler)


def _lineage(store: JobStore, job: JobRecord, owner: str) -> list[JobRecord]:
    """The job's ancestors, oldest first (MSA -> prompt -> PoET job -> ...), the job last."""
    chain = [job]
    seen = {job.job_id}
    current = job
    while True:
        nxt = current.parent_id or current.args.get("prompt_id") or current.args.get("root_msa")
        if not nxt or nxt in seen:
            break
        try:
            current = store.get_job(nxt, owner)
        except NotFoundError:
            break
        seen.add(current.job_id)
        chain.append(current)
    return list(reversed(chain))


def _replicate_columns(rows: list[dict]) -> int:
    return max((len(r.get("score") or []) for r in rows), default=0)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def result_table(job: JobRecord, rows: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a PoET job's results as the dashboard shows and exports them.

    Scores are PoET log-likelihoods (nats) per prompt replicate; ``score`` is their mean over the
    replicates (the ensemble score of PoET's ``score.py``). Single-site tables start with the wild
    type (``WT``) and add ``delta_vs_wt`` = score(mutant) - score(WT).

    Returns:
        (header, rows) with floats unrounded.
    """
    n = _replicate_columns(rows)
    reps = [f"score_{k}" for k in range(1, n + 1)]
    if job.job_type == pj.JOB_SINGLE_SITE:
        wt = _mean(rows[0]["score"]) if rows else float("nan")
        out = []
        for i, r in enumerate(rows):
            s = _mean(r["score"])
            name = WILD_TYPE_NAME if i == 0 and r["sequence"] == pj.WT_CODE else r["sequence"]
            out.append([name, s, s - wt, *r["score"]])
        return ["mutant", "score", "delta_vs_wt", *reps], out
    return ["name", "sequence", "score", *reps], [[r["name"], r["sequence"], _mean(r["score"]), *r["score"]]
                                                   for r in rows]


# Diverging palette (ColorBrewer RdBu end points): red = lower likelihood than the wild type.
_NEG, _MID, _POS = (178, 24, 43), (247, 247, 247), (33, 102, 172)


def _colour(value: float, scale: float) -> str:
    if not math.isfinite(value) or scale <= 0:
        return "#cccccc"
    t = max(-1.0, min(1.0, value / scale))
    end = _POS if t > 0 else _NEG
    a = abs(t)
    r, g, b = (round(m + (e - m) * a) for m, e in zip(_MID, end))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(wild_type: str, rows: list[dict]) -> dict[str, Any]:
    """Single-site heatmap data: one cell per (position, amino acid), positions 1..L on the x axis
    and the 20 amino acids (``ARNDCQEGHILKMFPSTWYV``) on the y axis; the value is
    ``delta`` = mean score(mutant) - mean score(WT) (nats); wild-type cells are marked.

    The colour scale is symmetric, saturating at the 98th percentile of ``|delta|``.

    Returns:
        ``{"cells": [...], "positions": L, "scale": float, "width", "height", ...}`` for the template.
    """
    wt_score = _mean(rows[0]["score"])
    deltas = {r["sequence"]: _mean(r["score"]) - wt_score for r in rows[1:]}
    mags = sorted(abs(d) for d in deltas.values() if math.isfinite(d))
    scale = mags[min(len(mags) - 1, int(0.98 * len(mags)))] if mags else 0.0
    cw, ch, left, top = 8, 12, 18, 24
    cells = []
    for pos, wt in enumerate(wild_type, start=1):
        x = left + (pos - 1) * cw
        for k, aa in enumerate(pj.SINGLE_SITE_ORDER):
            y = top + k * ch
            if aa == wt:
                cells.append({"x": x, "y": y, "wt": True, "code": f"{wt}{pos}{aa}", "delta": 0.0, "fill": "#ffffff"})
                continue
            code = f"{wt}{pos}{aa}"
            d = deltas.get(code, float("nan"))
            cells.append({"x": x, "y": y, "wt": False, "code": code, "delta": d, "fill": _colour(d, scale)})
    ticks = [{"x": left + (p - 1) * cw + cw / 2, "label": p} for p in range(1, len(wild_type) + 1)
             if p == 1 or p % 10 == 0]
    residues = [{"x": left + i * cw + cw / 2, "aa": aa} for i, aa in enumerate(wild_type)]
    return {
        "cells": cells, "positions": len(wild_type), "scale": scale, "cw": cw, "ch": ch, "left": left, "top": top,
        "width": left + len(wild_type) * cw + 10, "height": top + 20 * ch + 22, "ticks": ticks,
        "residues": residues, "aas": [{"y": top + k * ch + ch - 3, "aa": aa} for k, aa in enumerate(pj.SINGLE_SITE_ORDER)],
        "legend": [{"value": v * scale, "fill": _colour(v * scale, scale)} for v in (-1, -0.5, 0, 0.5, 1)],
    }


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "nan"
    return value


def _job_detail_context(store: JobStore, job: JobRecord, owner: str, show_all: bool) -> dict[str, Any]:
    ctx: dict[str, Any] = {"job": _job_view(job), "args": _args_view(job.args)}
    ctx["lineage"] = [_job_view(j) for j in _lineage(store, job, owner)]
    ctx["children"] = [_job_view(j) for j in store.list_jobs(owner, parent_id=job.job_id, limit=100)]
    msa_job = None
    try:
        msa_job = op._msa_job_of(store, job)
    except NotFoundError:
        pass
    ctx["msa_id"] = msa_job.job_id if msa_job is not None and msa_job.status == SUCCESS else None
    ctx["results"] = None
    ctx["heatmap"] = None
    ctx["generated"] = None
    if job.status == SUCCESS and job.job_type in pj.POET_JOB_TYPES:
        rows = pj.read_result(store, job)
        header, table = result_table(job, rows)
        shown = table if show_all else table[:TABLE_ROWS]
        ctx["results"] = {"header": header, "rows": [[_fmt(v) for v in r] for r in shown], "total": len(table),
                          "truncated": len(shown) < len(table)}
        if job.job_type == pj.JOB_SINGLE_SITE and rows:
            ctx["heatmap"] = heatmap(job.args["variant"], rows)
        if job.job_type == pj.JOB_GENERATE:
            ctx["generated"] = [{"name": r["name"], "sequence": r["sequence"], "length": len(r["sequence"]),
                                 "score": _fmt(_mean(r["score"]))} for r in rows]
    if job.job_type == pj.JOB_PROMPT and job.status == SUCCESS:
        try:
            reps = pj.load_prompt(store, job.job_id)
            ctx["prompt"] = [{"replicate": i + 1, "sequences": len(r), "residues": sum(len(s) for _, s in r)}
                             for i, r in enumerate(reps)]
        except PlmserveError:
            ctx["prompt"] = None
    return ctx


def _args_view(args: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for k, v in sorted(args.items()):
        text = "" if v is None else str(v)
        out.append({"key": k, "value": text if len(text) <= 80 else text[:77] + "…", "full": text})
    return out


def _owned_job(request: Request, caller: Caller, job_id: str) -> JobRecord:
    return _store(request).get_job(job_id, caller.owner)


@router.get("/ui/jobs/{job_id}")
async def job_detail(request: Request, job_id: str, rows: str | None = None):
    async def handler(caller: Caller):
        def build():
            store = _store(request)
            job = store.get_job(job_id, caller.owner)
            return _job_detail_context(store, job, caller.owner, rows == "all")

        ctx = await run_in_threadpool(build)
        return render(request, "job.html", ctx, caller=caller)

    return await page(request, handler)


@router.get("/ui/jobs/{job_id}/status")
async def job_status(request: Request, job_id: str):
    async def handler(caller: Caller):
        job = await run_in_threadpool(_owned_job, request, caller, job_id)
        headers = {"HX-Refresh": "true"} if job.done else None
        return render(request, "_job_status.html", {"job": _job_view(job)}, caller=caller, headers=headers)

    return await page(request, handler)


@router.get("/ui/jobs/{job_id}/results.csv")
async def job_csv(request: Request, job_id: str):
    async def handler(caller: Caller):
        def build() -> tuple[str, str]:
            store = _store(request)
            job = store.get_job(job_id, caller.owner)
            if job.job_type not in pj.POET_JOB_TYPES:
                raise InvalidInputError(f"job {job_id} is a {JOB_LABELS.get(job.job_type, job.job_type)} job; "
                                        "only score, single-site and generate jobs have a results table")
            header, table = result_table(job, pj.read_result(store, job))
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            w.writerow(header)
            w.writerows([repr(v) if isinstance(v, float) else v for v in r] for r in table)
            label = JOB_LABELS.get(job.job_type, "results").replace("-", "_")
            return out.getvalue(), f"{label}_{job.job_id}.csv"

        body, filename = await run_in_threadpool(build)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"', **SECURITY_HEADERS})

    return await page(request, handler)


@router.get("/ui/jobs/{job_id}/sequences.fasta")
async def job_fasta(request: Request, job_id: str):
    async def handler(caller: Caller):
        def build() -> str:
            store = _store(request)
            job = op._poet_job(store, job_id, caller.owner, {pj.JOB_GENERATE})
            return "".join(f">{r['name']}\n{r['sequence']}\n" for r in pj.read_result(store, job))

        body = await run_in_threadpool(build)
        return Response(body, media_type="text/plain; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="generated_{job_id}.fasta"',
                                 **SECURITY_HEADERS})

    return await page(request, handler)


@router.post("/ui/jobs/{job_id}/cancel")
async def job_cancel(request: Request, job_id: str):
    async def handler(caller: Caller, form):
        await run_in_threadpool(op.get_service(request.app).cancel, job_id, caller.owner)
        return RedirectResponse(f"/ui/jobs/{quote(job_id)}", status_code=303)

    return await page(request, handler, form=True)


# ---------------------------------------------------------------------- submit
KINDS = ("single_site", "score", "generate")


def _int_field(form: Any, name: str, lo: int, hi: int, default: int | None, label: str) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterError(f"{label}: {raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise InvalidParameterError(f"{label}: {value} is outside {lo}..{hi}")
    return value


def _float_field(form: Any, name: str, lo: float, hi: float, default: float, label: str) -> float:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameterError(f"{label}: {raw!r} is not a number") from None
    if not (lo <= value <= hi):
        raise InvalidParameterError(f"{label}: {value} is outside {lo}..{hi}")
    return value


async def _upload(form: Any, name: str) -> bytes | None:
    """The bytes of an uploaded file field, or None when no file was chosen (left re-readable)."""
    item = form.get(name)
    if isinstance(item, UploadFile):
        data = await item.read()
        await item.seek(0)
        return data if (data or item.filename) else None
    if isinstance(item, str) and item.strip():
        return item.encode()
    return None


def _sequence_field(form: Any) -> str | None:
    """The wild type typed/pasted in the form (raw letters or one FASTA record), or None."""
    text = str(form.get("sequence") or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(">")]
    seq = "".join(lines).replace(" ", "")
    return seq or None


def _submit_context(store: JobStore, owner: str) -> dict[str, Any]:
    prompts = [j for j in store.list_jobs(owner, job_type=pj.JOB_PROMPT, limit=50)
               if j.status not in ("FAILURE", "CANCELED")]
    return {"prompts": [_job_view(j) for j in prompts], "kinds": KINDS}


@router.get("/ui/submit")
async def submit_form(request: Request):
    async def handler(caller: Caller):
        ctx = await run_in_threadpool(_submit_context, _store(request), caller.owner)
        return render(request, "submit.html", {**ctx, "error": None, "values": {}}, caller=caller)

    return await page(request, handler)


async def create_jobs(request: Request, caller: Caller, form: Any) -> dict[str, Any]:
    """Create the prompt (from an MSA, a seed or an upload, or reuse one) and the PoET job of the
    submit form with the OpenProtein route functions; returns the PoET job's wire JSON.

    Form fields: ``kind`` (single_site | score | generate); the prompt from ``prompt_id`` (an
    existing prompt job), ``prompt_file`` (used as is), or ``msa_file`` (an aligned MSA, or a
    seed FASTA searched for homologs when ``search`` is on) sampled with ``num_sequences`` /
    ``replicates`` / ``seed``; ``sequence`` (single-site wild type; default the MSA's query or the
    seed); ``variant_file`` (score: FASTA or CSV); ``generate_n``, ``temperature``, ``maxlen``.

    Raises:
        PlmserveError: bad input (400), with the field named.
    """
    owner = caller.owner
    kind = str(form.get("kind") or "")
    if kind not in KINDS:
        raise InvalidParameterError(f"job kind: choose one of {', '.join(KINDS)} (got {kind!r})")
    replicates = _int_field(form, "replicates", 1, 15, 1, "prompt replicates")
    num_sequences = _int_field(form, "num_sequences", 1, 99, None, "prompt sequences")
    seed = _int_field(form, "seed", 1, 2**32 - 1, None, "random seed")
    generate_n = _int_field(form, "generate_n", 1, 1000, 10, "sequences to generate")
    maxlen = _int_field(form, "maxlen", 5, 10000, 1000, "maximum length")
    temperature = _float_field(form, "temperature", 0.1, 2.0, 1.0, "temperature")
    wild_type = _sequence_field(form)
    if wild_type is not None:
        wild_type = pj.check_sequence(wild_type, what="wild-type sequence")
    variant_raw = await _upload(form, "variant_file")
    if kind == "score":
        if variant_raw is None:
            raise InvalidInputError("score: choose a variants file (FASTA or CSV of name,sequence)")
        pj.parse_sequence_list(variant_raw, source="variants file", default_name=None)  # fail before any job
    prompt_raw = await _upload(form, "prompt_file")
    msa_raw = await _upload(form, "msa_file")
    prompt_id = str(form.get("prompt_id") or "").strip() or None
    search = str(form.get("search") or "") in ("on", "true", "1")
    svc = op.get_service(request.app)

    query = None
    if prompt_id is not None:
        prompt = await run_in_threadpool(op._resolve_prompt_job, svc.store, prompt_id, owner)
        root = prompt.args.get("root_msa")
        if root and wild_type is None and kind == "single_site":
            msa_job = await run_in_threadpool(svc.store.get_job, root, owner)
            query = msa_job.args.get("seed") if msa_job.args.get("is_seed") else None
            if query is None and msa_job.status == SUCCESS:
                query = (await run_in_threadpool(pj.load_msa, svc.store, root)).query
        prompt_wire = op.job_wire(prompt)
    elif prompt_raw is not None:
        if kind == "single_site" and wild_type is None:
            raise InvalidInputError("single-site with an uploaded prompt: type the wild-type sequence")
        prompt_wire = await op.post_upload_prompt(request, owner=owner)
    elif msa_raw is not None:
        if search:
            msa_wire = await op.post_msa(request, is_seed=True, owner=owner)
            query = msa_wire["args"]["seed"]
        else:
            msa_wire = await op.post_msa(request, is_seed=False, owner=owner)
            query = (await run_in_threadpool(pj.load_msa, svc.store, msa_wire["job_id"])).query
        prompt_wire = await run_in_threadpool(
            lambda: op.post_prompt(
                request, msa_id=msa_wire["job_id"], max_msa_sequences=num_sequences,
                max_msa_tokens=None if num_sequences else op.DEFAULT_NUM_RESIDUES,
                msa_method=op.MSASamplingMethod.NEIGHBORS_NONGAP_NORM_NO_LIMIT.value, homology_level=0.8,
                max_similarity=1.0, min_similarity=0.0, force_include_first=False, replicates=replicates,
                seed=seed, owner=owner))
    else:
        raise InvalidInputError("choose an MSA (or seed) file, a prompt file, or an existing prompt")

    pid = prompt_wire["job_id"]
    if kind == "single_site":
        variant = wild_type or query
        if variant is None:
            raise InvalidInputError("single-site: type the wild-type sequence")
        return await run_in_threadpool(
            lambda: op.post_single_site(request, variant=variant, prompt_id=pid, parent_id=None, owner=owner))
    if kind == "score":
        return await op.post_score(request, prompt_id=pid, owner=owner)
    return await run_in_threadpool(
        lambda: op.post_generate(request, prompt_id=pid, generate_n=generate_n, temperature=temperature, topk=None,
                                 topp=None, maxlen=maxlen, seed=seed, owner=owner))


@router.post("/ui/submit")
async def submit(request: Request):
    async def handler(caller: Caller, form):
        try:
            job = await create_jobs(request, caller, form)
        except PlmserveError as exc:
            ctx = await run_in_threadpool(_submit_context, _store(request), caller.owner)
            values = {k: v for k, v in form.items() if isinstance(v, str)}
            return render(request, "submit.html", {**ctx, "error": str(exc), "values": values},
                          status_code=exc.status_code, caller=caller)
        return RedirectResponse(f"/ui/jobs/{quote(job['job_id'])}", status_code=303)

    return await page(request, handler, form=True)


# ---------------------------------------------------------------------- models
def models_context(request: Request) -> dict[str, Any]:
    """Every registry model: loaded or not, where its weights are (or came from), licence."""
    from plmserve.cli.models import where_weights
    from plmserve.models.registry import list_models

    manager = request.app.state.models
    settings = request.app.state.settings
    loaded = set(manager.loaded())
    out = []
    for spec in list_models():
        row = {"slug": spec.slug, "family": spec.family, "description": spec.description,
               "licence": spec.licence or "see the model card", "gated": spec.gated, "loaded": spec.slug in loaded,
               "hf_repo": spec.hf_repo, "download_url": spec.download_url}
        if spec.slug in loaded:
            model = manager.get(spec.slug)
            dummy = bool(getattr(model, "is_dummy", False)) or getattr(model, "load_format", None) == "dummy"
            source = getattr(model, "source", None)
            row["weights"] = "random weights (load-format=dummy)" if dummy else (str(source) if source else "in memory")
        else:
            try:
                row["weights"] = where_weights(spec, settings) or "not found on this machine"
            except Exception as exc:  # an unreadable cache must not break the page
                row["weights"] = f"unknown ({exc.__class__.__name__})"
        out.append(row)
    return {"models": out, "load_format": settings.load_format}


@router.get("/ui/models")
async def models_page(request: Request):
    async def handler(caller: Caller):
        ctx = await run_in_threadpool(models_context, request)
        return render(request, "models.html", ctx, caller=caller)

    return await page(request, handler)


# ---------------------------------------------------------------------- MSAs
_msa_stats_cache: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
_msa_stats_lock = threading.Lock()


def msa_stats(msa, homology_level: float = 0.8) -> dict[str, Any]:
    """Depth, width, N_eff and per-column coverage of an MSA (query first).

    ``n_eff`` = sum over rows of 1 / (number of rows with >= ``homology_level`` identity to it)
    (:func:`plmserve.align.sampling.n_eff`, PoET's neighbour weighting). ``coverage[j]`` is the
    fraction of rows with a residue (not a gap) in match column ``j`` (float, 0..1, length L).
    """
    import numpy as np

    from plmserve.align.sampling import n_eff
    from plmserve.bio.msa import GAP_INDEX

    mat = msa.aligned_matrix()
    coverage = (mat != GAP_INDEX).mean(axis=0) if mat.size else np.zeros(0)
    neff = n_eff(msa, homology_level)
    return {"depth": len(msa), "columns": msa.num_columns, "query_length": len(msa.query), "n_eff": neff,
            "n_eff_per_column": neff / msa.num_columns if msa.num_columns else 0.0,
            "coverage": [float(c) for c in coverage], "homology_level": homology_level}


def coverage_plot(coverage: list[float]) -> dict[str, Any]:
    """SVG geometry of the per-column coverage plot (bars, 0..1 on the y axis)."""
    width, height, left, bottom, top = 720, 180, 36, 24, 8
    n = max(1, len(coverage))
    bw = (width - left - 8) / n
    plot_h = height - bottom - top
    bars = [{"x": left + j * bw, "w": max(bw, 0.5), "h": c * plot_h, "y": top + (1 - c) * plot_h, "col": j + 1,
             "value": c} for j, c in enumerate(coverage)]
    step = 50 if n > 200 else 10 if n > 40 else 5
    ticks = [{"x": left + (p - 0.5) * bw, "label": p} for p in range(1, n + 1) if p == 1 or p % step == 0]
    return {"bars": bars, "width": width, "height": height, "left": left, "top": top, "plot_h": plot_h,
            "ticks": ticks, "baseline": top + plot_h}


def _msa_context(store: JobStore, job: JobRecord) -> dict[str, Any]:
    key = job.job_id
    with _msa_stats_lock:
        stats = _msa_stats_cache.get(key)
    if stats is None:
        stats = msa_stats(pj.load_msa(store, job.job_id))
        with _msa_stats_lock:
            _msa_stats_cache[key] = stats
            while len(_msa_stats_cache) > 32:
                _msa_stats_cache.popitem(last=False)
    return {"job": _job_view(job), "stats": stats, "plot": coverage_plot(stats["coverage"])}


@router.get("/ui/msa")
async def msa_list(request: Request):
    async def handler(caller: Caller):
        jobs = await run_in_threadpool(lambda: _store(request).list_jobs(caller.owner, job_type=pj.JOB_MSA, limit=200))
        return render(request, "msa_list.html", {"jobs": [_job_view(j) for j in jobs]}, caller=caller)

    return await page(request, handler)


@router.get("/ui/msa/{job_id}")
async def msa_page(request: Request, job_id: str):
    async def handler(caller: Caller):
        def build():
            store = _store(request)
            job = store.get_job(job_id, caller.owner)
            msa_job = op._msa_job_of(store, job)
            if msa_job is None:
                raise InvalidInputError(f"job {job_id} has no MSA (its prompt was uploaded)")
            return _msa_context(store, msa_job)

        ctx = await run_in_threadpool(build)
        return render(request, "msa.html", ctx, caller=caller)

    return await page(request, handler)


# ---------------------------------------------------------------------- wiring
def include(app: FastAPI) -> None:
    """Serve the dashboard: the pages above and the vendored static files under ``/ui/static``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC_DIR)), name="dashboard-static")
