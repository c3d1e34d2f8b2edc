"""Forge routes for ``ESMProtein``-level calls and for ESM C (EvolutionaryScale ``esm`` 3.2.1 clients).

``shared/specs/esmc-and-biolm-v3.md`` §2-§3 and ``esm3-api.md`` §1 are the contract:

* ``POST /api/v1/encode``: ``{"model", "inputs": {"sequence": "MK_A", ...}}`` -> token ids
  ``{"outputs": {"sequence": [0, 20, 15, 32, 5, 2], "structure": null, ...}}`` for ``esmc-*`` and
  ESM3 models (the official tokenizer: ``_`` = mask, lower case = ``<unk>``);
* ``POST /api/v1/decode``: token ids -> ``{"outputs": {"sequence": "MK_A", ...}}``;
* ``POST /api/v1/logits`` for ``esmc-*`` (the ESM3 models keep :mod:`plmserve.api.forge`'s handler);
* ``POST /api/v1/generate``: ESM3 generation from an ``ESMProtein`` prompt with a sequence
  (``_`` = positions to fill) -> ``{"outputs": {"sequence": "MKTA...", ...}}``.

Every response carries all the keys both official clients index (``ESMCForgeInferenceClient``
and ``ESM3ForgeInferenceClient``, which the 3.2.1 README recommends for ESM C too), ``null`` where
a track is absent, plus a top-level ``potential_sequence_of_concern: false`` (3.4 clients).

ESM C ``logits`` conventions (documented; the hosted service's shapes are not public):

* ``logits.sequence`` ``[1, T, 64]`` (raw head output, BOS/EOS rows included), ``embeddings``
  ``[1, T, d]`` (final-LayerNorm output), ``hidden_states`` ``[n+1, 1, T, d]`` (entry 0 = embedding
  output, entries 1..n-1 = blocks 0..n-2, entry n = final-norm output; the hosted API's n+1 count,
  transformers' convention) or ``[1, 1, T, d]`` with ``ith_hidden_layer`` = 0..n: the leading batch
  dimension of 1 is the local ``esm`` ``ESMC.logits`` shape;
* ``mean_embedding`` ``[d]`` and ``mean_hidden_state`` ``[k, d]``: means over all T positions;
* ``logits`` is a dict, never ``null`` (``{}`` when ``sequence`` is false);
* with the request header ``return-bytes: true`` (the SDK's default), ``logits``, ``embeddings``
  and ``hidden_states`` are base64 strings of zstd-compressed ``torch.save`` payloads, the form
  the SDK decodes; otherwise JSON lists.

What needs models plmserve does not have answers 422 naming it: coordinates (the ESM3 VQ-VAE
structure tokenizer), structure tokens to decode (the structure decoder), secondary structure /
SASA / function prompts (their tokenizers), non-sequence tracks for ESM C.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, Optional

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from plmserve.api.auth import Principal, require_principal
from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esmc.alphabet import detokenize, tokenize
from plmserve.models.registry import get_spec

#: Forge's length limit for ESM C (residues); ESM3 keeps plmserve.api.forge.MAX_RESIDUES (2048).
ESMC_MAX_RESIDUES = 16384
ENCODE_NULLS = ("structure", "coordinates", "secondary_structure", "sasa", "function", "residue_annotation")
DECODE_NULLS = ("secondary_structure", "sasa", "function", "coordinates", "plddt", "ptm")
TRACKS = ("structure", "secondary_structure", "sasa", "function", "residue_annotation", "residue_annotations",
          "coordinates")  # fmt: skip

router = APIRouter(tags=["forge (ESM C, ESMProtein)"])


class UnsupportedTrackError(InvalidParameterError):
    """A request that needs a track or tokenizer this server does not provide (422)."""

    status_code = 422


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    inputs: dict[str, Any]
    potential_sequence_of_concern: Optional[bool] = None


class GenerateRequest(EncodeRequest):
    track: str = "sequence"
    invalid_ids: Optional[list[int]] = None
    schedule: Optional[str] = None
    strategy: Optional[str] = None
    num_steps: Optional[int] = None
    temperature: Optional[float] = None
    temperature_annealing: Optional[bool] = None
    top_p: Optional[float] = None
    condition_on_coordinates_only: Optional[bool] = None
    seed: Optional[int] = Field(default=None, description="plmserve extension: makes the call reproducible")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _family(name: str) -> str:
    return get_spec(name).family


def _json(content: dict[str, Any]) -> Response:
    return Response(json.dumps(content, allow_nan=False, separators=(",", ":")).encode(),
                    media_type="application/json")  # fmt: skip


def _not_needed(inputs: dict[str, Any], allowed: tuple[str, ...], model: str) -> None:
    """422 for non-null tracks that need models this server lacks (names the track and the model)."""
    for key, value in inputs.items():
        if key in allowed or value is None:
            continue
        if key == "coordinates":
            raise UnsupportedTrackError(
                f"inputs.coordinates: encoding a structure needs the ESM3 structure tokenizer (VQ-VAE structure "
                f"encoder), which this server does not provide; send a sequence-only prompt for {model}")
        if key in TRACKS:
            raise UnsupportedTrackError(
                f"inputs.{key}: this server serves sequence-only prompts for {model}; the {key} track "
                "(and its tokenizer) is not supported")
        raise InvalidInputError(f"inputs: unknown key '{key}'")


def _sequence_string(inputs: dict[str, Any]) -> str:
    seq = inputs.get("sequence")
    if not isinstance(seq, str) or not seq:
        raise InvalidInputError("inputs.sequence: a non-empty protein sequence string is required")
    return seq


def _token_list(inputs: dict[str, Any], limit: int) -> list[int]:
    seq = inputs.get("sequence")
    if not isinstance(seq, list) or not seq or not all(isinstance(t, int) and not isinstance(t, bool) for t in seq):
        raise InvalidInputError("inputs.sequence: a non-empty list of integer token ids is required")
    for pos, t in enumerate(seq):
        if not 0 <= t < 64:
            raise InvalidInputError(f"inputs.sequence[{pos}]: token id {t} is outside 0..63")
    if len(seq) - 2 > limit:
        raise InvalidInputError(f"inputs.sequence: {len(seq) - 2} residues is over the limit of {limit}")
    return seq


def _to_bytes(obj: Any) -> str:
    """base64 of zstd(``torch.save(obj)``): the tensor encoding the ``esm`` SDK decodes."""
    import zstandard

    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(zstandard.ZstdCompressor().compress(buf.getvalue())).decode("ascii")


def _wants_bytes(request: Request) -> bool:
    if request.headers.get("return-bytes", "").strip().lower() != "true":
        return False
    try:
        import zstandard  # noqa: F401
    except ImportError:  # the JSON form is always accepted by the SDK
        return False
    return True


# ---------------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------------


@router.post("/api/v1/encode", summary="ESM C / ESM3: tokenize an ESMProtein (sequence track)")
async def encode_endpoint(body: EncodeRequest, principal: Principal = Depends(require_principal)):
    """``{"outputs": {"sequence": [ids]}}``: ``<cls>`` + one id per character + ``<eos>`` (the
    official ``EsmSequenceTokenizer``; ``_`` = ``<mask>``, lower case = ``<unk>``)."""
    family = _family(body.model)
    if family not in ("esmc", "esm3"):
        raise InvalidParameterError(f"model '{body.model}' is not an ESM C or ESM3 model")
    _not_needed(body.inputs, ("sequence",), body.model)
    ids = tokenize(_sequence_string(body.inputs))
    limit = ESMC_MAX_RESIDUES if family == "esmc" else 2048
    if len(ids) - 2 > limit:
        raise InvalidInputError(f"inputs.sequence: {len(ids) - 2} residues is over the limit of {limit}")
    return _json({"outputs": {"sequence": ids, **{k: None for k in ENCODE_NULLS}},
                  "potential_sequence_of_concern": False})  # fmt: skip


@router.post("/api/v1/decode", summary="ESM C / ESM3: token ids back to an ESMProtein (sequence track)")
async def decode_endpoint(body: EncodeRequest, principal: Principal = Depends(require_principal)):
    """``{"outputs": {"sequence": "MK_A"}}``: ``<cls>``/``<eos>``/``<pad>`` dropped, ``<mask>`` -> ``_``."""
    family = _family(body.model)
    if family not in ("esmc", "esm3"):
        raise InvalidParameterError(f"model '{body.model}' is not an ESM C or ESM3 model")
    inputs = dict(body.inputs)
    if inputs.get("structure") is not None:
        raise UnsupportedTrackError(
            "inputs.structure: decoding structure tokens needs the ESM3 structure decoder (VQ-VAE), which this "
            "server does not provide")
    _not_needed(inputs, ("sequence", "structure"), body.model)
    ids = _token_list(inputs, ESMC_MAX_RESIDUES)
    try:
        seq = detokenize(ids)
    except ValueError as exc:
        raise InvalidInputError(f"inputs.sequence: {exc}") from None
    return _json({"outputs": {"sequence": seq, **{k: None for k in DECODE_NULLS}},
                  "potential_sequence_of_concern": False})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ESM C logits (called from plmserve.api.forge's /api/v1/logits for esmc-* models)
# ---------------------------------------------------------------------------------------------

_LOGITS_TRACKS = ("structure", "secondary_structure", "sasa", "function", "residue_annotations")


def is_esmc(model_name: Any) -> bool:
    """True when ``model_name`` names an ESM C model (unknown names are not ESM C)."""
    try:
        return isinstance(model_name, str) and _family(model_name) == "esmc"
    except Exception:
        return False


async def _esmc_engine(request: Request, name: str) -> Any:
    """The ESM C model ``name``: a Ray ``RemoteEngine`` when it has replicas, else the in-process engine."""
    from plmserve.serving.dispatch import get_engine

    return await get_engine(request, name, "esmc")


async def _esmc_forward(request: Request, name: str, engine: Any, ids: list[int], **params: Any) -> list[dict]:
    """``engine.forward_tokens([ids], **params)`` through the model's batching scheduler (requests of
    every client share forward passes; the Ray pool for a model with replicas)."""
    from plmserve.serving.dispatch import compute

    return await compute(request, name, engine, "forward_tokens", [ids], family="esmc",
                         principal=getattr(request.state, "principal", None), **params)


async def esmc_logits(request: Request, data: dict[str, Any]) -> Response:
    """``POST /api/v1/logits`` for an ESM C model (conventions in the module docstring).

    Raises:
        InvalidInputError: bad token ids, over 16384 residues.
        UnsupportedTrackError: non-sequence tracks in ``inputs`` or ``logits_config`` (422).
    """
    model_name = data["model"]
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        raise InvalidInputError("inputs: an object with a 'sequence' list of token ids is required")
    _not_needed(inputs, ("sequence",), model_name)
    ids = _token_list(inputs, ESMC_MAX_RESIDUES)
    cfg = data.get("logits_config") or {}
    if not isinstance(cfg, dict):
        raise InvalidInputError("logits_config must be an object")
    for track in _LOGITS_TRACKS:
        if cfg.get(track):
            raise UnsupportedTrackError(f"logits_config.{track}: ESM C has only the sequence track")
    if cfg.get("sae_config"):
        raise UnsupportedTrackError("logits_config.sae_config: sparse-autoencoder features are not served")
    want_logits = bool(cfg.get("sequence", True))
    want_emb = bool(cfg.get("return_embeddings")) or bool(cfg.get("return_mean_embedding"))
    want_hidden = bool(cfg.get("return_hidden_states")) or bool(cfg.get("return_mean_hidden_states"))
    ith = cfg.get("ith_hidden_layer", -1)
    if ith is None:
        ith = -1
    if isinstance(ith, bool) or not isinstance(ith, int):
        raise InvalidInputError("logits_config.ith_hidden_layer must be an integer")
    engine = await _esmc_engine(request, model_name)
    as_bytes = _wants_bytes(request)
    (out,) = await _esmc_forward(request, model_name, engine, ids, logits=want_logits, embeddings=want_emb,
                                 hidden_states="hf" if want_hidden else None,
                                 ith_hidden_layer=ith if want_hidden else -1)  # fmt: skip

    def build() -> bytes:
        enc = _to_bytes if as_bytes else (lambda t: t.tolist())
        logits = {"sequence": torch.from_numpy(out["logits"])[None]} if want_logits else {}
        emb = torch.from_numpy(out["embeddings"]) if want_emb else None
        hid = torch.from_numpy(out["hidden_states"])[:, None] if want_hidden else None
        content = {
            "logits": _to_bytes(logits) if as_bytes else {k: v.tolist() for k, v in logits.items()},
            "embeddings": enc(emb[None]) if cfg.get("return_embeddings") else None,
            "hidden_states": enc(hid) if cfg.get("return_hidden_states") else None,
            "mean_embedding": emb.mean(0).tolist() if cfg.get("return_mean_embedding") else None,
            "mean_hidden_state": hid[:, 0].mean(1).tolist() if cfg.get("return_mean_hidden_states") else None,
            "sae_outputs": None,
            "potential_sequence_of_concern": False,
        }
        if getattr(engine, "load_format", None) == "dummy":
            content["warning_messages"] = ["this server runs the model with RANDOM weights (load-format=dummy)"]
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()

    return Response(await run_in_threadpool(build), media_type="application/json")


# ---------------------------------------------------------------------------------------------
# ESM3 generate from an ESMProtein
# ---------------------------------------------------------------------------------------------


@router.post("/api/v1/generate", summary="ESM3: generate from an ESMProtein prompt (sequence-only prompts)")
async def generate_endpoint(request: Request, body: GenerateRequest, principal: Principal = Depends(require_principal)):
    """Fill in the ``_`` positions of ``inputs.sequence`` with ESM3 (iterative unmasking, the same
    sampler and defaults as ``generate_tensor``) -> ``{"outputs": {"sequence": "...", "plddt": null, ...}}``.

    Only ``track = "sequence"`` with a sequence-only prompt is served: coordinates need the
    structure tokenizer, structure output needs the structure decoder (422 naming them).
    """
    from plmserve.api.forge import MAX_RESIDUES, _get_model, _warnings, run_esm3
    from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens

    if _family(body.model) != "esm3":
        raise InvalidParameterError(f"model '{body.model}' cannot generate: generate is served for ESM3 models")
    _not_needed(body.inputs, ("sequence",), body.model)
    if body.track != "sequence":
        raise UnsupportedTrackError(
            f"track '{body.track}': generating it from an ESMProtein needs the ESM3 "
            + ("structure decoder (VQ-VAE)" if body.track == "structure" else f"{body.track} decoder")
            + " to turn tokens into a protein, which this server does not provide; use track 'sequence', or "
            "/api/v1/generate_tensor for raw tokens")
    ids = tokenize(_sequence_string(body.inputs))
    if len(ids) - 2 > MAX_RESIDUES:
        raise InvalidInputError(f"inputs.sequence: {len(ids) - 2} residues is over the limit of {MAX_RESIDUES}")
    defaults = GenerationConfig(track="sequence")
    pick = lambda v, d: d if v is None else v  # noqa: E731
    config = GenerationConfig(
        track="sequence", num_steps=pick(body.num_steps, defaults.num_steps),
        temperature=pick(body.temperature, defaults.temperature),
        temperature_annealing=pick(body.temperature_annealing, defaults.temperature_annealing),
        top_p=pick(body.top_p, defaults.top_p), schedule=pick(body.schedule, defaults.schedule),
        strategy=pick(body.strategy, defaults.strategy), invalid_ids=tuple(body.invalid_ids or ()),
        condition_on_coordinates_only=pick(body.condition_on_coordinates_only, defaults.condition_on_coordinates_only),
    )  # fmt: skip
    config.validate()
    model = await _get_model(request, body.model)
    tokens = ProteinTokens.from_lists({"sequence": ids})
    result = await run_esm3(request, model, body.model, principal, "generate", tokens=tokens, config=config,
                            seed=body.seed)
    seq = detokenize(result.tokens.sequence.tolist())
    content: dict[str, Any] = {"outputs": {"sequence": seq, **{k: None for k in DECODE_NULLS}},
                               "potential_sequence_of_concern": False}  # fmt: skip
    if _warnings(model):
        content["warning_messages"] = _warnings(model)
    return _json(content)


# ---------------------------------------------------------------------------------------------
# ESM3 forward_and_sample (raw tokens in and out)
# ---------------------------------------------------------------------------------------------


class SamplingTrackBody(BaseModel):
    """One track of ``sampling_config`` (the official ``SamplingTrackConfig``; same defaults)."""

    model_config = ConfigDict(extra="ignore")
    temperature: float = 1.0
    top_p: float = 1.0
    only_sample_masked_tokens: bool = True
    invalid_ids: list[int] = Field(default_factory=list)
    topk_logprobs: int = 0


class EmbeddingConfigBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sequence: bool = Field(default=False, description="return the mean embedding [d]")
    per_residue: bool = Field(default=False, description="return the per-position embeddings [N, d]")


class ForwardAndSampleRequest(BaseModel):
    """Body of ``POST /api/v1/forward_and_sample`` (field names exactly as the esm 3.2.1 client)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    inputs: dict[str, Any] = Field(description="Tokens, as generate_tensor (N = L + 2; absent track = null)")
    sampling_config: dict[str, Optional[SamplingTrackBody]] = Field(
        default_factory=dict,
        description="per track (sequence, structure, secondary_structure, sasa, function): null or a config")
    embedding_config: EmbeddingConfigBody = Field(default_factory=EmbeddingConfigBody)
    potential_sequence_of_concern: Optional[bool] = None
    seed: Optional[int] = Field(default=None, description="plmserve extension: makes the call reproducible")


FORWARD_AND_SAMPLE_TRACKS = ("sequence", "structure", "secondary_structure", "sasa", "function")


def _forward_and_sample_body(model: Any, tokens: Any, body: ForwardAndSampleRequest, configs: dict) -> bytes:
    """Run :func:`plmserve.models.esm3.forward_sample.forward_and_sample` -> the JSON response bytes."""
    from plmserve.models.esm3.forward_sample import forward_and_sample

    samples, emb = forward_and_sample(model, tokens, configs, seed=body.seed)
    content: dict[str, Any] = {}
    for track in FORWARD_AND_SAMPLE_TRACKS:
        sample = samples.get(track)
        if sample is not None:
            lst = lambda t: None if t is None else t.tolist()  # noqa: E731
            content[track] = {"tokens": sample.tokens.tolist(), "logprobs": lst(sample.logprobs),
                              "entropy": sample.entropy.tolist(), "topk_logprobs": lst(sample.topk_logprobs),
                              "topk_tokens": lst(sample.topk_tokens)}  # fmt: skip
        elif getattr(tokens, track) is not None:  # not sampled: echoed, as the official code
            content[track] = {"tokens": getattr(tokens, track).tolist(), "logprobs": None, "entropy": None,
                              "topk_logprobs": None, "topk_tokens": None}  # fmt: skip
        else:
            content[track] = None
    cfg = body.embedding_config
    content["embeddings"] = {"per_residue": emb.tolist() if cfg.per_residue else None,
                             "sequence": emb.mean(0).tolist() if cfg.sequence else None}  # fmt: skip
    content["potential_sequence_of_concern"] = False
    # top-k entries of ids that cannot be sampled are -inf and unsampled sasa values inf (as the official
    # tensors); JSON has no such numbers, so they go out as -Infinity / Infinity, which Python's json (the
    # SDK's httpx) reads back as floats
    return json.dumps(content, allow_nan=True, separators=(",", ":")).encode()


async def _esmc_forward_and_sample(request: Request, body: ForwardAndSampleRequest) -> Response:
    """``forward_and_sample`` for an ESM C model (plmserve extension: reachable with
    ``ESM3ForgeInferenceClient(model="esmc-...")``; the esm SDK's ESM C client has no such call):
    the sequence track only, sampled from the ESM C logits with the ESM3 sequence sampler
    (:func:`plmserve.models.esm3.forward_sample.sample_sequence_logits`); embeddings are the
    final-LayerNorm output, as ESM C ``logits`` returns them.

    Raises:
        UnsupportedTrackError: a non-sequence track in ``inputs`` or ``sampling_config`` (422).
    """
    from plmserve.models.esm3.forward_sample import SamplingTrackConfig, sample_sequence_logits

    _not_needed(body.inputs, ("sequence",), body.model)
    for track, cfg in body.sampling_config.items():
        if track not in FORWARD_AND_SAMPLE_TRACKS:
            raise InvalidParameterError(
                f"sampling_config.{track}: unknown track; known: {', '.join(FORWARD_AND_SAMPLE_TRACKS)}")
        if track != "sequence" and cfg is not None:
            raise UnsupportedTrackError(f"sampling_config.{track}: ESM C has only the sequence track")
    seq_body = body.sampling_config.get("sequence")
    cfg = SamplingTrackConfig(**seq_body.model_dump()) if seq_body is not None else None
    if cfg is not None:
        cfg.validate("sequence")
    if body.seed is not None and not 0 <= body.seed < 2**63:
        raise InvalidParameterError(f"seed must be an integer in [0, 2**63), got {body.seed}")
    ids = _token_list(body.inputs, ESMC_MAX_RESIDUES)
    engine = await _esmc_engine(request, body.model)
    (out,) = await _esmc_forward(request, body.model, engine, ids, logits=True, embeddings=True, hidden_states=None,
                                 ith_hidden_layer=-1)  # fmt: skip

    def build() -> bytes:
        tokens = torch.tensor(ids, dtype=torch.long)
        content: dict[str, Any] = {t: None for t in FORWARD_AND_SAMPLE_TRACKS}
        if cfg is None:
            content["sequence"] = {"tokens": ids, "logprobs": None, "entropy": None, "topk_logprobs": None,
                                   "topk_tokens": None}  # fmt: skip
        else:
            smp = sample_sequence_logits(torch.from_numpy(out["logits"]), tokens, cfg, seed=body.seed)
            lst = lambda t: None if t is None else t.tolist()  # noqa: E731
            content["sequence"] = {"tokens": smp.tokens.tolist(), "logprobs": smp.logprobs.tolist(),
                                   "entropy": smp.entropy.tolist(), "topk_logprobs": lst(smp.topk_logprobs),
                                   "topk_tokens": lst(smp.topk_tokens)}  # fmt: skip
        emb = torch.from_numpy(out["embeddings"])
        ecfg = body.embedding_config
        content["embeddings"] = {"per_residue": emb.tolist() if ecfg.per_residue else None,
                                 "sequence": emb.mean(0).tolist() if ecfg.sequence else None}  # fmt: skip
        content["potential_sequence_of_concern"] = False
        if getattr(engine, "load_format", None) == "dummy":
            content["warning_messages"] = ["this server runs the model with RANDOM weights (load-format=dummy)"]
        return json.dumps(content, allow_nan=True, separators=(",", ":")).encode()

    return Response(await run_in_threadpool(build), media_type="application/json")


def _forward_and_sample_schema() -> dict:
    from plmserve.api.forge import _schema

    return _schema(ForwardAndSampleRequest)


@router.post("/api/v1/forward_and_sample",
             summary="ESM3: one forward pass and one sampling step per track (raw tokens in/out)",
             openapi_extra=_forward_and_sample_schema())  # fmt: skip
async def forward_and_sample_endpoint(request: Request, principal: Principal = Depends(require_principal)):
    """``{"sequence": {"tokens", "logprobs", "entropy", "topk_logprobs", "topk_tokens"} | null, ...,
    "embeddings": {"per_residue": [N][d] | null, "sequence": [d] | null}}``; semantics in
    :mod:`plmserve.models.esm3.forward_sample` (every track; ``sasa`` tokens are values in Å²,
    ``inf`` where not sampled); ``esmc-*`` models: the sequence track only (extension)."""
    from plmserve.api.forge import _get_model, _parse_body, _parse_tokens, _warnings, run_esm3
    from plmserve.models.esm3.forward_sample import SamplingTrackConfig

    body: ForwardAndSampleRequest = await _parse_body(request, ForwardAndSampleRequest)
    family = _family(body.model)
    if family == "esmc":
        return await _esmc_forward_and_sample(request, body)
    if family != "esm3":
        raise InvalidParameterError(f"model '{body.model}': forward_and_sample is served for ESM3 and ESM C models")
    configs: dict[str, Any] = {}
    for track, cfg in body.sampling_config.items():
        if track not in FORWARD_AND_SAMPLE_TRACKS:
            raise InvalidParameterError(
                f"sampling_config.{track}: unknown track; known: {', '.join(FORWARD_AND_SAMPLE_TRACKS)}")
        if cfg is not None:
            configs[track] = SamplingTrackConfig(**cfg.model_dump())
            configs[track].validate(track)
    if body.seed is not None and not 0 <= body.seed < 2**63:
        raise InvalidParameterError(f"seed must be an integer in [0, 2**63), got {body.seed}")
    model = await _get_model(request, body.model)
    tokens = await run_in_threadpool(_parse_tokens, body.inputs)
    tokens.validate(getattr(getattr(model, "config", None), "residue_annotation_vocab_size", 1478))
    raw = await run_esm3(request, model, body.model, principal, "forward_and_sample", fn=_forward_and_sample_body,
                         args=(tokens, body, configs))
    if _warnings(model):
        raw = raw[:-1] + b',"warning_messages":' + json.dumps(_warnings(model)).encode() + b"}"
    return Response(raw, media_type="application/json")


def include(app: FastAPI) -> None:
    """Add ``/api/v1/encode``, ``/api/v1/decode`` ``/api/v1/generate`` and ``/api/v1/forward_and_sample``."""
    app.include_router(router)


async def maybe_esmc_logits(request: Request) -> Optional[Response]:
    """The ESM C answer of ``POST /api/v1/logits`` when the body names an ESM C model, else None
    (the ESM3 handler goes on; the body stays readable, Starlette caches it)."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and is_esmc(data.get("model")):
        return await esmc_logits(request, data)
    return None
