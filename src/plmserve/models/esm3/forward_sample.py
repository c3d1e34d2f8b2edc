"""ESM3 ``forward_and_sample``: one trunk forward pass, then one sampling step per requested track.

Reimplements the official ``esm`` 3.2.1 ``ESM3.forward_and_sample`` (``esm.utils.generation.
_sample_per_prompt`` / ``_sample_track`` / ``_sample_function_track`` / ``_compute_track_metadata``,
``esm.utils.sampling.sample_sasa_logits``; ``shared/specs/esm3-api.md`` §5), reusing the sampling
helpers of :mod:`plmserve.models.esm3.sampler` (top-p filter, allowed ids, categorical draw with a
per-request generator, the function-track ``<none>`` rule):

1. Absent tracks take the trunk's defaults for the forward pass (as ``ESMProteinTensor.empty``);
   a sampled track that is absent starts as the all-mask track (BOS/EOS at the ends).
2. Token tracks (``sequence``, ``structure``, ``secondary_structure``): logits ``[N, V]``
   (float32); top-p on the un-tempered logits (``top_p < 1``), then every id that is special,
   outside the track's vocabulary or in ``invalid_ids`` set to ``-inf`` (the official order in
   3.2.1: top-p first); candidate = argmax at temperature 0, else a draw from
   ``softmax(logits / temperature)``. ``log_probs = log_softmax(masked logits)`` (before
   temperature: the official code edits the logits in place, so the masks show in the
   log-probs). Sampling mask: positions 1..N-2, not at positions whose current token is in
   ``invalid_ids`` (mask id excepted), and only mask positions when ``only_sample_masked_tokens``.
   Tokens = candidate inside the mask, input outside. Per position: ``entropy`` of
   ``Categorical(logits=log_probs)`` (nats), ``logprob`` = ``log_probs[token]`` inside the mask
   and 0 outside, ``topk_logprobs`` / ``topk_tokens`` = ``torch.topk(log_probs, k)`` (None at k = 0).
3. ``sasa`` is decoded to values (Å²), as the official default ``decode_sasa_tokens=True``:
   special and ``invalid_ids`` ids -> ``-inf``; ``p = softmax(logits)`` (temperature and top-p are
   not used); value = ``sum(p[3:18] * bin midpoints)`` with midpoints of ``[0] + SASA_BOUNDARIES``;
   ``inf`` where the arg-max is id 18 (the last, open bin) and outside the sampling mask (as in 2,
   mask id 0). Only ``entropy`` (of the masked logits) is returned with it.
4. ``function`` [N, 8]: top-p, ``log_p = log_softmax(logits / temperature)`` over [N, 8, 260];
   where mean over depths of P(``<none>``) > 0.05 all 8 ids are ``<none>`` (3), elsewhere the
   arg-max per depth with ``<none>`` excluded. ``invalid_ids`` are ignored (official warning).
   Sampling mask: positions 1..N-2 (and all-0 positions when ``only_sample_masked_tokens``);
   outside it the log-probs are 0 at the input id and ``-inf`` elsewhere. ``entropy``,
   ``logprobs`` [N, 8] and top-k [N, 8, k] are computed from ``log_p``. Temperature 0 is refused
   (the official code computes ``logits / 0`` and fails with NaN).
5. ``per_residue_embedding`` = the trunk's ``embeddings`` [N, d]; ``mean_embedding`` = their mean
   over all N positions (BOS/EOS included), as the official code.

Not returned: the residue annotations the official code samples together with ``function``
(the Forge response has no field for them). Tracks without a config are echoed.

Differences from Forge, on purpose: an optional integer ``seed`` makes a call reproducible; sampling
at a temperature so small or large that ``logits / T`` overflows float32 uses the equal form
``softmax((logits - max) / T)`` so it stays finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from plmserve.errors import InvalidParameterError
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.sampler import (
    _HEAD_SIZE,
    GenerationSession,
    ProteinTokens,
    _categorical_entropy,
    _new_seed,
    _sample_categorical,
    _top_p_mask,
    allowed_ids,
    empty_tokens,
    run_trunk,
    track_logits,
)

__all__ = ["MAX_TOPK", "SAMPLED_TRACKS", "SamplingTrackConfig", "TrackSample", "forward_and_sample",
           "sample_sequence_logits"]

#: tracks this implementation samples
SAMPLED_TRACKS = (C.TRACK_SEQUENCE, C.TRACK_STRUCTURE, C.TRACK_SECONDARY_STRUCTURE, C.TRACK_SASA, C.TRACK_FUNCTION)
#: official ``MAX_TOPK_*`` (esm.utils.constants.api), the same for every track
MAX_TOPK = 32
#: top-k upper bound per track: the ids of one position
_TOPK_WIDTH = {**_HEAD_SIZE, C.TRACK_FUNCTION: C.FUNCTION_VOCAB_SIZE}


@dataclass
class SamplingTrackConfig:
    """How to sample one track (the official ``SamplingTrackConfig``; same defaults).

    Attributes:
        temperature: >= 0 (0 = argmax).
        top_p: nucleus cutoff in (0, 1] on the un-tempered distribution.
        only_sample_masked_tokens: sample only where the input token is the mask token.
        invalid_ids: ids never sampled; positions holding one of them (mask id excepted) are kept.
        topk_logprobs: 0..32, how many top log-probabilities to return per position.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    only_sample_masked_tokens: bool = True
    invalid_ids: Sequence[int] = field(default_factory=tuple)
    topk_logprobs: int = 0

    def validate(self, track: str) -> None:
        """Raises :class:`InvalidParameterError` naming ``track`` and the field."""
        where = f"sampling_config.{track}"
        if track not in SAMPLED_TRACKS:
            raise InvalidParameterError(f"{where}: unknown track; allowed: {', '.join(SAMPLED_TRACKS)}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise InvalidParameterError(f"{where}.temperature must be a finite number >= 0, got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise InvalidParameterError(f"{where}.top_p must be in (0, 1], got {p!r}")
        k = self.topk_logprobs
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOPK:
            raise InvalidParameterError(f"{where}.topk_logprobs must be an integer in [0, {MAX_TOPK}], got {k!r}")
        if k > _TOPK_WIDTH[track]:
            raise InvalidParameterError(
                f"{where}.topk_logprobs = {k} is more than the {_TOPK_WIDTH[track]} ids of the {track} track")
        if track == C.TRACK_FUNCTION and t == 0:
            raise InvalidParameterError(
                f"{where}.temperature: the function track cannot be sampled at temperature 0 "
                "(log_softmax(logits / 0) is undefined; the official code fails there); use a temperature > 0")
        for i, tok in enumerate(self.invalid_ids):
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise InvalidParameterError(f"{where}.invalid_ids[{i}]: expected an integer token id, got {tok!r}")
        if track != C.TRACK_FUNCTION and not allowed_ids(track, self.invalid_ids):
            raise InvalidParameterError(f"{where}.invalid_ids excludes every token of the {track} track")


@dataclass
class TrackSample:
    """The result for one sampled track (no batch dimension; N = L + 2).

    Attributes:
        tokens: int64 [N] (``function``: [N, 8]), input outside the sampling mask; for ``sasa``
            float32 [N] values in Å² (``inf`` = not sampled or the open bin).
        logprobs: float32 [N] ([N, 8]), log-probability of ``tokens`` (0 outside the sampling
            mask); None for ``sasa``.
        entropy: float32 [N] ([N, 8]), nats.
        topk_logprobs: float32 [N, k] ([N, 8, k]) or None (k = 0, and always for ``sasa``).
        topk_tokens: int64, same shape, or None.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor | None
    entropy: torch.Tensor
    topk_logprobs: torch.Tensor | None
    topk_tokens: torch.Tensor | None


def _sample_track(
    logits: torch.Tensor, tokens: torch.Tensor, track: str, cfg: SamplingTrackConfig, generator: torch.Generator
) -> TrackSample:
    """Steps 2-4 of the module docstring on ``logits`` float32 [N, V] and ``tokens`` int64 [N]."""
    vocab = logits.shape[-1]
    logits = logits.detach().to("cpu", torch.float32)
    if cfg.top_p < 1.0:
        logits = _top_p_mask(logits, float(cfg.top_p))
    else:
        logits = logits.clone()
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[[i for i in allowed_ids(track, cfg.invalid_ids) if i < vocab]] = True
    logits[:, ~allowed] = -math.inf
    if cfg.temperature == 0:
        candidates = logits.argmax(-1)
    else:
        # softmax(logits / T) computed as softmax((logits - max) / T): equal, but finite for any T > 0
        # (T is capped where float32 would turn it into inf)
        shifted = logits - logits.max(-1, keepdim=True).values
        temperature = min(float(cfg.temperature), 1e30)
        candidates = _sample_categorical(torch.softmax(shifted / temperature, dim=-1), generator)
    log_probs = logits.log_softmax(-1)
    sampling = _sampling_mask(tokens, track, cfg)
    out_tokens = torch.where(sampling, candidates, tokens)
    picked = log_probs.gather(-1, out_tokens.clamp(max=vocab - 1)[:, None])[:, 0]
    logprob = torch.where(sampling, picked, torch.zeros_like(picked))
    k = int(cfg.topk_logprobs)
    top_lp, top_ids = (torch.topk(log_probs, k, dim=-1) if k > 0 else (None, None))
    return TrackSample(out_tokens, logprob, _categorical_entropy(log_probs), top_lp, top_ids)


def _sampling_mask(tokens: torch.Tensor, track: str, cfg: SamplingTrackConfig) -> torch.Tensor:
    """bool [N]: positions 1..N-2, minus positions holding an ``invalid_ids`` token (mask id
    excepted), minus non-mask positions when ``only_sample_masked_tokens`` (official
    ``get_sampling_mask``)."""
    n = tokens.shape[0]
    mask_id = C.TRACK_MASK_TOKEN[track]
    sampling = torch.ones(n, dtype=torch.bool)
    sampling[0] = sampling[-1] = False
    keep_ids = sorted({int(i) for i in cfg.invalid_ids if 0 <= int(i) < C.TRACK_VOCAB_SIZE[track]} - {mask_id})
    if keep_ids:
        sampling &= ~torch.isin(tokens, torch.tensor(keep_ids, dtype=tokens.dtype))
    if cfg.only_sample_masked_tokens:
        sampling &= tokens == mask_id
    return sampling


def _sample_sasa(logits: torch.Tensor, tokens: torch.Tensor, cfg: SamplingTrackConfig) -> TrackSample:
    """Step 3 of the module docstring on ``logits`` [N, 19] and ``tokens`` int64 [N]."""
    logits = logits.detach().to("cpu", torch.float32).clone()
    vocab = logits.shape[-1]
    allowed = torch.zeros(vocab, dtype=torch.bool)
    allowed[[i for i in allowed_ids(C.TRACK_SASA, cfg.invalid_ids) if i < vocab]] = True
    logits[:, ~allowed] = -math.inf
    probs = logits.softmax(-1)
    bins = torch.tensor((0.0, *C.SASA_BOUNDARIES))
    mids = (bins[:-1] + bins[1:]) / 2
    values = (probs[:, 3:-1] * mids).sum(-1)
    values[probs.argmax(-1) == vocab - 1] = math.inf
    values[~_sampling_mask(tokens, C.TRACK_SASA, cfg)] = math.inf
    entropy = -torch.nan_to_num(probs * logits.log_softmax(-1)).sum(-1)
    return TrackSample(values, None, entropy, None, None)


def _sample_function(logits: torch.Tensor, tokens: torch.Tensor, cfg: SamplingTrackConfig) -> TrackSample:
    """Step 4 of the module docstring on ``logits`` [N, 8, 260] and ``tokens`` int64 [N, 8]."""
    logits = logits.detach().to("cpu", torch.float32)
    if cfg.top_p < 1.0:
        logits = _top_p_mask(logits, float(cfg.top_p))
    shifted = logits - logits.max(-1, keepdim=True).values  # same log_softmax, finite for any T > 0
    log_p = GenerationSession._function_log_probs(shifted, min(float(cfg.temperature), 1e30))
    candidates = GenerationSession._function_candidates(log_p)
    sampling = torch.ones(tokens.shape[0], dtype=torch.bool)
    sampling[0] = sampling[-1] = False
    if cfg.only_sample_masked_tokens:
        sampling &= (tokens == C.FUNCTION_MASK_TOKEN).all(-1)
    out_tokens = torch.where(sampling[:, None], candidates, tokens)
    fixed = torch.full_like(log_p, -math.inf).scatter(-1, tokens[..., None], 0.0)
    log_p = torch.where(sampling[:, None, None], log_p, fixed)
    picked = log_p.gather(-1, out_tokens[..., None])[..., 0]
    logprob = torch.where(sampling[:, None], picked, torch.zeros_like(picked))
    k = int(cfg.topk_logprobs)
    top_lp, top_ids = (torch.topk(log_p, k, dim=-1) if k > 0 else (None, None))
    return TrackSample(out_tokens, logprob, _categorical_entropy(log_p), top_lp, top_ids)


def sample_sequence_logits(
    logits: torch.Tensor, tokens: torch.Tensor, cfg: SamplingTrackConfig, *, seed: int | None = None
) -> TrackSample:
    """Step 2 of the module docstring for the sequence track on logits computed elsewhere (the ESM C
    trunk shares ESM3's sequence vocabulary and 64-wide head).

    Args:
        logits: float [N, 64], BOS/EOS rows included.
        tokens: int64 [N], the input sequence tokens (mask 32).
        cfg: the sequence track's config (validated here).
        seed: seeds the draw (random when None).

    Raises:
        InvalidParameterError: a config that :meth:`SamplingTrackConfig.validate` rejects, or a
            ``seed`` outside [0, 2**63).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidParameterError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    cfg.validate(C.TRACK_SEQUENCE)
    generator = torch.Generator().manual_seed(_new_seed() if seed is None else int(seed))
    return _sample_track(logits, tokens.to(torch.long), C.TRACK_SEQUENCE, cfg, generator)


def forward_and_sample(
    model: Any,
    tokens: ProteinTokens,
    configs: Mapping[str, SamplingTrackConfig | None],
    *,
    seed: int | None = None,
) -> tuple[dict[str, TrackSample | None], torch.Tensor]:
    """One forward pass of ``model`` on ``tokens`` and one sampling step per configured track.

    Args:
        model: the ESM3 trunk (``forward`` keywords of :meth:`ProteinTokens.logits_kwargs`).
        tokens: the prompt (N = L + 2); validated by the caller.
        configs: track name -> config or None (not sampled); tracks of :data:`SAMPLED_TRACKS`.
        seed: seeds this call's ``torch.Generator`` (random when None).

    Returns:
        (samples, embeddings): ``samples[track]`` a :class:`TrackSample` for every configured
        track, None for the others; ``embeddings`` float32 [N, d] (the trunk's ``embeddings``).

    Raises:
        InvalidParameterError: a config that :meth:`SamplingTrackConfig.validate` rejects, or a
            ``seed`` outside [0, 2**63).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidParameterError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    wanted = {t: c for t, c in configs.items() if c is not None}
    for track, cfg in wanted.items():
        cfg.validate(track)
    generator = torch.Generator().manual_seed(_new_seed() if seed is None else int(seed))
    out = run_trunk(model, tokens.logits_kwargs())
    length = len(tokens) - 2
    samples: dict[str, TrackSample | None] = {t: None for t in configs}
    for track, cfg in wanted.items():
        current = getattr(tokens, track)
        if current is None:
            current = getattr(empty_tokens(length), track)
        logits, current = track_logits(out, track)[0], current.to(torch.long)
        if track == C.TRACK_SASA:
            samples[track] = _sample_sasa(logits, current, cfg)
        elif track == C.TRACK_FUNCTION:
            samples[track] = _sample_function(logits, current, cfg)
        else:
            samples[track] = _sample_track(logits, current, track, cfg, generator)
    return samples, out.embeddings.detach().float().cpu()[0]
