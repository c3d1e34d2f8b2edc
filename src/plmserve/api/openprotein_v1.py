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

import csv
import io
import json
import logging
import random
import struct
import zipfile
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from plmserve.api import access_log
from plmserve.api.openprotein import _prerequisite, _resolve_prompt_job, _store, caller_owner, get_service, job_wire
from plmserve.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    InvalidParameterError,
    MissingParameterError,
    NotFoundError,
)
from plmserve.jobs import poet as pj
from plmserve.jobs.poet_v1 import (
    ARRAY_JOB_TYPES,
    ART_ARRAYS,
    JOB_ATTN,
    JOB_EMBED,
    JOB_LOGITS,
    JOB_SCORE_INDEL,
    REDUCTIONS,
    V1_SCORE_TYPES,
    indel_variants,
    load_arrays,
    npy_bytes,
)
from plmserve.jobs.store import CANCELED, FAILURE, JOB_STATUSES, SUCCESS

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


# ---------------------------------------------------------------------- jobs filters
def parse_status(value: str | None) -> str | None:
    """A ``v1/jobs`` status filter, upper-cased; 400 for anything but the six job statuses."""
    if value is None or value == "":
        return None
    status = value.strip().upper()
    if status not in JOB_STATUSES:
        raise InvalidParameterError(f"status: unknown job status {value!r}; expected one of {', '.join(JOB_STATUSES)}")
    return status


def parse_iso_datetime(value: str | None, what: str) -> datetime | None:
    """An ISO 8601 date-time (``2026-01-01T00:00:00``, optional offset; naive means UTC) as an
    aware UTC datetime. Numbers (epoch seconds) and other formats are a 400."""
    if value is None or value == "":
        return None
    text = value.strip()
    try:
        if not text[:4].isdigit() or "-" not in text[:8]:
            raise ValueError
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise InvalidParameterError(
            f"{what}: {value!r} is not an ISO 8601 date-time (e.g. 2026-01-01T00:00:00 or 2026-01-01T00:00:00+00:00)"
        ) from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


# ---------------------------------------------------------------------- model registry
_AA = list("ARNDCQEGHILKMFPSTWYV")
_AA_NAMES = ["Alanine", "Arginine", "Asparagine", "Aspartic acid", "Cysteine", "Glutamine", "Glutamic acid",
             "Glycine", "Histidine", "Isoleucine", "Leucine", "Lysine", "Methionine", "Phenylalanine", "Proline",
             "Serine", "Threonine", "Tryptophan", "Tyrosine", "Valine"]
_EXTRA = {"X": "Unknown (masked)", "O": "Pyrrolysine", "U": "Selenocysteine", "B": "Asparagine or aspartic acid",
          "Z": "Glutamine or glutamic acid"}
PROPRIETARY = {"poet-2": "PoET-2 is OpenProtein.AI's proprietary model: it has no public weights, so plmserve "
                         "cannot serve it. Use model 'poet' (PoET-1, open weights) instead."}


def _poet_metadata(models) -> dict[str, Any]:
    """ModelMetadata of PoET-1 (spec §6): tokens in PoET's vocabulary order (ids 0..19 the 20
    amino acids; X, O, U, B, Z accepted on input); ``dimension`` is the loaded engine's hidden
    size, else 1024 (the released checkpoint)."""
    dimension = 1024
    if "poet" in models.loaded():
        cfg = getattr(models.get("poet", family="poet"), "config", None)
        dimension = int(getattr(cfg, "hidden_dim", dimension))
    tokens = [[{"id": i, "token": t, "primary": True, "description": d}]
              for i, (t, d) in enumerate(zip(_AA, _AA_NAMES))]
    tokens += [[{"id": 20 + i, "token": t, "primary": False, "description": d}]
               for i, (t, d) in enumerate(_EXTRA.items())]
    return {
        "model_id": "poet",
        "description": {
            "citation_title": "PoET: A generative model of protein families as sequences-of-sequences",
            "doi": "10.48550/arXiv.2306.06156",
            "summary": "PoET protein family model (PoET-1, open weights), served by plmserve",
        },
        "max_sequence_length": 4096,
        "dimension": dimension,
        "output_types": ["score", "score_single_site", "score_indel", "generate", "embed", "logits"],
        "input_tokens": _AA + list(_EXTRA),
        "output_tokens": list(_AA),
        "token_descriptions": tokens,
    }


_ESM_FAMILIES = ("esm2", "esmc")
_ESMC_TITLE = "ESM Cambrian: Revealing the mysteries of proteins with unsupervised learning (EvolutionaryScale, " \
              "2024-12-04)"
_ESM_CITATIONS = {
    "esm2": ("Evolutionary-scale prediction of atomic-level protein structure with a language model",
             "10.1126/science.ade2574"),
    "esmc": (_ESMC_TITLE, None),  # a blog post, no DOI
}


def _esm_model_id(spec) -> str:
    """OpenProtein's id of an ESM registry model: the fair-esm name for ESM-2
    (``esm2_t33_650M_UR50D``), the slug for ESM C (``esmc-300m``, spec esmc-and-biolm-v3 §1)."""
    return spec.config["fair_esm_name"] if spec.family == "esm2" else spec.slug


def _esm_max_residues(spec) -> int:
    """Longest accepted sequence: 1022 for ESM-2 (1024 learned positions less BOS/EOS), 16384 for
    ESM C (Forge's limit; rotary positions)."""
    if spec.family == "esmc":
        from plmserve.models.esmc.weights import MAX_POSITIONS

        return MAX_POSITIONS - 2
    return 1022


def _esm_metadata(spec) -> dict[str, Any]:
    """ModelMetadata of an ESM-2 or ESM C registry model under OpenProtein's id (the SDK's
    ``ESMModel`` ids). ESM C has no attention output in plmserve (its engine exposes none), so its
    output types are ``embed`` and ``logits``; its summary carries the weights' licence
    (esmc-600m: non-commercial)."""
    from plmserve.models.esm2.alphabet import STANDARD_AA
    from plmserve.models.esmc.alphabet import CANONICAL_AA

    title, doi = _ESM_CITATIONS[spec.family]
    summary = f"{spec.description} (plmserve model '{spec.slug}')"
    if spec.family == "esmc" and spec.licence:
        summary += f". Weights licence: {spec.licence}"
    return {
        "model_id": _esm_model_id(spec),
        "description": {"citation_title": title, "doi": doi, "summary": summary},
        "max_sequence_length": _esm_max_residues(spec),
        "dimension": int(spec.config["embed_dim"]),
        "output_types": ["embed", "logits", "attn"] if spec.family == "esm2" else ["embed", "logits"],
        "input_tokens": _AA + list(_EXTRA),
        # the columns of the 20-wide logits, in the engine's order
        "output_tokens": list(STANDARD_AA) if spec.family == "esm2" else list(CANONICAL_AA),
        "token_descriptions": None,
    }


def _esm_specs() -> dict[str, Any]:
    """OpenProtein model id -> registry spec, for every ESM-2 and ESM C model."""
    from plmserve.models.registry import list_models as registry_models

    return {_esm_model_id(s): s for fam in _ESM_FAMILIES for s in registry_models(fam)}


def _models(state) -> list[dict[str, Any]]:
    """Every servable model's metadata (``state``: the app state, for the loaded models)."""
    return [_poet_metadata(state.models)] + [_esm_metadata(s) for s in _esm_specs().values()]


def _model_or_404(model_id: str, state) -> dict[str, Any]:
    for m in _models(state):
        if m["model_id"] == model_id:
            return m
    if model_id in PROPRIETARY:
        raise NotFoundError(PROPRIETARY[model_id])
    known = ", ".join(m["model_id"] for m in _models(state))
    raise NotFoundError(f"unknown model '{model_id}'; this server serves: {known}")


@router.get("/embeddings/models")
def list_models(request: Request, verbose: bool = Query(False), _owner: str = Depends(caller_owner)):
    """Every model this server can serve: ModelMetadata objects with ``verbose=true``, else ids."""
    models = _models(request.app.state)
    return models if verbose else [m["model_id"] for m in models]


@router.get("/embeddings/models/{model_id}")
def get_model(model_id: str, request: Request, _owner: str = Depends(caller_owner)):
    """One model's ModelMetadata (404 for unknown models; ``poet-2``: no public weights)."""
    return _model_or_404(model_id, request.app.state)


# ---------------------------------------------------------------------- PoET actions (§7)
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_id: str | None = None
    query_id: str | list[str] | None = None
    use_query_structure_in_decoder: bool | None = None
    decoder_type: str | None = None
    design_id: str | None = None
    ensemble_weights: list[float] | None = None
    ensemble_method: str | None = None


class ScoreBody(_Body):
    sequences: list[str] = Field(..., min_length=1, max_length=100_000)


class SingleSiteBody(_Body):
    base_sequence: str


class IndelBody(_Body):
    base_sequence: str
    insert: str | None = None
    delete: list[int] | None = None


class GenerateBody(_Body):
    n_sequences: int = Field(100, ge=1, le=1000)
    temperature: float = Field(1.0, ge=0.1, le=2.0)
    maxlen: int = Field(1000, ge=5, le=10000)
    topk: float | None = Field(None, ge=1, le=20)
    topp: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**32)


class EmbedBody(_Body):
    sequences: list[str] = Field(..., min_length=1, max_length=10_000)
    reduction: str | None = None


def _poet_only(model: str, request: Request) -> None:
    _model_or_404(model, request.app.state)
    if model != "poet":
        raise NotFoundError(f"model '{model}' has no PoET actions; use model 'poet'")


def _prompt_for(body: _Body, store, owner: str):
    """The prompt job of a PoET-1 request (400 when absent; PoET-2-only fields rejected)."""
    for key in ("query_id", "design_id", "ensemble_weights", "decoder_type"):
        if getattr(body, key):
            raise InvalidParameterError(f"'{key}' is a PoET-2 option; PoET-1 (model 'poet') does not take it")
    if not body.prompt_id:
        raise MissingParameterError("prompt_id is required: PoET-1 scores and generates conditioned on a prompt")
    return _resolve_prompt_job(store, body.prompt_id, owner)


def _submit_scoring(request: Request, owner: str, job_type: str, body: _Body, rows: list[list[str]],
                    extra: dict[str, Any] | None = None):
    svc = get_service(request.app)
    prompt = _prompt_for(body, svc.store, owner)
    args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "n_variants": len(rows),
            "model_id": "poet", **(extra or {})}
    return svc.submit(job_type, owner, args, parent_id=prompt.job_id, prerequisite_job_id=_prerequisite(prompt),
                      num_records=len(rows), artifacts={pj.ART_INPUT: json.dumps(rows).encode()})


def _check_all(seqs: list[str], what: str) -> list[str]:
    return [pj.check_sequence(s, what=what, item=i) for i, s in enumerate(seqs, start=1)]


@router.post("/embeddings/models/{model}/score")
def post_score(model: str, body: ScoreBody, request: Request, owner: str = Depends(caller_owner)):
    """Score ``sequences`` under every prompt replicate (job ``/poet/score``; rows named
    ``sequence-{i}`` in input order)."""
    _poet_only(model, request)
    seqs = _check_all(body.sequences, "sequences: item")
    rows = [[n, s] for n, s in zip(pj.score_names(len(seqs)), seqs)]
    return job_wire(_submit_scoring(request, owner, pj.JOB_SCORE_NEW, body, rows))


@router.post("/embeddings/models/{model}/score/indel")
def post_indel(model: str, body: IndelBody, request: Request, owner: str = Depends(caller_owner)):
    """Score the base sequence and every insertion/deletion of it (job ``/poet/score/indel``;
    naming in :func:`plmserve.jobs.poet_v1.indel_variants`)."""
    _poet_only(model, request)
    base = pj.check_sequence(body.base_sequence, what="base_sequence")
    insert = pj.check_sequence(body.insert, what="insert") if body.insert else None
    rows = [list(r) for r in indel_variants(base, insert, body.delete)]
    return job_wire(_submit_scoring(request, owner, JOB_SCORE_INDEL, body, rows,
                                    {"base_sequence": base, "insert": insert, "delete": body.delete}))


@router.post("/embeddings/models/{model}/score_single_site")
def post_single_site(model: str, body: SingleSiteBody, request: Request, owner: str = Depends(caller_owner)):
    """Score the base sequence (row ``WT``) and every single substitution (job
    ``/poet/single_site``)."""
    _poet_only(model, request)
    seq = pj.check_sequence(body.base_sequence, what="base_sequence")
    svc = get_service(request.app)
    prompt = _prompt_for(body, svc.store, owner)
    args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "variant": seq,
            "parent_id": None, "model_id": "poet"}
    job = svc.submit(pj.JOB_SINGLE_SITE, owner, args, parent_id=prompt.job_id,
                     prerequisite_job_id=_prerequisite(prompt), num_records=1 + 19 * len(seq))
    return job_wire(job)


@router.post("/embeddings/models/{model}/generate")
def post_generate(model: str, body: GenerateBody, request: Request, owner: str = Depends(caller_owner)):
    """Sample ``n_sequences`` from the prompt (job ``/poet/generate``; the same seed and
    parameters give the same sequences)."""
    _poet_only(model, request)
    svc = get_service(request.app)
    prompt = _prompt_for(body, svc.store, owner)
    seed = body.seed if body.seed is not None else random.randrange(2**32)
    args = {"prompt_id": prompt.job_id, "root_msa": prompt.args.get("root_msa"), "generate_n": body.n_sequences,
            "n_sequences": body.n_sequences, "temperature": body.temperature,
            "topk": int(body.topk) if body.topk is not None else None, "topp": body.topp, "maxlen": body.maxlen,
            "seed": seed, "model_id": "poet"}
    job = svc.submit(pj.JOB_GENERATE, owner, args, parent_id=prompt.job_id,
                     prerequisite_job_id=_prerequisite(prompt), num_records=body.n_sequences)
    return job_wire(job)


def _submit_arrays(model: str, kind: str, body: EmbedBody, request: Request, owner: str):
    _model_or_404(model, request.app.state)
    reduction = body.reduction.upper() if body.reduction else None
    if kind == JOB_EMBED and reduction not in (None, *REDUCTIONS):
        raise InvalidParameterError(f"reduction must be one of {', '.join(REDUCTIONS)} (or omitted for per-residue)")
    extra = {"reduction": reduction} if kind == JOB_EMBED else {}
    esm = _esm_specs().get(model)
    if esm is not None:
        from plmserve.models.esm2.alphabet import validate_sequences

        for key in ("prompt_id", "query_id", "design_id"):
            if getattr(body, key):
                raise InvalidParameterError(f"'{key}': model '{model}' ({esm.family}) takes no prompt or query")
        seqs = validate_sequences(body.sequences, max_residues=_esm_max_residues(esm))
        rows = [[f"sequence-{i}", s] for i, s in enumerate(seqs, start=1)]
        args = {"model_id": model, "model": esm.slug, "family": esm.family, "n_variants": len(rows), **extra}
        job = get_service(request.app).submit(kind, owner, args, num_records=len(rows),
                                              artifacts={pj.ART_INPUT: json.dumps(rows).encode()})
        return job_wire(job)
    _poet_only(model, request)
    seqs = _check_all(body.sequences, "sequences: item")
    rows = [[f"sequence-{i}", s] for i, s in enumerate(seqs, start=1)]
    return job_wire(_submit_scoring(request, owner, kind, body, rows, extra))


@router.post("/embeddings/models/{model}/embed")
def post_embed(model: str, body: EmbedBody, request: Request, owner: str = Depends(caller_owner)):
    """PoET embeddings (job ``/embeddings/embed``): per residue, or MEAN/SUM over residues
    (conventions in :mod:`plmserve.jobs.poet_v1`)."""
    return _submit_arrays(model, JOB_EMBED, body, request, owner)


@router.post("/embeddings/models/{model}/logits")
def post_logits(model: str, body: EmbedBody, request: Request, owner: str = Depends(caller_owner)):
    """PoET per-residue logits (job ``/embeddings/logits``)."""
    body.reduction = None
    return _submit_arrays(model, JOB_LOGITS, body, request, owner)


@router.post("/embeddings/models/{model}/attn")
def post_attn(model: str, body: EmbedBody, request: Request, owner: str = Depends(caller_owner)):
    """Attention maps of the last layer (job ``/embeddings/attn``; ESM-2 only: PoET has none,
    and the SDK refuses it client-side too)."""
    _model_or_404(model, request.app.state)
    esm = _esm_specs().get(model)
    if esm is None or esm.family != "esm2":
        raise InvalidParameterError(f"model '{model}' does not provide attention maps (output types: embed, logits)")
    body.reduction = None
    return _submit_arrays(model, JOB_ATTN, body, request, owner)


# ---------------------------------------------------------------------- results (§8)
def _done(job) -> None:
    """409 unless the job succeeded (canceled and failed jobs have no results)."""
    if job.status == SUCCESS:
        return
    if job.status == CANCELED:
        raise ConflictError(f"job {job.job_id} was canceled; it has no results")
    if job.status == FAILURE:
        raise ConflictError(f"job {job.job_id} failed: {job.failure_message}")
    raise ConflictError(f"job {job.job_id} has not produced results yet (status {job.status})")


def _job_of(request: Request, job_id: str, owner: str, types) -> Any:
    job = _store(request).get_job(job_id, owner)
    if job.job_type not in types:
        raise InvalidInputError(f"job {job_id} is a {job.job_type} job, not one of {', '.join(sorted(types))}")
    _done(job)
    return job


def _csv(rows: list[list[Any]]) -> Response:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return Response(content=out.getvalue().encode(), media_type="text/csv")


def _scores(vals) -> list[str]:
    return [repr(float(x)) for x in vals]


@router.get("/embeddings/{job_id}/scores")
def get_scores(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """CSV with a header: ``name,sequence,score_1..N`` (score, indel) or ``mut_code,score_1..N``
    (single-site; the wild-type row is ``WT``), one score per prompt replicate, input order."""
    job = _job_of(request, job_id, owner, {pj.JOB_SCORE, *V1_SCORE_TYPES, pj.JOB_SINGLE_SITE})
    rows = pj.read_result(_store(request), job)
    n = len(rows[0]["score"]) if rows else 0
    header = [f"score_{i}" for i in range(1, n + 1)]
    if job.job_type == pj.JOB_SINGLE_SITE:
        body = [["mut_code", *header]]
        body += [["WT" if r["sequence"] == pj.WT_CODE else r["sequence"], *_scores(r["score"])] for r in rows]
    else:
        body = [["name", "sequence", *header]]
        body += [[r["name"], r["sequence"], *_scores(r["score"])] for r in rows]
    return _csv(body)


@router.get("/embeddings/{job_id}/generate")
def get_generated(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """CSV with a header: ``name,sequence,score_1..N`` (``generated-sequence-{i}``)."""
    job = _job_of(request, job_id, owner, {pj.JOB_GENERATE})
    rows = pj.read_result(_store(request), job)
    n = len(rows[0]["score"]) if rows else 0
    body = [["name", "sequence", *[f"score_{i}" for i in range(1, n + 1)]]]
    body += [[r["name"], r["sequence"], *_scores(r["score"])] for r in rows]
    return _csv(body)


def _arrays(request: Request, job) -> tuple[list[str], dict[int, Any]]:
    store = _store(request)
    data = store.get_artifact(job.job_id, ART_ARRAYS)
    if data is None:
        raise ConflictError(f"job {job.job_id} has no results")
    seqs = [s for _, s in json.loads(store.get_artifact(job.job_id, pj.ART_INPUT) or b"[]")]
    return seqs, load_arrays(data)


@router.get("/embeddings/{job_id}/stream")
def get_stream(job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """Every array of an embed/logits job in submission order, each framed as an 8-byte
    big-endian length followed by that many bytes of ``.npy``."""
    job = _job_of(request, job_id, owner, ARRAY_JOB_TYPES)
    seqs, arrays = _arrays(request, job)
    out = bytearray()
    for i in range(len(seqs)):
        blob = npy_bytes(arrays[i])
        out += struct.pack(">Q", len(blob)) + blob
    return Response(content=bytes(out), media_type="application/octet-stream")


_KINDS = {"embed": JOB_EMBED, "logits": JOB_LOGITS, "attn": JOB_ATTN}


@router.get("/embeddings/{kind}/{job_id}/sequences")
def get_sequences(kind: str, job_id: str, request: Request, owner: str = Depends(caller_owner)):
    """The sequences a job was submitted with (JSON list, input order). Served for any PoET job
    (the SDK asks ``embed/{job}/sequences`` for score jobs too)."""
    store = _store(request)
    job = store.get_job(job_id, owner)
    if job.job_type == pj.JOB_SINGLE_SITE:
        return [job.args.get("variant")]
    if job.job_type == pj.JOB_GENERATE:
        _done(job)
        return [r["sequence"] for r in pj.read_result(store, job)]
    data = store.get_artifact(job.job_id, pj.ART_INPUT)
    if data is None:
        raise InvalidInputError(f"job {job_id} is a {job.job_type} job, which has no submitted sequences")
    return [s for _, s in json.loads(data)]


@router.get("/embeddings/{kind}/{job_id}/{sequence}")
def get_array(kind: str, job_id: str, sequence: str, request: Request, owner: str = Depends(caller_owner)):
    """The ``.npy`` array of one submitted sequence of an embed/logits job."""
    if kind not in _KINDS:
        raise NotFoundError(f"unknown result kind '{kind}'; expected one of {', '.join(_KINDS)}")
    job = _job_of(request, job_id, owner, {_KINDS[kind]})
    seqs, arrays = _arrays(request, job)
    seq = sequence.strip().upper()
    if seq not in seqs:
        shown = sequence[:30] + ("..." if len(sequence) > 30 else "")
        raise NotFoundError(f"sequence {shown} is not part of job {job_id}")
    return Response(content=npy_bytes(arrays[seqs.index(seq)]), media_type="application/octet-stream")


# ---------------------------------------------------------------------- prompt service (§5)
MAX_PROMPT_REPLICATES = 100
MAX_ZIP_BYTES = 64 * 2**20


def _is_uploaded(job) -> bool:
    return job.args.get("root_msa") is None and job.args.get("msa_method") == "CUSTOM"


def prompt_metadata(job) -> dict[str, Any]:
    """PromptMetadata of a prompt job: ``id`` = the job id; ``job_id`` null for an uploaded
    prompt (status SUCCESS), else the ``/align/prompt`` job (its status)."""
    uploaded = _is_uploaded(job)
    return {
        "id": job.job_id,
        "name": job.args.get("name") or job.job_id,
        "description": job.args.get("description"),
        "created_date": job.created_date.isoformat(),
        "num_replicates": int(job.args.get("replicates") or 1),
        "job_id": None if uploaded else job.job_id,
        "status": SUCCESS if uploaded else job.status,
    }


def _prompt_job(request: Request, prompt_id: str, owner: str):
    try:
        job = _store(request).get_job(prompt_id, owner)
    except NotFoundError:
        raise NotFoundError(f"prompt {prompt_id} not found") from None
    if job.job_type != pj.JOB_PROMPT:
        raise NotFoundError(f"prompt {prompt_id} not found (job {prompt_id} is a {job.job_type} job)")
    return job


def parse_context_zip(data: bytes, index: int) -> list[tuple[str, str]]:
    """One replicate of ``create_prompt``: a zip whose ``.fasta`` entries hold the sequences
    (``unnamed-{i:06}`` names kept). Structures (``.cif``/``.pdb``) and complexes (``:``) need
    PoET-2 and are refused with a 400 naming the replicate and entry."""
    where = f"context {index} (replicate {index + 1})"
    if len(data) > MAX_ZIP_BYTES:
        raise InvalidInputError(f"{where}: larger than {MAX_ZIP_BYTES // 2**20} MiB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, ValueError):
        raise InvalidInputError(f"{where}: not a zip file") from None
    out: list[tuple[str, str]] = []
    for name in names:
        lower = name.lower()
        if name.endswith("/"):
            continue
        if lower.endswith((".cif", ".pdb")):
            raise InvalidInputError(f"{where}: entry {name!r} is a structure; structure prompts need PoET-2, "
                                    "which has no public weights. Send sequences (.fasta) for PoET-1")
        if not lower.endswith((".fasta", ".fa", ".faa")):
            raise InvalidInputError(f"{where}: entry {name!r}: unsupported file type (expected .fasta)")
        try:
            text = zf.read(name).decode("utf-8")
        except (UnicodeDecodeError, zipfile.BadZipFile, RuntimeError):
            raise InvalidInputError(f"{where}: entry {name!r} is not readable UTF-8 text") from None
        if not text.strip():
            continue
        from plmserve.bio.fasta import parse_fasta

        for k, rec in enumerate(parse_fasta(text, source=f"{where}: {name}"), start=1):
            if ":" in rec.sequence:
                raise InvalidInputError(f"{where}: {name} record {k} ({rec.name}) is a complex ('{':'}' chain "
                                        "separator); complexes need PoET-2, PoET-1 takes single chains")
            out.append((rec.name, pj.check_sequence(rec.sequence, what=f"{where}: {name} record", item=k)))
    return out


@router.post("/prompt/create_prompt")
async def create_prompt(request: Request, owner: str = Depends(caller_owner)):
    """Upload a prompt: one ``context`` zip part per replicate (optional form fields ``name``,
    ``description``). Stored as a finished prompt (usable by every PoET route, both API
    generations). Answers PromptMetadata with status 200."""
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise MissingParameterError("send the prompt as multipart/form-data with one 'context' zip part per replicate")
    form = await request.form()
    parts = form.getlist("context")
    if not parts:
        raise MissingParameterError("no 'context' part: send one zip per prompt replicate")
    if len(parts) > MAX_PROMPT_REPLICATES:
        raise InvalidParameterError(f"{len(parts)} replicates; at most {MAX_PROMPT_REPLICATES}")
    replicates = []
    for i, part in enumerate(parts):
        data = part.encode() if isinstance(part, str) else await part.read()
        replicates.append(parse_context_zip(data, i))
    name, description = form.get("name"), form.get("description")
    args = {"root_msa": None, "parent_id": None, "msa_method": "CUSTOM", "replicates": len(replicates),
            "name": str(name) if name else None, "description": str(description) if description else None}
    store = _store(request)
    job = await run_in_threadpool(
        lambda: store.create_job(pj.JOB_PROMPT, owner, args, status=SUCCESS, num_records=len(replicates),
                                 artifacts={pj.ART_PROMPT: pj.prompt_json(replicates)}))
    return prompt_metadata(job)


@router.get("/prompt")
def list_prompts(request: Request, owner: str = Depends(caller_owner)):
    """The caller's prompts (uploaded and sampled), newest first."""
    return [prompt_metadata(j) for j in _store(request).list_jobs(owner, job_type=pj.JOB_PROMPT, limit=10000)]


def _query_response(q) -> Response:
    # exact media type (no '; charset=...') and an unquoted file name: the SDK compares both literally
    return Response(content=q.content, headers={"Content-Type": q.content_type,
                                                "Content-Disposition": f"attachment; filename={q.filename}"})


@router.post("/prompt/query")
async def create_query(request: Request, owner: str = Depends(caller_owner)):
    """Store a PoET-2 query (multipart part ``query``: FASTA or mmCIF). Answers ``{id,
    created_date}`` (a lowercase UUIDv4) with status 200."""
    from plmserve.jobs.queries import add_query

    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise MissingParameterError("send the query as multipart/form-data part 'query' (FASTA or mmCIF)")
    form = await request.form()
    part = form.get("query")
    if part is None:
        raise MissingParameterError("the multipart part 'query' is missing")
    data = part.encode() if isinstance(part, str) else await part.read()
    filename = getattr(part, "filename", None) or ""
    ctype = (getattr(part, "content_type", None) or "").split(";")[0].strip().lower()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("query: not UTF-8 text") from None
    if not text.strip():
        raise InvalidInputError("query: empty file")
    is_cif = filename.lower().endswith(".cif") or ctype == "chemical/x-mmcif" or text.lstrip().startswith("data_")
    if is_cif:
        fname, media = "query.cif", "chemical/x-mmcif"
    else:
        from plmserve.bio.fasta import parse_fasta

        recs = parse_fasta(text, source="query")
        seq = recs[0].sequence.upper()
        for pos, ch in enumerate(seq, start=1):
            if ch not in pj.ACCEPTED_LETTERS + "?:":
                raise InvalidInputError(f"query: invalid character {ch!r} at position {pos}; allowed: "
                                        f"{pj.ACCEPTED_LETTERS}, '?' (variable length) and ':' (chain separator)",
                                        position=pos, character=ch)
        if any(not chain for chain in seq.split(":")):
            raise InvalidInputError("query: empty chain (a query cannot have an empty chain)")
        fname, media = "query.fasta", "text/x-fasta"
    q = await run_in_threadpool(add_query, _store(request), owner, fname, media, data)
    return {"id": q.query_id, "created_date": q.created_date.isoformat()}


@router.get("/prompt/query/{query_id}")
def get_query_metadata(query_id: str, request: Request, owner: str = Depends(caller_owner)):
    """QueryMetadata ``{id, created_date}`` (404 for unknown or foreign ids)."""
    from plmserve.jobs.queries import get_query

    q = get_query(_store(request), query_id, owner)
    return {"id": q.query_id, "created_date": q.created_date.isoformat()}


@router.get("/prompt/query/{query_id}/content")
def get_query_content(query_id: str, request: Request, owner: str = Depends(caller_owner)):
    """The query file, ``Content-Type: text/x-fasta`` or ``chemical/x-mmcif`` exactly."""
    from plmserve.jobs.queries import get_query

    return _query_response(get_query(_store(request), query_id, owner))


@router.get("/prompt/{prompt_id}")
def get_prompt(prompt_id: str, request: Request, owner: str = Depends(caller_owner)):
    """PromptMetadata of one of the caller's prompts (sampled prompts under their job id)."""
    return prompt_metadata(_prompt_job(request, prompt_id, owner))


def prompt_zip(replicates) -> bytes:
    """The prompt as the SDK reads it: an outer zip of ``context-{i}.zip`` (in order), each
    holding ``000000.fasta`` with the replicate's ungapped sequences."""
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as oz:
        for i, rep in enumerate(replicates):
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as iz:
                if rep:
                    iz.writestr("000000.fasta", "".join(f">{n}\n{s}\n" for n, s in rep))
            oz.writestr(f"context-{i}.zip", inner.getvalue())
    return outer.getvalue()


@router.get("/prompt/{prompt_id}/content")
def get_prompt_content(prompt_id: str, request: Request, owner: str = Depends(caller_owner)):
    """The prompt's replicates as a zip of ``context-*.zip`` (409 while a sampling job runs)."""
    job = _prompt_job(request, prompt_id, owner)
    _done(job)
    replicates = pj.load_prompt(_store(request), job.job_id)
    return Response(content=prompt_zip(replicates), media_type="application/zip")


# ---------------------------------------------------------------------- wiring
def _install_log_filters() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "plmserve.access"):
        access_log.install(name)


def _startup(app: FastAPI) -> None:
    _install_log_filters()  # again: uvicorn may have applied its logging configuration since


def include(app: FastAPI) -> None:
    """Add the v1 routes under ``/api/v1`` and the credential filter of uvicorn's logs."""
    _install_log_filters()
    app.state.startup.append(_startup)
    app.include_router(public, prefix="/api/v1")
    app.include_router(router, prefix="/api/v1")
