"""BioLM-compatible ESM-2 routes: ``POST /api/v2/<slug>/{encode,predict,log_prob}/``.

The request and response JSON follow the BioLM ESM-2 API (seed ``002``; facts in
``specs/esm2-api.md``)::

    POST /api/v2/esm2-8m/encode/
    {"params": {"include": ["mean", "contacts"], "repr_layers": [-1]},
     "items": [{"sequence": "MKTAYIAKQR"}]}
    -> {"results": [{"sequence_index": 0, "mean_representations": {"6": [...320 floats]},
                     "contacts": [[...L floats] x L]}]}

Plus one route beyond the seed, ``POST /api/v2/<slug>/score_variants/`` (masked-marginal
variant effect scores, the ESM-1v / ProteinGym zero-shot method).

This module is a thin adapter: the numbers come from the ESM-2 engine
(``plmserve.models.esm2``); here live the wire schema, the request limits and the conversion of
numpy arrays to BioLM's JSON (layer keys as strings, float32 values as JSON numbers).
encode, predict, log_prob and score_variants go through the model's batching scheduler
(:func:`plmserve.serving.scheduler.run_batched`): requests of all clients share forward passes,
fairly, and the event loop never waits for a model.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Sequence

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from plmserve.api.auth import Principal, require_principal
from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.registry import get_spec
from plmserve.serving.scheduler import run_batched

#: Outputs of ``encode`` a caller may ask for in ``params.include`` (BioLM's names).
ENCODE_INCLUDE: tuple[str, ...] = ("mean", "per_token", "bos", "contacts", "logits", "attentions")
#: Masked-marginal flavours of ``score_variants`` (see ``specs/esm2-api.md``).
SCORE_METHODS: tuple[str, ...] = ("masked_marginals", "wt_marginals")
MASK = "<mask>"

# ---------------------------------------------------------------------------------------------
# Wire schema (pydantic; shown in /docs)
# ---------------------------------------------------------------------------------------------


class SequenceItem(BaseModel):
    """One model input."""

    model_config = ConfigDict(extra="forbid")
    sequence: str = Field(
        ...,
        description="Protein sequence, one-letter codes of the fair-esm alphabet "
        "(LAGVSERTIDPKQNFYMHWC + XBUZO.-); lower case is accepted. predict: one or more '<mask>'.",
        examples=["MKTAYIAKQRQISFVKSHFSRQ"],
    )


class EncodeParams(BaseModel):
    """``params`` of encode: which outputs, from which layers."""

    model_config = ConfigDict(extra="forbid")
    include: list[str] = Field(
        default_factory=lambda: ["mean"],
        description="Outputs to return: any of mean, per_token, bos, contacts, logits, attentions.",
        json_schema_extra={"items": {"type": "string", "enum": list(ENCODE_INCLUDE)}},
    )
    repr_layers: list[int] = Field(
        default_factory=lambda: [-1],
        description="Layers for mean/per_token/bos: 0 = embeddings, n_layers = last; negative "
        "values count from the end (-1 = last).",
    )


class EncodeRequest(BaseModel):
    """Body of ``POST /api/v2/<slug>/encode/``."""

    params: EncodeParams | None = None
    items: list[SequenceItem]


class PredictRequest(BaseModel):
    """Body of ``POST /api/v2/<slug>/predict/`` (``params`` is accepted and ignored, as in BioLM)."""

    params: dict[str, Any] | None = None
    items: list[SequenceItem]


class LogProbParams(BaseModel):
    """``params`` of log_prob (optional; beyond the seed)."""

    method: Literal["pll", "biolm"] = Field(
        "pll",
        description="pll: pseudo-log-likelihood, sum over residues of log p(x_i | x with i masked) "
        "(L forward passes, batched); biolm: BioLM's action, one unmasked pass, log-softmax over the "
        "20 standard amino acids summed over standard residues")


class LogProbRequest(BaseModel):
    """Body of ``POST /api/v2/<slug>/log_prob/``."""

    params: LogProbParams | None = None
    items: list[SequenceItem]


class EncodeResult(BaseModel):
    """One encode result; only the requested keys are present. Layer keys are strings."""

    sequence_index: int = Field(..., description="0-based index of the item in the request")
    mean_representations: dict[str, list[float]] | None = Field(
        None, description="{layer: [dim]} mean over residue positions (BOS/EOS excluded)")
    representations: dict[str, list[list[float]]] | None = Field(
        None, description="{layer: [L][dim]} per-residue hidden states (include per_token)")
    bos_representations: dict[str, list[float]] | None = Field(
        None, description="{layer: [dim]} hidden state at the BOS token (include bos)")
    contacts: list[list[float]] | None = Field(None, description="[L][L] contact probabilities")
    logits: list[list[float]] | None = Field(
        None, description="[L][20] LM logits, columns in alphabet_tokens order")
    attentions: list[list[float]] | None = Field(
        None, description="[n_layers][L] attention averaged over heads and query positions")


class EncodeResponse(BaseModel):
    results: list[EncodeResult]


class PredictResult(BaseModel):
    logits: list[list[float]] = Field(..., description="[L][20] logits at every residue/<mask> position")
    sequence_tokens: list[str] = Field(..., description="the input split into tokens ('<mask>' is one)")
    alphabet_tokens: list[str] = Field(..., description="the 20 column labels of logits")


class PredictResponse(BaseModel):
    results: list[PredictResult]


class LogProbResult(BaseModel):
    log_prob: float = Field(..., description="log-likelihood in nats (pseudo-log-likelihood unless params.method)")


class LogProbResponse(BaseModel):
    results: list[LogProbResult]


class VariantItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mutant: str = Field(..., description="mutation code(s), 1-based: 'A42G' or 'A42G:L50P'",
                        examples=["M1A"])


class ScoreVariantsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wild_type: str = Field(..., description="the wild-type sequence the mutation codes refer to")
    method: Literal["masked_marginals", "wt_marginals"] = Field(
        "masked_marginals",
        description="masked_marginals: mask the mutated positions (ESM-1v); wt_marginals: one "
        "unmasked pass (fast approximation)")


class ScoreVariantsRequest(BaseModel):
    """Body of ``POST /api/v2/<slug>/score_variants/`` (beyond the BioLM seed)."""

    params: ScoreVariantsParams
    items: list[VariantItem]


class ScoreVariantsResult(BaseModel):
    mutant: str
    score: float = Field(..., description="sum over mutated positions of log p(mut) - log p(wt), nats")


class ScoreVariantsResponse(BaseModel):
    results: list[ScoreVariantsResult]


# ---------------------------------------------------------------------------------------------
# Conversion helpers (also used by the CLI)
# ---------------------------------------------------------------------------------------------


def _floats(x: Any) -> Any:
    """numpy/torch array (any shape) -> nested Python lists of floats (float32 values kept)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32).tolist()


def _layered(d: dict) -> dict[str, Any]:
    return {str(int(layer)): _floats(v) for layer, v in d.items()}


def encode_result_json(index: int, out: dict, include: Sequence[str]) -> dict[str, Any]:
    """BioLM JSON of one engine ``encode`` output.

    Args:
        index: the item's 0-based position in the request (``sequence_index``).
        out: one dict of ``engine.encode``: ``mean_representations``/``representations``/
            ``bos_representations`` map int layer -> array; ``contacts`` [L, L]; ``logits`` [L, 20];
            ``attentions`` [n_layers, L].
        include: the requested outputs (BioLM names); only those keys are emitted.
    """
    res: dict[str, Any] = {"sequence_index": index}
    if "mean" in include:
        res["mean_representations"] = _layered(out["mean_representations"])
    if "per_token" in include:
        res["representations"] = _layered(out["representations"])
    if "bos" in include:
        res["bos_representations"] = _layered(out["bos_representations"])
    for key in ("contacts", "logits", "attentions"):
        if key in include:
            res[key] = _floats(out[key])
    return res


def check_include(include: Sequence[str]) -> list[str]:
    """Validate ``params.include`` and return it without duplicates (order kept).

    Raises:
        InvalidParameterError: an unknown output name (its index and the valid names are given),
            or an empty list.
    """
    if not include:
        raise InvalidParameterError(
            f"params.include is empty; choose one or more of: {', '.join(ENCODE_INCLUDE)}")
    seen: list[str] = []
    for i, name in enumerate(include):
        if name not in ENCODE_INCLUDE:
            raise InvalidParameterError(
                f"params.include[{i}]: unknown output '{name}'; choose from: {', '.join(ENCODE_INCLUDE)}")
        if name not in seen:
            seen.append(name)
    return seen


def count_residues(sequence: str) -> int:
    """Number of residue positions of a cleaned sequence (each ``<mask>``, any case, counts as one)."""
    return len(sequence) - (len(MASK) - 1) * sequence.upper().count(MASK.upper())


def check_request_size(n_items: int, settings: Any) -> None:
    """Raise :class:`InvalidInputError` for an empty request or one with too many items."""
    if n_items == 0:
        raise InvalidInputError('items is empty: send at least one {"sequence": "..."}')
    if n_items > settings.max_items:
        raise InvalidInputError(
            f"too many items: {n_items}; at most {settings.max_items} per request "
            "(server setting PLMSERVE_MAX_ITEMS)")


def check_total_residues(sequences: Sequence[str], settings: Any) -> None:
    """Raise :class:`InvalidInputError` when the request holds more residues than allowed."""
    total = sum(count_residues(s) for s in sequences)
    if total > settings.max_residues:
        raise InvalidInputError(
            f"too many residues in one request: {total}; at most {settings.max_residues} in total "
            "(server setting PLMSERVE_MAX_RESIDUES); split the items over several requests")


def check_masks(sequences: Sequence[str]) -> None:
    """predict needs at least one ``<mask>`` per item; raise :class:`InvalidInputError` naming it."""
    for i, seq in enumerate(sequences):
        if MASK.upper() not in seq.upper():
            raise InvalidInputError(
                f"item {i}: the sequence has no '<mask>' token; predict fills in masked positions, "
                "so put '<mask>' where a residue is unknown (use encode for unmasked sequences)",
                item=i)


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------

async def _run_json(engine: Any, build) -> Response:
    """Run ``build() -> dict`` (the model call and the conversion to JSON) in the thread pool, so
    the event loop keeps serving while the model computes and large outputs are serialised.
    The engine serialises its own forward passes."""

    def work() -> bytes:
        return json.dumps(build(), allow_nan=False, separators=(",", ":")).encode()

    body = await run_in_threadpool(work)
    headers = {}
    if getattr(engine, "load_format", None) == "dummy":
        headers["X-Plmserve-Load-Format"] = "dummy"
        headers["X-Plmserve-Warning"] = "random weights (load-format=dummy)"
    return Response(content=body, media_type="application/json", headers=headers)


async def _get_engine(request: Request, slug: str) -> Any:
    """The ESM-2 model (unknown slug -> 404 first): a Ray ``RemoteEngine`` when it has replicas
    (issue 11, ``PLMSERVE_MODEL_REPLICAS``), else the in-process engine (:mod:`plmserve.serving.dispatch`)."""
    from plmserve.serving.dispatch import get_engine

    return await get_engine(request, slug, "esm2")


async def _compute(request: Request, slug: str, engine: Any, operation: str, seqs: list[str], /, *,
                   principal: Principal, **params: Any) -> list[Any]:
    """``engine.<operation>(seqs, **params)``, one result per sequence in order: on the Ray model pool
    when the model has replicas, otherwise through the in-process batching scheduler shared by every
    client (:func:`plmserve.serving.dispatch.compute`)."""
    from plmserve.serving.dispatch import compute

    return await compute(request, slug, engine, operation, seqs, family="esm2", principal=principal, **params)


router = APIRouter(tags=["BioLM ESM-2"])

_SLUG_DOC = "Model slug: esm2-8m, esm2-35m, esm2-150m, esm2-650m, esm2-3b, esm2-15b (case-insensitive)"


async def encode(slug: str, body: EncodeRequest, request: Request,
                 principal: Principal = Depends(require_principal)) -> Response:
    """Embeddings, contacts, attentions and logits for each item (BioLM ``encode``)."""
    settings = request.app.state.settings
    params = body.params or EncodeParams()
    include = check_include(params.include)
    check_request_size(len(body.items), settings)
    if not params.repr_layers and {"mean", "per_token", "bos"} & set(include):
        raise InvalidParameterError("params.repr_layers is empty; give at least one layer, e.g. [-1]")
    engine = await _get_engine(request, slug)
    layers = engine.resolve_layers(params.repr_layers)
    seqs = engine.validate([it.sequence for it in body.items], allow_mask=False)
    check_total_residues(seqs, settings)

    outs = await _compute(request, slug, engine, "encode", seqs, principal=principal, include=list(include),
                             repr_layers=list(layers))

    def build() -> dict:
        return {"results": [encode_result_json(i, out, include) for i, out in enumerate(outs)]}

    return await _run_json(engine, build)


async def predict(slug: str, body: PredictRequest, request: Request,
                  principal: Principal = Depends(require_principal)) -> Response:
    """Logits over the 20 amino acids at every position of sequences with ``<mask>`` tokens."""
    settings = request.app.state.settings
    check_request_size(len(body.items), settings)
    engine = await _get_engine(request, slug)
    seqs = engine.validate([it.sequence for it in body.items], allow_mask=True)
    check_masks(seqs)
    check_total_residues(seqs, settings)
    alphabet = list(engine.alphabet_tokens)

    outs = await _compute(request, slug, engine, "predict", seqs, principal=principal)

    def build() -> dict:
        return {"results": [{"logits": _floats(o["logits"]), "sequence_tokens": list(o["sequence_tokens"]),
                             "alphabet_tokens": alphabet} for o in outs]}

    return await _run_json(engine, build)


async def log_prob(slug: str, body: LogProbRequest, request: Request,
                   principal: Principal = Depends(require_principal)) -> Response:
    """Log-likelihood of each sequence (natural log): the pseudo-log-likelihood by default."""
    settings = request.app.state.settings
    check_request_size(len(body.items), settings)
    engine = await _get_engine(request, slug)
    seqs = engine.validate([it.sequence for it in body.items], allow_mask=False)
    check_total_residues(seqs, settings)
    method = (body.params or LogProbParams()).method
    values = await _compute(request, slug, engine, "log_prob", seqs, principal=principal, method=method)
    return await _run_json(engine, lambda: {"results": [{"log_prob": float(v)} for v in values]})


async def score_variants(slug: str, body: ScoreVariantsRequest, request: Request,
                         principal: Principal = Depends(require_principal)) -> Response:
    """Masked-marginal scores of mutation codes relative to a wild type (beyond the BioLM seed).

    Source: Meier et al. 2021 (ESM-1v), as used by ProteinGym; see ``specs/esm2-api.md``.
    """
    from plmserve.bio.mutations import parse_mutant

    settings = request.app.state.settings
    n = len(body.items)
    if n == 0:
        raise InvalidInputError('items is empty: send at least one {"mutant": "A42G"}')
    engine = await _get_engine(request, slug)
    (wild_type,) = engine.validate([body.params.wild_type], allow_mask=False)
    check_total_residues([wild_type], settings)
    mutants = [it.mutant for it in body.items]
    for i, code in enumerate(mutants):  # clear per-item errors before the model runs
        try:
            parse_mutant(code, wild_type)
        except InvalidInputError as exc:
            raise InvalidInputError(f"item {i}: {exc}", item=i) from None
    from plmserve.serving.dispatch import score_mutants as scheduled_scores

    scores = await scheduled_scores(request, slug, engine, wild_type, mutants, body.params.method, family="esm2",
                                    principal=principal)  # the passes go through the batching scheduler

    def build() -> dict:
        return {"results": [{"mutant": m, "score": s} for m, s in zip(mutants, scores)]}

    return await _run_json(engine, build)


_ROUTES = (
    ("encode", encode, EncodeResponse),
    ("predict", predict, PredictResponse),
    ("log_prob", log_prob, LogProbResponse),
    ("score_variants", score_variants, ScoreVariantsResponse),
)

for _action, _fn, _model in _ROUTES:
    router.add_api_route(f"/api/v2/{{slug}}/{_action}/", _fn, methods=["POST"], response_model=_model,
                         name=f"biolm_{_action}", summary=(_fn.__doc__ or "").split("\n")[0],
                         description=_SLUG_DOC)
    # the same route without the trailing slash (no 307 redirect: curl would not follow a POST)
    router.add_api_route(f"/api/v2/{{slug}}/{_action}", _fn, methods=["POST"], response_model=_model,
                         name=f"biolm_{_action}_noslash", include_in_schema=False)


def include(app: FastAPI) -> None:
    """Add the BioLM-compatible ESM-2 routes to ``app``, and BioLM v3 (``api/biolm_v3.py``)."""
    from plmserve.api import biolm_v3

    app.include_router(router)
    biolm_v3.include(app)  # /api/v3 routes and gzip request bodies on every route (issue 10)
