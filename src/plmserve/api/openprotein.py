"""OpenProtein-compatible PoET workflow API (wire-compatible with ``openprotein-python`` 0.2.x).

Routes (all under ``/api/v1``; facts in ``shared/specs/poet-api.md``):

====================================== =====================================================
``POST login/user-access-token``       ``username``/``password`` (query or form) -> bearer token
``GET  jobs``, ``GET jobs/{id}``        the caller's jobs (another user's job is a 404)
``GET  jobs/{id}/args``                 the job's registered arguments (``root_msa`` ...)
``POST jobs/{id}/cancel``               cancel a PENDING/RUNNING job (plmserve extension)
``POST poet/align/msa``                 seed (``is_seed=True``) or aligned MSA upload
``GET  poet/align/inputs`` (``/msa``)   headerless CSV of RAW / GENERATED / PROMPT rows
``POST poet/align/prompt``              sample a prompt (ensemble of ``replicates``)
``POST poet/align/upload_prompt``       upload a prompt (``<END_PROMPT>``-separated blocks)
``POST/GET poet/score``                 score variants / paged results
``POST/GET poet/single_site``           every substitution (``X0X`` WT row first) / paged results
``POST/GET poet/generate``              sample sequences / CSV ``name,sequence,score_1..N``
====================================== =====================================================

Every ``poet/align/*`` route is also served as ``align/*`` (SDK >= 0.4). Parameters come in the
query string (booleans like ``True``); files come as multipart fields (``msa_file``,
``prompt_file``, ``variant_file``) whose format is sniffed from the content. Errors are
``{"detail": ...}``: 400 bad input, 401 credentials, 404 unknown or foreign job, 409 results
requested before the job finished, 422 out-of-range parameters.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import random
import threading
import uuid
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from plmserve.api.auth import Principal, add_token_validator, parse_authorization, require_principal
from plmserve.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    InvalidParameterError,
    MissingParameterError,
    NotFoundError,
)
from plmserve.jobs import poet as pj
from plmserve.jobs.store import FAILURE, SUCCESS, JobRecord, JobStore, user_owner
from plmserve.serving.limits import job_limits
from plmserve.serving.ops import login_rate_limit

logger = logging.getLogger(__name__)

POET_MAX_PAGE_SIZE = 1_000_000
MAX_PAGE_OFFSET = 1_000_000_000
DEFAULT_NUM_RESIDUES = 12288


class MSASamplingMethod(str, Enum):
    """Prompt sampling strategies (``poet-api.md`` §5.1)."""

    RANDOM = "RANDOM"
    NEIGHBORS = "NEIGHBORS"
    NEIGHBORS_NO_LIMIT = "NEIGHBORS_NO_LIMIT"
    NEIGHBORS_NONGAP_NORM_NO_LIMIT = "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
    TOP = "TOP"


class MSAType(str, Enum):
    """What ``align/inputs`` returns: the upload, the MSA, or the sampled prompt."""

    RAW = "RAW"
    GENERATED = "GENERATED"
    PROMPT = "PROMPT"


# ---------------------------------------------------------------------- service access
def get_service(app: FastAPI):
    """The app's :class:`plmserve.jobs.service.JobService` (created and started on first use)."""
    svc = getattr(app.state, "job_service", None)
    if svc is None:
        with _service_lock:
            svc = getattr(app.state, "job_service", None)
            if svc is None:
                from plmserve.jobs.service import JobService

                svc = JobService(app.state.settings, app.state.models, app=app)  # shares app.state.schedulers
                app.state.job_service = svc
    svc.start()
    return svc


_service_lock = threading.Lock()


def _store(request: Request) -> JobStore:
    return get_service(request.app).store


def owner_of(principal: Principal, token: str | None = None) -> str:
    """The owner string of the caller's jobs: ``user:<name>`` for users, ``key:<sha256 of the
    key, 16 hex>`` for API keys (two keys never share jobs), ``local`` without authentication."""
    if principal.kind == "user":
        return user_owner(principal.name)
    if principal.kind == "key" and token:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return principal.name


def caller_owner(request: Request, principal: Principal = Depends(require_principal)) -> str:
    """FastAPI dependency: the authenticated caller's owner string (see :func:`owner_of`)."""
    return owner_of(principal, parse_authorization(request.headers.get("authorization")))


def _user_token_validator(request: Request, token: str) -> Principal | None:
    user = get_service(request.app).store.user_for_token(token)
    if user is None:
        return None
    return Principal(name=user.name, kind="user", user_id=user.id)


# ---------------------------------------------------------------------- wire helpers
def job_wire(job: JobRecord) -> dict[str, Any]:
    """Job JSON plus the subtype id fields the SDK reads (``msa_id``, ``prompt_id``)."""
    d = job.to_wire()
    if job.job_type == pj.JOB_MSA:
        d["msa_id"] = job.job_id
    elif job.job_type == pj.JOB_PROMPT:
        d["prompt_id"] = job.job_id
        d["msa_id"] = job.args.get("root_msa")
    elif job.job_type in pj.POET_JOB_TYPES:
        d["prompt_id"] = job.args.get("prompt_id")
    return d


def _csv_response(rows: list[list[str]] | str, job: JobRecord | None = None) -> Response:
    if isinstance(rows, str):
        body = rows
    else:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerows(rows)
        body = out.getvalue()
    headers = {"job_status": job.status} if job is not None else None
    return Response(content=body.encode(), media_type="text/csv; charset=utf-8", headers=headers)


async def _form_file(request: Request, field: str) -> bytes:
    """The bytes of multipart field ``field`` (with or without a filename)."""
    ctype = request.headers.get("content-type", "")
    if "multipart/form-data" not in ctype and "application/x-www-form-urlencoded" not in ctype:
        body = await request.body()
        if body:
            return body
        raise MissingParameterError(f"the request has no '{field}' file (send it as multipart/form-data)")
    form = await request.form()
    item = form.get(field)
    if item is None:
        raise MissingParameterError(f"the multipart field '{field}' is missing")
    if isinstance(item, str):
        return item.encode()
    return await item.read()


def _resolve_prompt_job(store: JobStore, prompt_id: str, owner: str) -> JobRecord:
    try:
        job = store.get_job(prompt_id, owner)
    except NotFoundError:
        raise InvalidInputError(f"invalid prompt: no prompt job {prompt_id}") from None
    if job.job_type != pj.JOB_PROMPT:
        raise InvalidInputError(f"invalid prompt: job {prompt_id} is a {job.job_type} job, not a prompt job")
    if job.status in ("FAILURE", "CANCELED"):
        why = f": {job.failure_message}" if job.failure_message else ""
        raise InvalidInputError(f"invalid prompt: prompt job {prompt_id} ended {job.status}{why}")
    return job


def _prerequisite(job: JobRecord) -> str | None:
    return None if job.status == SUCCESS else job.job_id


def _msa_job_of(store: JobStore, job: JobRecord) -> JobRecord | None:
    """Lineage: a PoET job -> its prompt job -> its MSA job (None for uploaded prompts)."""
    if job.job_type in pj.POET_JOB_TYPES:
        job = store.get_job(job.args["prompt_id"])
    if job.job_type == pj.JOB_PROMPT:
        root = job.args.get("root_msa")
        return store.get_job(root) if root else None
    if job.job_type == pj.JOB_MSA:
        return job
    return None


def _prompt_job_of(store: JobStore, job: JobRecord) -> JobRecord | None:
    if job.job_type == pj.JOB_PROMPT:
        return job
    if job.job_type in pj.POET_JOB_TYPES:
        return store.get_job(job.args["prompt_id"])
    return None


def _page(rows: list[dict], page_size: int, page_offset: int) -> list[dict]:
    return rows[page_offset: page_offset + page_size]


def _results_envelope(store: JobStore, job: JobRecord, page_size: int, page_offset: int) -> dict[str, Any]:
    rows = pj.read_result(store, job)
    env = job_wire(job)
    env.update({"page_size": page_size, "page_offset": page_offset, "num_rows": len(rows),
                "n_completed": len(rows), "result": _page(rows, page_size, page_offset)})
    return env


def _poet_job(store: JobStore, job_id: str, owner: str, types: set[str] | frozenset[str]) -> JobRecord:
    job = store.get_job(job_id, owner)
    if job.job_type not in types:
        raise InvalidInputError(f"job {job_id} is a {job.job_type} job, not one of {sorted(types)}")
    return job


# ---------------------------------------------------------------------- routers
public = APIRouter(tags=["openprotein"], dependencies=[Depends(login_rate_limit)])
router = APIRouter(tags=["openprotein"], dependencies=[Depends(job_limits)])  # limits before any work


@public.post("/login/user-access-token")
@public.post("/login/access-token")
async def login(request: Request, username: str | None = Query(None), password: str | None = Query(None)):
    """Exchange a username and password (query string or form) for a bearer token."""
    if username is None or password is None:
        ctype = request.headers.get("content-type", "")
        if "form" in ctype:
            form = await request.form()
            username = username or (str(form.get("username")) if form.get("username") is not None else None)
            password = password or (str(form.get("password")) if form.get("password") is not None else None)
    if not username or password is None:
        raise MissingParameterError("username and password are required")
    store = _store(request)
    user = await run_in_threadpool(store.authenticate, username, password)
    if user is None:
        raise AuthenticationError("invalid username or password")
    token = await run_in_threadpool(store.issue_token, user.id)
    return {"access_token": token, "token_type": "bearer"}


# ----- jobs
@router.get("/jobs")
def list_jobs(
    request: Request,
    owner: str = Depends(caller_owner),
    status: str | None = Query(None),
    job_type: str | None = Query(None),
    assay_id: str | None = Query(None),
    more_recent_than: str | None = Query(None, description="ISO 8601 date-time; naive means UTC"),
    page_size: int | None = Query(None, ge=1, le=10000),
    page_offset: int = Query(0, ge=0, le=MAX_PAGE_OFFSET),
    limit: int | None = Query(None, ge=1, le=10000),
):
    """The caller's jobs, newest first (filters: status, job_type, more_recent_than)."""
    from plmserve.api.openprotein_v1 import parse_iso_datetime, parse_status

    jobs = _store(request).list_jobs(
        owner, status=parse_status(status), job_type=job_type,
        more_recent_than=parse_iso_datetime(more_recent_than, "more_recent_than"),
        limit=page_size or limit or 1000, offset=page_offset,
    )
    return [job_wire(j) for j in jobs]


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """One of the caller's jobs (404 for unknown or foreign ids)."""
    return job_wire(_store(request).get_job(job_id, owner))


@router.get("/jobs/{job_id}/args")
def get_job_args(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """The job's registered arguments (``{"root_msa", "parent_id", ...}``)."""
    job = _store(request).get_job(job_id, owner)
    args = dict(job.args)
    args.setdefault("parent_id", job.parent_id)
    return args


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """Cancel a PENDING or RUNNING job (409 when it is already done)."""
    return job_wire(get_service(request.app).cancel(job_id, owner))


# ----- align
async def post_msa(request: Request, is_seed: bool = Query(True),
                   owner: str = Depends(caller_owner)):
    """Create an MSA by homology search from a seed (``is_seed=True``, only the first sequence
    is used) or upload an aligned MSA (``is_seed=False``; a3m, aligned FASTA, Stockholm, CSV)."""
    raw = await _form_file(request, "msa_file")
    svc = get_service(request.app)
    job_id = str(uuid.uuid4())
    if is_seed:
        seqs = pj.parse_sequence_list(raw, source="msa_file", default_name="seed")
        seed = pj.check_sequence(seqs[0][1], what="seed")
        args = {"is_seed": True, "seed": seed, "msa_id": job_id, "parent_id": job_id}
        raw_csv = f"seed,{seed}\n".encode()
        job = await run_in_threadpool(
            lambda: svc.store.create_job(pj.JOB_MSA, owner, args, job_id=job_id, artifacts={pj.ART_RAW: raw_csv}))
        svc.executor.submit(job.job_id)
    else:
        from plmserve.bio.msa import parse_msa

        try:
            msa = parse_msa(raw, source="msa_file")
        except InvalidInputError as exc:
            raise InvalidInputError(f"Invalid MSA (not aligned, etc): {exc}") from None
        a3m = "".join(f">{n}\n{r}\n" for n, r in zip(msa.names, msa.rows)).encode()
        raw_csv = msa.to_csv(aligned=True).encode()
        args = {"is_seed": False, "msa_id": job_id, "parent_id": job_id}
        job = await run_in_threadpool(
            lambda: svc.store.create_job(pj.JOB_MSA, owner, args, job_id=job_id, status=SUCCESS,
                                         num_records=len(msa), artifacts={pj.ART_RAW: raw_csv, pj.ART_MSA: a3m}))
    return job_wire(job)


def get_inputs(request: Request, job_id: str = Query(...), msa_type: MSAType = Query(MSAType.GENERATED),
               replicate: int | None = Query(None), owner: str = Depends(caller_owner)):
    """Headerless ``name,sequence`` CSV of the seed/upload (RAW), the MSA (GENERATED: query first,
    match columns, ``-`` gaps) or the prompt (PROMPT: ``replicate`` 1-based; omitted = every
    replicate, blocks separated by ``<END_PROMPT>`` lines). Any job of the lineage works."""
    store = _store(request)
    job = store.get_job(job_id, owner)
    if msa_type in (MSAType.RAW, MSAType.GENERATED):
        msa_job = _msa_job_of(store, job)
        if msa_job is None:
            raise InvalidInputError(f"job {job_id} has no MSA (its prompt was uploaded)")
        if msa_type == MSAType.RAW:
            raw = store.get_artifact(msa_job.job_id, pj.ART_RAW) or b""
            return _csv_response(raw.decode(), msa_job)
        if msa_job.status != SUCCESS:
            if msa_job.status == FAILURE:
                raise ConflictError(f"MSA job {msa_job.job_id} failed: {msa_job.failure_message}")
            raise ConflictError(f"MSA job {msa_job.job_id} has not produced results yet (status {msa_job.status})")
        msa = pj.load_msa(store, msa_job.job_id)
        return _csv_response([[n, a] for n, a in zip(msa.names, msa.aligned)], msa_job)
    prompt_job = _prompt_job_of(store, job)
    if prompt_job is None:
        raise InvalidInputError(f"job {job_id} is an MSA job; sample a prompt from it first")
    if prompt_job.status == FAILURE:
        raise ConflictError(f"prompt job {prompt_job.job_id} failed: {prompt_job.failure_message}")
    replicates = pj.load_prompt(store, prompt_job.job_id)
    if replicate is not None:
        if not 1 <= replicate <= len(replicates):
            return _csv_response([], prompt_job)
        return _csv_response([list(p) for p in replicates[replicate - 1]], prompt_job)
    blocks = []
    for rep in replicates:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([list(p) for p in rep])
        blocks.append(out.getvalue())
    return _csv_response(f"{pj.END_PROMPT}\n".join(blocks), prompt_job)


def post_prompt(
    request: Request,
    msa_id: str = Query(...),
    max_msa_sequences: int | None = Query(None, ge=1, le=99),
    max_msa_tokens: int | None = Query(None, ge=1, le=24576),
    msa_method: str = Query(MSASamplingMethod.NEIGHBORS_NONGAP_NORM_NO_LIMIT.value),
    homology_level: float = Query(0.8, ge=0.0, le=1.0),
    max_similarity: float = Query(1.0, ge=0.0, le=1.0),
    min_similarity: float = Query(0.0, ge=0.0, le=1.0),
    force_include_first: bool = Query(False),
    replicates: int = Query(1, ge=1, le=15),
    seed: int | None = Query(None, ge=0, le=4294967295),  # 0.17 SDKs may draw 0
    owner: str = Depends(caller_owner),
):
    """Sample ``replicates`` prompts from an MSA (it may still be running: the prompt job then
    waits for it). Exactly one of ``max_msa_sequences`` / ``max_msa_tokens`` (default: 12288
    tokens)."""
    method = msa_method.split(".")[-1].upper()
    if method not in MSASamplingMethod.__members__:
        raise InvalidParameterError(
            f"unknown msa_method {msa_method!r}; expected one of {', '.join(MSASamplingMethod.__members__)}")
    if max_msa_sequences is not None and max_msa_tokens is not None:
        raise MissingParameterError("Either 'num_sequences' or 'num_residues' must be set, but not both.")
    if max_msa_sequences is None and max_msa_tokens is None:
        max_msa_tokens = DEFAULT_NUM_RESIDUES
    if min_similarity > max_similarity:
        raise InvalidParameterError(
            f"min_similarity ({min_similarity}) must not exceed max_similarity ({max_similarity})")
    svc = get_service(request.app)
    msa_job = svc.store.get_job(msa_id, owner)
    if msa_job.job_type == pj.JOB_PROMPT and msa_job.args.get("root_msa"):
        msa_job = svc.store.get_job(msa_job.args["root_msa"], owner)
    if msa_job.job_type != pj.JOB_MSA:
        raise InvalidInputError(f"job {msa_id} is a {msa_job.job_type} job, not an MSA job")
    if msa_job.status in ("FAILURE", "CANCELED"):
        why = f": {msa_job.failure_message}" if msa_job.failure_message else ""
        raise InvalidInputError(f"MSA job {msa_job.job_id} ended {msa_job.status}{why}")
    if seed is None:
        seed = random.randrange(1, 2**32)
    args = {
        "root_msa": msa_job.job_id, "parent_id": msa_job.job_id, "msa_method": method,
        "max_msa_sequences": max_msa_sequences, "max_msa_tokens": max_msa_tokens,
        "homology_level": homology_level, "max_similarity": max_similarity, "min_similarity": min_similarity,
        "force_include_first": force_include_first, "replicates": replicates, "seed": seed,
    }
    job = svc.submit(pj.JOB_PROMPT, owner, args, parent_id=msa_job.job_id,
                     prerequisite_job_id=_prerequisite(msa_job))
    return job_wire(job)


async def post_upload_prompt(request: Request, owner: str = Depends(caller_owner)):
    """Upload a ready-made prompt: FASTA or CSV blocks, one per replicate, separated by
    ``<END_PROMPT>`` lines; used as is (no sampling)."""
    raw = await _form_file(request, "prompt_file")
    replicates = pj.parse_prompt_file(raw)
    svc = get_service(request.app)
    args = {"root_msa": None, "parent_id": None, "msa_method": "CUSTOM", "replicates": len(replicates)}
    job = await run_in_threadpool(
        lambda: svc.store.create_job(pj.JOB_PROMPT, owner, args, status=SUCCESS,
                                     num_records=len(replicates),
                                     artifacts={pj.ART_RAW: raw, pj.ART_PROMPT: pj.prompt_json(replicates)}))
    return job_wire(job)


# ----- poet
@router.post("/poet/score")
async def post_score(request: Request, prompt_id: str = Query(...),
                     owner: str = Depends(caller_owner)):
    """Score the sequences of ``variant_file`` (FASTA or 1/2-column CSV) under every replicate of
    the prompt. Unnamed sequences are named ``sequence-NN`` (zero-padded)."""
    raw = await _form_file(request, "variant_file")
    variants = pj.parse_sequence_list(raw, source="variant_file", default_name=None)
    names = pj.score_names(len(variants))
    rows = [[n if n is not None else names[i], s] for i, (n, s) in enumerate(variants)]

    def submit():
        svc = get_service(request.app)
        prompt = _resolve_prompt_job(svc.store, prompt_id, owner)
        args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "n_variants": len(rows)}
        return svc.submit(pj.JOB_SCORE, owner, args, parent_id=prompt.job_id,
                          prerequisite_job_id=_prerequisite(prompt), num_records=len(rows),
                          artifacts={pj.ART_INPUT: json.dumps(rows).encode(), pj.ART_RAW: raw})

    return job_wire(await run_in_threadpool(submit))


@router.get("/poet/score")
def get_score(request: Request, job_id: str = Query(...), page_size: int = Query(10000, ge=1, le=POET_MAX_PAGE_SIZE),
              page_offset: int = Query(0, ge=0), owner: str = Depends(caller_owner)):
    """Paged score results: ``{..job.., page_size, page_offset, num_rows, result: [{sequence,
    score: [per replicate], name}]}`` in input order. 409 until the job succeeded."""
    store = _store(request)
    job = _poet_job(store, job_id, owner, {pj.JOB_SCORE, pj.JOB_SCORE_NEW})
    return _results_envelope(store, job, page_size, page_offset)


@router.post("/poet/single_site")
def post_single_site(request: Request, variant: str = Query(...), prompt_id: str | None = Query(None),
                     parent_id: str | None = Query(None), owner: str = Depends(caller_owner)):
    """Score every single substitution of ``variant`` (the full parent sequence) with the prompt
    ``prompt_id``, or with the prompt of the PoET job ``parent_id`` (exactly one of the two)."""
    if (prompt_id is None) == (parent_id is None):
        raise InvalidParameterError("Either parent_id or prompt_id must be set.")
    seq = pj.check_sequence(variant, what="variant")
    svc = get_service(request.app)
    if parent_id is not None:
        parent = _poet_job(svc.store, parent_id, owner, pj.POET_JOB_TYPES)
        prompt_id = parent.args["prompt_id"]
    prompt = _resolve_prompt_job(svc.store, prompt_id, owner)  # type: ignore[arg-type]
    n = 1 + 19 * len(seq)
    args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "variant": seq,
            "parent_id": parent_id}
    job = svc.submit(pj.JOB_SINGLE_SITE, owner, args, parent_id=parent_id or prompt.job_id,
                     prerequisite_job_id=_prerequisite(prompt), num_records=n)
    return job_wire(job)


@router.get("/poet/single_site")
def get_single_site(request: Request, job_id: str = Query(...),
                    page_size: int = Query(10000, ge=1, le=POET_MAX_PAGE_SIZE),
                    page_offset: int = Query(0, ge=0), owner: str = Depends(caller_owner)):
    """Paged single-site results: the wild type (``X0X``) first, then ``A1R, A1N, ...``
    (``sequence`` holds the mutation code, ``name`` is null). 409 until the job succeeded."""
    store = _store(request)
    job = _poet_job(store, job_id, owner, {pj.JOB_SINGLE_SITE})
    return _results_envelope(store, job, page_size, page_offset)


@router.post("/poet/generate")
def post_generate(
    request: Request,
    prompt_id: str = Query(...),
    generate_n: int = Query(100, ge=1, le=1000),
    temperature: float = Query(1.0, ge=0.1, le=2.0),
    topk: int | None = Query(None, ge=1, le=20),
    topp: float | None = Query(None, ge=0.0, le=1.0),
    maxlen: int = Query(5000, ge=5, le=10000),
    seed: int | None = Query(None, ge=0, le=4294967295),
    owner: str = Depends(caller_owner),
):
    """Generate ``generate_n`` sequences from the prompt (same ``seed`` and parameters give the
    same sequences); each is scored under every replicate."""
    svc = get_service(request.app)
    prompt = _resolve_prompt_job(svc.store, prompt_id, owner)
    if seed is None:
        seed = random.randrange(2**32)
    args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "generate_n": generate_n,
            "temperature": temperature, "topk": topk, "topp": topp, "maxlen": maxlen, "seed": seed}
    job = svc.submit(pj.JOB_GENERATE, owner, args, parent_id=prompt.job_id,
                     prerequisite_job_id=_prerequisite(prompt), num_records=generate_n)
    return job_wire(job)


@router.get("/poet/generate")
def get_generate(request: Request, job_id: str | None = Query(None), parent_id: str | None = Query(None),
                 page_size: int = Query(POET_MAX_PAGE_SIZE, ge=1, le=POET_MAX_PAGE_SIZE),
                 page_offset: int = Query(0, ge=0), owner: str = Depends(caller_owner)):
    """Generated sequences as headerless CSV rows ``name,sequence,score_1,...,score_N``
    (``generated-sequence-1`` ..). 409 until the job succeeded."""
    jid = job_id or parent_id
    if jid is None:
        raise MissingParameterError("job_id is required")
    store = _store(request)
    job = _poet_job(store, jid, owner, {pj.JOB_GENERATE})
    rows = _page(pj.read_result(store, job), page_size, page_offset)
    return _csv_response([[r["name"], r["sequence"], *[repr(float(x)) for x in r["score"]]] for r in rows], job)


for _prefix in ("/poet/align", "/align"):
    router.add_api_route(f"{_prefix}/msa", post_msa, methods=["POST"])
    router.add_api_route(f"{_prefix}/msa", get_inputs, methods=["GET"])
    router.add_api_route(f"{_prefix}/inputs", get_inputs, methods=["GET"])
    router.add_api_route(f"{_prefix}/prompt", post_prompt, methods=["POST"])
    router.add_api_route(f"{_prefix}/upload_prompt", post_upload_prompt, methods=["POST"])


# ---------------------------------------------------------------------- wiring
def _startup(app: FastAPI) -> None:
    get_service(app)


def _shutdown(app: FastAPI) -> None:
    svc = getattr(app.state, "job_service", None)
    if svc is not None:
        svc.stop()
        app.state.job_service = None


def include(app: FastAPI) -> None:
    """Add the OpenProtein routes under ``/api/v1``, the user-token validator and the job
    service's start-up (re-queue unfinished jobs) and shut-down hooks."""
    app.include_router(public, prefix="/api/v1")
    app.include_router(router, prefix="/api/v1")
    importlib.import_module("plmserve.api.openprotein_v1").include(app)  # openprotein-python 0.17 surface
    add_token_validator(app, _user_token_validator)
    app.state.startup.append(_startup)
    app.state.shutdown.append(_shutdown)
