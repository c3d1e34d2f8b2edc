"""BioLM's current API (``/api/v3``), as the official ``biolmai`` 0.4.0 client calls it.

Routes (``shared/specs/esmc-and-biolm-v3.md`` §8; BioLM's public model code for the shapes):

* ``POST /api/v3/{slug}/{encode|predict|log_prob}/`` for ``esm2-*`` and ``esmc-300m`` (plus
  ``esmc-600m``, a plmserve extension: BioLM does not deploy it);
* ``GET /api/v3/schema/{slug}/{action}/``: the JSON Schema of the request; the client reads
  ``properties.items.maxItems`` as its batch size (without it, it sends one item per request).

Bodies are ``{"items": [{"sequence": ...}], "params": {...}}``; answers ``{"results": [...]}`` in
item order. The client gzips bodies over 256 bytes; :mod:`plmserve.api.gzip_request` (installed
by :func:`include` for every route, v2 included) inflates them.

Shapes, per model family (fields that were not requested are omitted):

ESM-2 ``encode`` (``include`` ⊆ mean, per_token, bos, contacts, logits, attentions; layers
``0..n``, 0 = embedding output, ``-1`` = last, after the final LayerNorm)::

    {"sequence_index": 0, "embeddings": [{"layer": 6, "embedding": [d]}],
     "bos_embeddings": [{"layer", "embedding"}], "per_token_embeddings": [{"layer", "embeddings": [L][d]}],
     "contacts": [L][L], "attentions": [n_layers][L], "logits": [L][20], "vocab_tokens": [20]}

ESM C ``encode`` (``include`` ⊆ mean, per_token, logits; layers ``-n..n-1`` are block outputs
before the final LayerNorm, ``-1`` = the last block's)::

    {"embeddings": [{"layer": 29, "embedding": [960]}],
     "per_token_embeddings": [{"layer": 29, "embeddings": [L][960]}],
     "logits": [L][20], "vocab_tokens": ["A", "C", ..., "Y"]}

``predict`` (≥ 1 ``<mask>`` per item): ``{"logits": [L][20], "sequence_tokens": [...],
"vocab_tokens": [20]}``; ESM C marks masks ``"_"`` in ``sequence_tokens``, ESM-2 ``"<mask>"``.

``log_prob``: ``{"log_prob": float}`` (natural log). As BioLM defines it for both families: one
unmasked forward pass, log-softmax over the 20 canonical amino acids, summed over the residues.
``params.method = "pll"`` (a plmserve extension) asks for the masked pseudo-log-likelihood
instead (L forward passes; see the engines' ``log_prob``).

Every action runs through the model's batching scheduler (:mod:`plmserve.serving.dispatch`; on the
Ray model pool when the model has replicas): requests of all clients share forward passes.

Limits as BioLM's: at most ``Settings.biolm_v3_max_items`` (8) items, 1..2048 residues per item
(ESM-2's engine allows 1024).
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from plmserve.api.auth import Principal, require_principal
from plmserve.api.biolm import check_include, check_masks, check_total_residues
from plmserve.api.openapi_schema import inlined_json_schema
from plmserve.errors import InvalidInputError, InvalidParameterError, ModelNotFoundError
from plmserve.models.registry import get_spec

V3_FAMILIES = ("esm2", "esmc")
ACTIONS = ("encode", "predict", "log_prob")
MAX_SEQUENCE_LEN = 2048
ESMC_INCLUDE = ("mean", "per_token", "logits")
ESMC_ENCODE_ALPHABET = set("ACDEFGHIKLMNPQRSTVWYBXZUO-")
CANONICAL = set("ACDEFGHIKLMNPQRSTVWY")


# ---------------------------------------------------------------------------------------------
# request schema (also served by the schema route)
# ---------------------------------------------------------------------------------------------


class V3Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sequence: str = Field(..., min_length=1, max_length=MAX_SEQUENCE_LEN * 6,
                          description="protein sequence, one-letter codes (predict: with one or more <mask>)")


class V3EncodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repr_layers: list[int] = Field(default_factory=lambda: [-1],
                                   description="layers to return; negative values count from the end")
    include: list[str] = Field(default_factory=lambda: ["mean"],
                               description="ESM-2: mean, per_token, bos, contacts, logits, attentions; "
                               "ESM C: mean, per_token, logits")


class V3EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: V3EncodeParams = Field(default_factory=V3EncodeParams)
    items: list[V3Item] = Field(..., description="batch of inputs, at most 8 per request")


class V3PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: Optional[dict[str, Any]] = Field(default=None, description="accepted and ignored")
    items: list[V3Item] = Field(..., description="batch of inputs, at most 8 per request")


class V3LogProbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["biolm", "pll"] = Field(
        "biolm", description="biolm (BioLM's definition): one unmasked pass, log-softmax over the 20 canonical "
        "amino acids, summed over residues; pll (plmserve extension): masked pseudo-log-likelihood, L passes")


class V3LogProbRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: V3LogProbParams = Field(default_factory=V3LogProbParams)
    items: list[V3Item] = Field(..., description="batch of inputs, at most 8 per request")


REQUESTS: dict[str, type[BaseModel]] = {"encode": V3EncodeRequest, "predict": V3PredictRequest,
                                        "log_prob": V3LogProbRequest}  # fmt: skip


def request_schema(family: str, action: str, max_items: int) -> dict[str, Any]:
    """The JSON Schema of a v3 request (nested models inlined), with ``properties.items.maxItems``
    = ``max_items`` (the client's batch size) and the family's ``include`` values."""
    schema = inlined_json_schema(REQUESTS[action])
    items = schema["properties"]["items"]
    items["minItems"], items["maxItems"] = 1, int(max_items)
    items["items"]["properties"]["sequence"]["maxLength"] = MAX_SEQUENCE_LEN if action != "predict" else None
    if items["items"]["properties"]["sequence"]["maxLength"] is None:
        del items["items"]["properties"]["sequence"]["maxLength"]
    if action == "encode":
        from plmserve.api.biolm import ENCODE_INCLUDE

        enum = list(ESMC_INCLUDE if family == "esmc" else ENCODE_INCLUDE)
        inc = schema["properties"]["params"]
        inc = inc.get("properties", inc.get("anyOf", [{}])[0].get("properties", {}))
        if "include" in inc:
            inc["include"]["items"] = {"type": "string", "enum": enum}
    return schema


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _floats(x: Any) -> Any:
    return np.asarray(x, dtype=np.float32).tolist()


def _family(slug: str) -> str:
    spec = get_spec(slug)
    if spec.family not in V3_FAMILIES:
        raise ModelNotFoundError(f"model '{slug}' is not served on /api/v3 (ESM-2 and ESM C models are)")
    return spec.family


async def _engine(request: Request, slug: str, family: str) -> Any:
    """The model: a Ray ``RemoteEngine`` when it has replicas, else the in-process engine."""
    from plmserve.serving.dispatch import get_engine

    return await get_engine(request, slug, family)


async def _compute(request: Request, slug: str, family: str, engine: Any, operation: str, seqs: list[str],
                   principal: Principal, **params: Any) -> list[Any]:
    """``engine.<operation>(seqs, **params)`` through the model's batching scheduler (or its Ray pool)."""
    from plmserve.serving.dispatch import compute

    return await compute(request, slug, engine, operation, seqs, family=family, principal=principal, **params)


def _check_items(items: list[V3Item], settings: Any) -> list[str]:
    limit = int(getattr(settings, "biolm_v3_max_items", 8))
    if not items:
        raise InvalidInputError('items is empty: send at least one {"sequence": "..."}')
    if len(items) > limit:
        raise InvalidInputError(f"too many items: {len(items)}; at most {limit} per request "
                                "(server setting PLMSERVE_BIOLM_V3_MAX_ITEMS)")  # fmt: skip
    return [it.sequence for it in items]


def _check_length(seqs: list[str]) -> None:
    from plmserve.api.biolm import count_residues

    for i, s in enumerate(seqs):
        n = count_residues(s)
        if n > MAX_SEQUENCE_LEN:
            raise InvalidInputError(f"item {i}: the sequence has {n} residues; at most {MAX_SEQUENCE_LEN} on /api/v3",
                                    item=i)  # fmt: skip


def _check_alphabet(seqs: list[str], allowed: set[str], what: str) -> None:
    for i, s in enumerate(seqs):
        plain = s.replace("<MASK>", "")
        for pos, ch in enumerate(plain, start=1):
            if ch not in allowed:
                raise InvalidInputError(f"item {i}: character {ch!r} at position {pos} is not allowed for {what}",
                                        item=i, position=pos, character=ch)  # fmt: skip


async def _respond(build) -> Response:
    def work() -> bytes:
        return json.dumps(build(), allow_nan=False, separators=(",", ":")).encode()

    return Response(content=await run_in_threadpool(work), media_type="application/json")


# ---------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------

router = APIRouter(tags=["BioLM v3 (ESM-2, ESM C)"])
_SLUG_DOC = "Model slug: esm2-8m ... esm2-15b, esmc-300m, esmc-600m (case-insensitive)"


async def encode(slug: str, body: V3EncodeRequest, request: Request,
                 principal: Principal = Depends(require_principal)) -> Response:
    """Embeddings (mean, per-token, BOS), contacts, attentions and logits (BioLM v3 ``encode``)."""
    settings = request.app.state.settings
    family = _family(slug)
    seqs = _check_items(body.items, settings)
    include = check_include(body.params.include) if family == "esm2" else _esmc_include(body.params.include)
    if not body.params.repr_layers and {"mean", "per_token", "bos"} & set(include):
        raise InvalidParameterError("params.repr_layers is empty; give at least one layer, e.g. [-1]")
    engine = await _engine(request, slug, family)
    layers = engine.resolve_layers(body.params.repr_layers)
    seqs = engine.validate(seqs, allow_mask=False)
    _check_length(seqs)
    if family == "esmc":
        _check_alphabet(seqs, ESMC_ENCODE_ALPHABET, "ESM C encode (ACDEFGHIKLMNPQRSTVWY, BXZUO, -)")
    check_total_residues(seqs, settings)
    vocab = list(engine.alphabet_tokens)
    outs = await _compute(request, slug, family, engine, "encode", seqs, principal, include=list(include),
                          repr_layers=list(layers))

    def build() -> dict:
        results = []
        for i, o in enumerate(outs):
            r: dict[str, Any] = {"sequence_index": i} if family == "esm2" else {}
            if "mean" in include:
                r["embeddings"] = [{"layer": int(l), "embedding": _floats(v)} for l, v in o["mean_representations"].items()]
            if "bos" in include:
                r["bos_embeddings"] = [{"layer": int(l), "embedding": _floats(v)}
                                       for l, v in o["bos_representations"].items()]  # fmt: skip
            if "per_token" in include:
                r["per_token_embeddings"] = [{"layer": int(l), "embeddings": _floats(v)}
                                             for l, v in o["representations"].items()]  # fmt: skip
            for key in ("contacts", "attentions"):
                if key in include:
                    r[key] = _floats(o[key])
            if "logits" in include:
                r["logits"] = _floats(o["logits"])
                r["vocab_tokens"] = vocab
            results.append(r)
        return {"results": results}

    return await _respond(build)


def _esmc_include(include: list[str]) -> list[str]:
    if not include:
        raise InvalidParameterError(f"params.include is empty; choose one or more of: {', '.join(ESMC_INCLUDE)}")
    out: list[str] = []
    for i, name in enumerate(include):
        if name not in ESMC_INCLUDE:
            raise InvalidParameterError(
                f"params.include[{i}]: '{name}' is not an ESM C output; choose from: {', '.join(ESMC_INCLUDE)}")
        if name not in out:
            out.append(name)
    return out


async def predict(slug: str, body: V3PredictRequest, request: Request,
                  principal: Principal = Depends(require_principal)) -> Response:
    """Logits over the 20 amino acids at every position of sequences with ``<mask>`` (BioLM v3 ``predict``)."""
    settings = request.app.state.settings
    family = _family(slug)
    seqs = _check_items(body.items, settings)
    engine = await _engine(request, slug, family)
    seqs = engine.validate(seqs, allow_mask=True)
    _check_length(seqs)
    check_masks(seqs)
    if family == "esmc":
        _check_alphabet(seqs, ESMC_ENCODE_ALPHABET, "ESM C predict (ACDEFGHIKLMNPQRSTVWY, BXZUO, -, <mask>)")
    check_total_residues(seqs, settings)
    vocab = list(engine.alphabet_tokens)
    outs = await _compute(request, slug, family, engine, "predict", seqs, principal)

    def build() -> dict:
        results = []
        for o in outs:
            toks = list(o["sequence_tokens"])
            if family == "esmc":
                toks = ["_" if t == "<mask>" else t for t in toks]
            results.append({"logits": _floats(o["logits"]), "sequence_tokens": toks, "vocab_tokens": vocab})
        return {"results": results}

    return await _respond(build)


async def log_prob(slug: str, body: V3LogProbRequest, request: Request,
                   principal: Principal = Depends(require_principal)) -> Response:
    """Log-probability of each sequence (natural log; BioLM's single-pass definition unless
    ``params.method = "pll"``)."""
    settings = request.app.state.settings
    family = _family(slug)
    seqs = _check_items(body.items, settings)
    engine = await _engine(request, slug, family)
    seqs = engine.validate(seqs, allow_mask=False)
    _check_length(seqs)
    if family == "esmc":
        _check_alphabet(seqs, CANONICAL, "ESM C log_prob (only the 20 canonical amino acids)")
    check_total_residues(seqs, settings)
    values = await _compute(request, slug, family, engine, "log_prob", seqs, principal, method=body.params.method)
    return await _respond(lambda: {"results": [{"log_prob": float(v)} for v in values]})


async def schema(slug: str, action: str, request: Request) -> JSONResponse:
    """JSON Schema of the request of ``action`` on ``slug`` (``properties.items.maxItems`` = batch size)."""
    family = _family(slug)
    if action not in ACTIONS:
        raise ModelNotFoundError(f"unknown action '{action}' for {slug}; actions: {', '.join(ACTIONS)}")
    return JSONResponse(request_schema(family, action, request.app.state.settings.biolm_v3_max_items))


for _action, _fn in (("encode", encode), ("predict", predict), ("log_prob", log_prob)):
    router.add_api_route(f"/api/v3/{{slug}}/{_action}/", _fn, methods=["POST"], name=f"biolm_v3_{_action}",
                         summary=(_fn.__doc__ or "").split("\n")[0], description=_SLUG_DOC)
    router.add_api_route(f"/api/v3/{{slug}}/{_action}", _fn, methods=["POST"], name=f"biolm_v3_{_action}_noslash",
                         include_in_schema=False)
router.add_api_route("/api/v3/schema/{slug}/{action}/", schema, methods=["GET"], name="biolm_v3_schema",
                     summary="JSON Schema of a v3 request (the client's batch size)")
router.add_api_route("/api/v3/schema/{slug}/{action}", schema, methods=["GET"], include_in_schema=False)


def include(app: FastAPI) -> None:
    """Add the v3 routes and inflate ``Content-Encoding: gzip`` request bodies on every route."""
    from plmserve.api.gzip_request import GzipRequestMiddleware

    app.include_router(router)
    app.add_middleware(GzipRequestMiddleware, max_bytes=app.state.settings.max_decompressed_body_bytes)
