"""Forge-compatible ESM3 endpoints (EvolutionaryScale Forge / Biohub platform wire format).

- ``POST /api/v1/generate_tensor``: iterative generation of one track, raw tokens in and out
  (``shared/specs/esm3-api.md`` §2-§4; seed ``001_89a080848c6cf20d``).
- ``POST /api/v1/logits``: one forward pass; head logits and embeddings as JSON (§5).

The official ``esm`` SDK client (``ESM3ForgeInferenceClient``) works against these routes by
changing only its URL and token: it builds ``urljoin(base, "/api/v1/<endpoint>")``, so the routes
live at the URL root, and it sends ``Authorization: Bearer <token>``.

Quirks of the contract handled here (never in ``plmserve.models``):

- the ``inputs`` key ``residue_annotation`` is singular; absent tracks are ``null``; ``null``
  (and NaN/inf) coordinates mean "missing atom";
- omitted fields take the Forge *server* defaults (temperature 0.5, num_steps 20, cosine,
  random, annealing on, top_p 1, condition_on_coordinates_only on); ``null`` counts as omitted;
- ``potential_sequence_of_concern`` is accepted and ignored;
- every error is a 4xx ``{"detail": "..."}`` (the SDK retries 5xx five times);
- beyond Forge: an optional integer ``seed`` makes a call reproducible.

Every ESM3 forward pass goes through the model's :class:`~plmserve.models.esm3.engine.GenerationEngine`
(one per model, window ``Settings.esm3_batch_window_ms``): concurrent requests of the same length
share one forward pass per step, at most ``esm3_max_sessions`` requests are queued or running
(beyond: 503 with ``Retry-After``), sessions are admitted round-robin between principals, a
request whose client disconnects is dropped at the next step. With
``PLMSERVE_MODEL_REPLICAS='{"esm3-open-2024-03": N}'`` the work goes to the least-loaded Ray
replica, which runs its own engine (:mod:`plmserve.cluster.esm3_worker`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from typing import Any, Optional

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plmserve.api.auth import Principal, require_principal
from plmserve.api.openapi_schema import inlined_json_schema
from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm3.engine import GenerationEngine
from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens

logger = logging.getLogger(__name__)

#: Forge's length limit for ESM3 models (residues, BOS/EOS not counted).
MAX_RESIDUES = 2048
DUMMY_WARNING = "this server runs the model with RANDOM weights (load-format=dummy); outputs are meaningless"

router = APIRouter(tags=["forge (ESM3)"])


class GenerateTensorRequest(BaseModel):
    """Body of ``POST /api/v1/generate_tensor`` (field names exactly as the Forge API)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="model name or alias, e.g. esm3-open-2024-03, esm3-sm-open-v1")
    track: str = Field(description="sequence | structure | secondary_structure | sasa | function")
    inputs: dict[str, Any] = Field(
        description="Tokens: sequence [N], structure [N], secondary_structure [N], sasa [N], function [N][8], "
        "residue_annotation [N][16], coordinates [N][37][3] (null = missing); N = L + 2; absent track = null"
    )
    invalid_ids: Optional[list[int]] = Field(default=None, description="token ids never to sample")
    schedule: Optional[str] = Field(default=None, description="cosine (default) | linear")
    strategy: Optional[str] = Field(default=None, description="random (default) | entropy")
    num_steps: Optional[int] = Field(default=None, description="1..100, default 20")
    temperature: Optional[float] = Field(default=None, description=">= 0, default 0.5")
    temperature_annealing: Optional[bool] = Field(default=None, description="default true")
    top_p: Optional[float] = Field(default=None, description="(0, 1], default 1")
    condition_on_coordinates_only: Optional[bool] = Field(default=None, description="default true")
    potential_sequence_of_concern: Optional[bool] = Field(default=None, description="accepted, ignored")
    seed: Optional[int] = Field(default=None, description="plmserve extension: makes the call reproducible")


class LogitsConfigBody(BaseModel):
    """``logits_config`` of ``POST /api/v1/logits``."""

    model_config = ConfigDict(extra="ignore")

    sequence: bool = True
    structure: bool = False
    secondary_structure: bool = False
    sasa: bool = False
    function: bool = False
    residue_annotations: bool = False
    return_embeddings: bool = False
    return_mean_embedding: bool = False
    return_hidden_states: bool = False
    return_mean_hidden_states: bool = False
    ith_hidden_layer: int = -1


class LogitsRequest(BaseModel):
    """Body of ``POST /api/v1/logits``."""

    model_config = ConfigDict(extra="ignore")

    model: str
    inputs: dict[str, Any]
    logits_config: LogitsConfigBody = Field(default_factory=LogitsConfigBody)
    potential_sequence_of_concern: Optional[bool] = None


def _schema(model: type[BaseModel]) -> dict:
    """OpenAPI request body of ``model`` with nested models inlined (no dangling ``$defs``)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inlined_json_schema(model)}}}}


async def _parse_body(request: Request, model: type[BaseModel]) -> Any:
    """Parse the JSON body (NaN/Infinity accepted) into ``model``; errors become 400s that name
    the field."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            problems.append(f"{where}: {err.get('msg')}")
        raise InvalidParameterError("invalid request: " + "; ".join(problems)) from None


def _parse_tokens(inputs: dict[str, Any]) -> ProteinTokens:
    tokens = ProteinTokens.from_lists(inputs)
    residues = len(tokens) - 2
    if residues > MAX_RESIDUES:
        raise InvalidInputError(f"inputs: {residues} residues is over the limit of {MAX_RESIDUES}")
    return tokens


def _engine_for(app: FastAPI, model: Any, slug: str | None = None) -> GenerationEngine:
    """The app's engine for ``model`` (created on first use; one per model object), with the
    serving settings ``esm3_batch_window_ms``, ``esm3_max_batch_size``, ``esm3_max_sessions``."""
    settings = app.state.settings
    with app.state.esm3_engine_lock:
        engines: dict[int, GenerationEngine] = app.state.esm3_engines
        engine = engines.get(id(model))
        if engine is None or engine.model is not model:
            engine = GenerationEngine(
                model,
                batch_window_ms=settings.esm3_batch_window_ms,
                max_batch_size=getattr(settings, "esm3_max_batch_size", 16),
                max_sessions=getattr(settings, "esm3_max_sessions", None),
                name=slug or getattr(model, "name", "esm3"),
            )
            engines[id(model)] = engine
        return engine


async def _get_model(request: Request, name: str) -> Any:
    """The ESM3 model ``name``: a :class:`~plmserve.cluster.model_pool.RemoteEngine` stand-in when
    the settings give it Ray replicas (``PLMSERVE_MODEL_REPLICAS='{"esm3-open-2024-03": 2}'``; its
    attributes such as ``config`` and ``is_dummy`` are read from a replica), else the in-process
    model (loaded on first use).

    Raises:
        ModelNotFoundError: unknown name or not an ESM3 model (404).
    """
    from plmserve.cluster.model_pool import remote_engine
    from plmserve.models.registry import get_spec

    spec = get_spec(name, "esm3")
    # --- issue 11 hook: ESM3 models with Ray replicas run on the model pool
    remote = await run_in_threadpool(remote_engine, request.app.state, spec.slug)
    if remote is not None:
        return remote
    return await run_in_threadpool(request.app.state.models.get, name, "esm3")


def _principal_key(principal: Any) -> str:
    return getattr(principal, "name", None) or (str(principal) if principal is not None else "anonymous")


async def run_esm3(request: Request, model: Any, model_name: str, principal: Any, method: str, *,
                   tokens: ProteinTokens | None = None, config: GenerationConfig | None = None,
                   seed: int | None = None, fn: Any = None, args: tuple = ()) -> Any:
    """Run one ESM3 request through the model's :class:`GenerationEngine` and await it without
    blocking the event loop: a generation (``tokens``, ``config``, ``seed`` -> a
    :class:`~plmserve.models.esm3.sampler.GenerationResult`) or a single forward-pass call
    (``fn(model, *args)`` -> its result; ``fn`` a module-level function, so that it can be sent to
    a Ray replica). ``model`` comes from :func:`_get_model`: in-process, the app's engine of the
    model runs it; with replicas, the least-loaded replica's own engine
    (:class:`plmserve.cluster.esm3_worker.Esm3Worker`).

    ``principal`` is the fairness key (sessions are admitted round-robin between principals).
    When the client disconnects first, the request is canceled (a waiting request is dropped, a
    running one is not stepped again) and :class:`~plmserve.serving.scheduler.ClientDisconnected`
    is raised.

    Raises:
        ServiceUnavailableError: ``esm3_max_sessions`` requests are queued or running (503,
            ``Retry-After``).
        PlmserveError: the request's own error (bad prompt ...).
    """
    from plmserve.cluster.model_pool import RemoteEngine
    from plmserve.models.registry import get_spec

    slug = get_spec(model_name, "esm3").slug
    key = _principal_key(principal)
    if isinstance(model, RemoteEngine):
        if fn is None:
            work = model._pool.run_actor(slug, "generate", tokens, config, seed, key, method)
        else:
            work = model._pool.run_actor(slug, "forward_call", fn, args, key, method)
        return await _unless_disconnected(request, asyncio.ensure_future(work), None)
    engine = _engine_for(request.app, model, slug)
    if fn is None:
        future = engine.submit(tokens, config, seed=seed, principal=key, method=method)
    else:
        future = engine.submit_call(functools.partial(_call_with_model, fn, args), principal=key, method=method)
    return await _unless_disconnected(request, asyncio.wrap_future(future), lambda: engine.cancel(future))


def _call_with_model(fn: Any, args: tuple, model: Any) -> Any:
    return fn(model, *args)


async def _unless_disconnected(request: Request, work: "asyncio.Future", on_disconnect: Any) -> Any:
    """Await ``work``; when the client disconnects first, call ``on_disconnect()``, cancel ``work``
    and raise ``ClientDisconnected`` (as :func:`plmserve.serving.scheduler.run_batched`)."""
    from plmserve.serving.scheduler import ClientDisconnected, _wait_disconnect

    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        if on_disconnect is not None:
            on_disconnect()
        work.cancel()
        logger.info("client disconnected: its ESM3 request was canceled")
        raise ClientDisconnected("the client disconnected before the results were ready")
    except asyncio.CancelledError:
        if on_disconnect is not None:
            on_disconnect()
        work.cancel()
        raise
    finally:
        disconnect.cancel()


def _warnings(model: Any) -> list[str]:
    return [DUMMY_WARNING] if getattr(model, "is_dummy", False) else []


@router.post(
    "/api/v1/generate_tensor",
    summary="ESM3: generate one track by iterative unmasking (raw tokens in/out)",
    openapi_extra=_schema(GenerateTensorRequest),
)
async def generate_tensor_endpoint(request: Request, principal: Principal = Depends(require_principal)):
    """Generate ``track`` of ``inputs``; returns ``{"outputs": Tokens}`` (see module docstring)."""
    body: GenerateTensorRequest = await _parse_body(request, GenerateTensorRequest)
    defaults = GenerationConfig(track=body.track)
    config = GenerationConfig(
        track=body.track,
        num_steps=defaults.num_steps if body.num_steps is None else body.num_steps,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        temperature_annealing=defaults.temperature_annealing
        if body.temperature_annealing is None
        else body.temperature_annealing,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        schedule=defaults.schedule if body.schedule is None else body.schedule,
        strategy=defaults.strategy if body.strategy is None else body.strategy,
        invalid_ids=tuple(body.invalid_ids or ()),
        condition_on_coordinates_only=defaults.condition_on_coordinates_only
        if body.condition_on_coordinates_only is None
        else body.condition_on_coordinates_only,
    )
    config.validate()  # config errors before loading a model
    model = await _get_model(request, body.model)
    tokens = await run_in_threadpool(_parse_tokens, body.inputs)
    result = await run_esm3(request, model, body.model, principal, "generate_tensor", tokens=tokens, config=config,
                            seed=body.seed)
    content: dict[str, Any] = {"outputs": await run_in_threadpool(result.tokens.to_lists)}
    warnings = _warnings(model)
    if warnings:
        content["warning_messages"] = warnings
    return JSONResponse(content)


def _logits_forward(model: Any, tokens: ProteinTokens, cfg: LogitsConfigBody) -> dict[str, Any]:
    """One forward pass as the official ``ESM3.logits`` (absent tracks take the trunk's
    defaults; ``per_res_plddt`` from the coordinates) -> the JSON response body."""
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    kwargs = tokens.logits_kwargs(device)
    with torch.no_grad():
        out = model(**kwargs)

    def as_list(t: torch.Tensor) -> Any:
        return t.detach().float().cpu()[0].tolist()

    logits: dict[str, Any] = {}
    wanted = [
        ("sequence", cfg.sequence, "sequence_logits"),
        ("structure", cfg.structure, "structure_logits"),
        ("secondary_structure", cfg.secondary_structure, "secondary_structure_logits"),
        ("sasa", cfg.sasa, "sasa_logits"),
        ("function", cfg.function, "function_logits"),
        ("residue_annotation", cfg.residue_annotations, "residue_logits"),
    ]
    for key, flag, attr in wanted:
        if flag:
            value = getattr(out, attr)
            if key == "function" and value.dim() == 3:
                value = value.reshape(*value.shape[:2], 8, -1)
            logits[key] = as_list(value)
    embeddings = out.embeddings.detach().float().cpu()[0]
    return {
        "logits": logits,
        "embeddings": embeddings.tolist() if cfg.return_embeddings else None,
        "mean_embedding": embeddings.mean(0).tolist() if cfg.return_mean_embedding else None,
        "hidden_states": None,
        "mean_hidden_state": None,
    }


@router.post(
    "/api/v1/logits",
    summary="ESM3: one forward pass; head logits and embeddings as JSON",
    openapi_extra=_schema(LogitsRequest),
)
async def logits_endpoint(request: Request, principal: Principal = Depends(require_principal)):
    """Logits of the requested heads (no batch dimension: ``sequence`` [N, 64], ``structure``
    [N, 4096], ``secondary_structure`` [N, 11], ``sasa`` [N, 19], ``function`` [N, 8, 260],
    ``residue_annotation`` [N, 1478]), ``embeddings`` [N, d] (pre-final-norm last hidden state)
    and ``mean_embedding`` [d] (mean over all N positions, BOS/EOS included, as the official
    code). ESM C models are answered by :func:`plmserve.api.forge_protein.esmc_logits`."""
    from plmserve.api.forge_protein import maybe_esmc_logits

    if (esmc := await maybe_esmc_logits(request)) is not None:
        return esmc
    body: LogitsRequest = await _parse_body(request, LogitsRequest)
    cfg = body.logits_config
    if cfg.return_hidden_states or cfg.return_mean_hidden_states:
        raise InvalidParameterError(
            "return_hidden_states / return_mean_hidden_states are not supported by this server; "
            "use return_embeddings or return_mean_embedding"
        )
    model = await _get_model(request, body.model)
    tokens = await run_in_threadpool(_parse_tokens, body.inputs)
    tokens.validate(getattr(getattr(model, "config", None), "residue_annotation_vocab_size", 1478))
    content = await run_esm3(request, model, body.model, principal, "logits", fn=_logits_forward, args=(tokens, cfg))
    warnings = _warnings(model)
    if warnings:
        content["warning_messages"] = warnings
    return JSONResponse(content)


def _engine_busy(app: FastAPI, slug: str) -> bool:
    """Whether an ESM3 engine of model ``slug`` has requests queued or running."""
    with app.state.esm3_engine_lock:
        return any(e.name == slug and e.sessions for e in app.state.esm3_engines.values())


def _drop_engine(app: FastAPI, model: Any) -> None:
    """An evicted model's engine: forgotten and stopped (it is idle: busy models are not evicted)."""
    with app.state.esm3_engine_lock:
        engine = app.state.esm3_engines.pop(id(model), None)
    if engine is not None:
        engine.close(timeout=0)


def include(app: FastAPI) -> None:
    """Add the Forge routes to ``app`` and close the generation engines on shut-down."""
    app.state.esm3_engines = {}
    app.state.esm3_engine_lock = threading.Lock()

    def _close_engines(app: FastAPI) -> None:
        for engine in list(app.state.esm3_engines.values()):
            engine.close()
        app.state.esm3_engines.clear()

    app.state.shutdown.append(_close_engines)
    models = getattr(app.state, "models", None)
    if models is not None and hasattr(models, "busy_checks"):  # never evict a model with requests in flight
        models.busy_checks.append(lambda slug: _engine_busy(app, slug))
        models.on_evict.append(lambda slug, model: _drop_engine(app, model))
    app.include_router(router)
    from plmserve.api import forge_protein

    forge_protein.include(app)  # /api/v1/encode, decode, generate (ESMProtein, ESM C; issue 10)
