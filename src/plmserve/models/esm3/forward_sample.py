"""ESM3 ``forward_and_sample``: one trunk forward pass, then one sampling step per requested track.

Reimplements the official ``esm`` 3.2.1 ``ESM3.forward_and_sample`` (``esm.utils.generation.
_sample_per_prompt`` / ``_sample_track`` / ``_compute_track_metadata``; ``shared/specs/esm3-api.md``
§5) for the token tracks ``sequence``, ``structure`` and ``secondary_structure``, reusing the
sampling helpers of :mod:`plmserve.models.esm3.sampler` (top-p filter, allowed ids, categorical
draw with a per-request generator):

1. Absent tracks take the trunk's defaults for the forward pass (as ``ESMProteinTensor.empty``);
   a sampled track that is absent starts as the all-mask track (BOS/EOS at the ends).
2. For each track with a config: logits ``[N, V]`` (float32); top-p on the un-tempered logits
   (``top_p < 1``), then every id that is special, outside the track's vocabulary or in
   ``invalid_ids`` set to ``-inf`` (the official order in 3.2.1: top-p first); candidate =
   argmax at temperature 0, else a draw from ``softmax(logits / temperature)``.
3. ``log_probs = log_softmax(masked logits)`` (before temperature: the official code edits the
   logits in place, so the masks show in the log-probs). Sampling mask: positions 1..N-2, not at
   positions whose current token is in ``invalid_ids`` (mask id excepted), and only mask
   positions when ``only_sample_masked_tokens``. Tokens = candidate inside the mask, input outside.
4. Per position: ``entropy`` = entropy of ``Categorical(logits=log_probs)`` (nats), ``logprob`` =
   ``log_probs[token]`` inside the sampling mask and 0 outside, ``topk_logprobs`` /
   ``topk_tokens`` = ``torch.topk(log_probs, k)`` (None when k = 0).
5. ``per_residue_embedding`` = the trunk's ``embeddings`` [N, d]; ``mean_embedding`` = their mean
   over all N positions (BOS/EOS included), as the official code.

Not served (:class:`plmserve.errors.InvalidParameterError` naming the track): ``sasa`` (the
official code decodes it to Å² values from the SASA bins) and ``function`` (InterPro function
tokens and residue annotations); tracks without a config are echoed.

Difference from Forge, on purpose: an optional integer ``seed`` makes a call reproducible.
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

__all__ = ["MAX_TOPK", "SAMPLED_TRACKS", "SamplingTrackConfig", "TrackSample", "forward_and_sample"]

#: tracks this implementation samples
SAMPLED_TRACKS = (C.TRACK_SEQUENCE, C.TRACK_STRUCTURE, C.TRACK_SECONDARY_STRUCTURE)
#: official ``MAX_TOPK_*`` (esm.utils.constants.api), the same for every track
MAX_TOPK = 32
_NOT_SERVED = {
    C.TRACK_SASA: "sampling the sasa track needs the SASA value decoder (bins -> Å²), which this server does not "
    "provide",
    C.TRACK_FUNCTION: "sampling the function track needs the InterPro function tokenizer and residue-annotation "
    "decoder, which this server does not provide",
}


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
        if track in _NOT_SERVED:
            raise InvalidParameterError(f"{where}: {_NOT_SERVED[track]}; sample sequence, structure or "
                                        "secondary_structure")  # fmt: skip
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
        if k > _HEAD_SIZE[track]:
            raise InvalidParameterError(
                f"{where}.topk_logprobs = {k} is more than the {_HEAD_SIZE[track]} ids of the {track} track")
        for i, tok in enumerate(self.invalid_ids):
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise InvalidParameterError(f"{where}.invalid_ids[{i}]: expected an integer token id, got {tok!r}")
        if not allowed_ids(track, self.invalid_ids):
            raise InvalidParameterError(f"{where}.invalid_ids excludes every token of the {track} track")


@dataclass
class TrackSample:
    """The result for one sampled track (no batch dimension; N = L + 2).

    Attributes:
        tokens: int64 [N], input outside the sampling mask.
        logprobs: float32 [N], log-probability of ``tokens`` (0 outside the sampling mask).
        entropy: float32 [N], nats.
        topk_logprobs: float32 [N, k] or None (k = 0).
        topk_tokens: int64 [N, k] or None.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    topk_logprobs: torch.Tensor | None
    topk_tokens: torch.Tensor | None


def _sample_track(
    logits: torch.Tensor, tokens: torch.Tensor, track: str, cfg: SamplingTrackConfig, generator: torch.Generator
) -> TrackSample:
    """Steps 2-4 of the module docstring on ``logits`` float32 [N, V] and ``tokens`` int64 [N]."""
    n, vocab = logits.shape
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
    mask_id = C.TRACK_MASK_TOKEN[track]
    sampling = torch.ones(n, dtype=torch.bool)
    sampling[0] = sampling[-1] = False
    keep_ids = sorted({int(i) for i in cfg.invalid_ids if 0 <= int(i) < C.TRACK_VOCAB_SIZE[track]} - {mask_id})
    if keep_ids:
        sampling &= ~torch.isin(tokens, torch.tensor(keep_ids, dtype=tokens.dtype))
    if cfg.only_sample_masked_tokens:
        sampling &= tokens == mask_id
    out_tokens = torch.where(sampling, candidates, tokens)
    picked = log_probs.gather(-1, out_tokens.clamp(max=vocab - 1)[:, None])[:, 0]
    logprob = torch.where(sampling, picked, torch.zeros_like(picked))
    k = int(cfg.topk_logprobs)
    top_lp, top_ids = (torch.topk(log_probs, k, dim=-1) if k > 0 else (None, None))
    return TrackSample(out_tokens, logprob, _categorical_entropy(log_probs), top_lp, top_ids)


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
        samples[track] = _sample_track(track_logits(out, track)[0], current.to(torch.long), track, cfg, generator)
    return samples, out.embeddings.detach().float().cpu()[0]
