"""The PoET engine: prompt cache, scoring, single-site scan and generation (plain Python API).

Everything here works on CPU (float32/float64) and CUDA (float32/bfloat16/float16)::

    from plmserve.models.poet import PoET
    model = PoET.from_checkpoint("poet.ckpt")                 # or PoET.dummy(...) for smoke tests
    prompt = ["MKTAYIAK...", "MSIQHFRV..."]                   # homologs (ungapped)
    model.score(prompt, ["MKTAYIAK...", ...])                 # -> [n_seqs] log-likelihoods (nats)
    model.score([prompt_a, prompt_b], seqs)                   # replicates -> [2, n_seqs]
    model.score(prompt, seqs, direction="backward")           # the reversed problem only
    model.token_log_probs(prompt, "MKTAYIAK...")              # -> [L + 1] per-token log p (nats)
    model.logits(prompt, "MKTAYIAK...")                       # -> [L + 1, 24] next-token logits
    model.single_site(prompt, wild_type)                      # -> [("WT", s), ("A1R", s), ...]
    model.generate(prompt, 10, temperature=1.0, seed=1)       # -> [(sequence, log-likelihood)]

Log-likelihoods are natural-log sums over the residues and the stop token, conditioned on the
start token (which is not scored); targets ``X``/``B``/``Z`` contribute 0. With ``reverse=True``
(the default, as in the official ``scripts/score.py``) the result is the mean of the forward score
and the score of the reversed problem (every prompt sequence and the query reversed as whole
token arrays). Source: ``shared/specs/poet-model.md`` §1, §4, §5.

A prompt is a list of homolog sequences (``str`` or ``(name, sequence)`` pairs; gaps are removed
and letters upper-cased, like the official prompt builder). Several prompts (ensemble replicates)
are given as a list of such lists (each replicate a ``list``), as a
``plmserve.align`` sampled prompt (anything with a ``.replicates`` attribute) or as a list of
:class:`PromptCache`.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from plmserve.errors import InvalidInputError, InvalidParameterError
from . import alphabet as A
from .model import LayerKV, PoETConfig, PoETModel, init_random_

Progress = Callable[[int, int], None]
"""``progress(done, total)`` callback; called after each batch (units: sequences or variants)."""

_INVALID_SAMPLES = (A.GAP, A.START, A.MASK)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype is None or dtype == "auto":
        out = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        names = {
            "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
            "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        }  # fmt: skip
        if dtype not in names:
            raise InvalidParameterError(f"unknown dtype '{dtype}'; use one of {sorted(names)}")
        out = names[dtype]
    if device.type == "cpu" and out in (torch.float16, torch.bfloat16):
        raise InvalidParameterError(
            f"dtype {out} is not supported on CPU for PoET (use float32, or float16/bfloat16 on CUDA)"
        )
    return out


@dataclass
class PromptCache:
    """The whole-context keys/values of every layer for one prompt, computed once by
    :meth:`PoET.embed` and shared (broadcast) by every batch row that uses it.

    Attributes:
        memory: per layer ``(K, V)``, each ``[H, T, hd]`` (K after RoPE); None for an empty prompt.
        num_tokens: ``T``, prompt tokens including each sequence's start and stop tokens.
        num_sequences: number of prompt sequences.
        reverse: True when built from reversed sequences (the backward half of a score).
    """

    memory: list[LayerKV] | None
    num_tokens: int
    num_sequences: int
    reverse: bool = False

    @property
    def device(self) -> torch.device | None:
        return None if self.memory is None else self.memory[0][0].device

    @property
    def nbytes(self) -> int:
        """Memory held by the cache, in bytes."""
        if self.memory is None:
            return 0
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.memory)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PromptCache":
        """A copy on another device and/or dtype (e.g. offload to CPU, bring back to CUDA)."""
        if self.memory is None:
            return replace(self)
        mem = [(k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)) for k, v in self.memory]
        return replace(self, memory=mem)


@dataclass
class SiteContext:
    """The wild type of a single-site scan decoded once in one direction
    (:meth:`PoET.single_site_prefix`), shared by its mutants' suffix decodes.

    Attributes:
        cache: the prompt cache used (its ``reverse`` is the direction).
        length: ``L``, residues of the wild type.
        wt_tokens: ``[L + 2]`` long, the encoded wild type (start, residues, stop; reversed in
            the backward direction).
        shared: per layer the wild type's ``(seq_k, seq_v, ctx_k, ctx_v)`` states ``[H, L+1, hd]``.
        wt_log_probs: ``[L + 1, V]`` log-softmax of the wild type's next-token logits.
        cum_before: ``[L + 2]``, ``cum_before[p]`` = sum of the wild type's first ``p`` terms.
        wt_score: the wild type's log-likelihood in this direction (nats).
    """

    cache: PromptCache
    length: int
    wt_tokens: Tensor
    shared: list
    wt_log_probs: Tensor
    cum_before: Tensor
    wt_score: float

    def input_index(self, i: int) -> int:
        """Input index ``p`` of (0-based) residue ``i`` in this direction."""
        return (i + 1) if not self.cache.reverse else (self.length - i)

    def suffix_length(self, i: int) -> int:
        """Tokens a mutant at residue ``i`` decodes (its suffix, ``L + 1 - p``)."""
        return self.length + 1 - self.input_index(i)


def _prompt_sequences(prompt: Iterable[Any]) -> list[str]:
    """Normalise one prompt: strings or (name, seq) pairs; gaps/'.' removed, upper-cased, checked."""
    out = []
    for i, item in enumerate(prompt):
        seq = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        if not isinstance(seq, str):
            raise InvalidInputError(
                f"prompt sequence {i}: expected a string or a (name, sequence) pair, got {type(item).__name__}",
                item=i,
            )
        seq = seq.replace("-", "").replace(".", "")
        out.append(A.check_sequence(seq, what="prompt sequence", item=i))
    return out


def _is_ensemble(prompt: Any) -> bool:
    if isinstance(prompt, PromptCache) or isinstance(prompt, str):
        return False
    if hasattr(prompt, "replicates"):
        return True
    if isinstance(prompt, (list, tuple)) and prompt:
        first = prompt[0]
        return isinstance(first, (list, PromptCache)) or hasattr(first, "replicates")
    return False


def _replicates(prompt: Any) -> list[Any]:
    if hasattr(prompt, "replicates"):
        return list(prompt.replicates)
    return list(prompt)


_DIRECTIONS = {"both": [False, True], "forward": [False], "backward": [True]}


def _directions(reverse: bool, direction: str | None) -> list[bool]:
    """The directions scored (False = forward, True = backward)."""
    if direction is None:
        return [False, True] if reverse else [False]
    try:
        return list(_DIRECTIONS[direction])
    except KeyError:
        raise InvalidParameterError(
            f"unknown direction {direction!r}; expected one of {', '.join(_DIRECTIONS)}"
        ) from None


def ensemble_mean(scores: np.ndarray) -> np.ndarray:
    """Mean over the replicate axis of ``[n_prompts, n]`` scores (the web app's single number)."""
    scores = np.asarray(scores)
    return scores.mean(axis=0) if scores.ndim == 2 else scores


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_length: int, n: int) -> None:
    if not (isinstance(n, int) and n >= 1):
        raise InvalidParameterError(f"the number of sequences to generate must be a positive integer, got {n!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InvalidParameterError(f"'temperature' must be positive, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InvalidParameterError(f"'top_k' must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise InvalidParameterError(f"'top_p' must be in (0, 1], got {top_p}")
    if not (isinstance(max_length, int) and max_length >= 1):
        raise InvalidParameterError(f"'max_length' must be a positive integer, got {max_length!r}")


def top_k_top_p_filter(scores: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Hugging Face style filtering of next-token scores ``[B, V]`` (spec §4.6).

    ``top_k``: keep the ``k`` highest (None = off). ``top_p``: keep the smallest set whose softmax
    mass exceeds ``top_p`` (the first token crossing the threshold is kept; the top token always).
    Removed entries become ``-inf``.
    """
    out = scores
    if top_k is not None:
        k = min(max(top_k, 1), out.shape[-1])
        kth = torch.topk(out, k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(out, descending=True, dim=-1)
        cum = torch.softmax(sorted_scores.float(), dim=-1).cumsum(dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        out = out.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return out



def _progress_counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[int], None]:
    """``tick(n)``: add ``n`` finished units and report ``(done, total)`` to ``progress`` (if any)."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    return tick


class PoET:
    """A loaded PoET model with the plmserve operations (score, single-site, generate).

    Args:
        model: the network (:class:`PoETModel`), already on ``device`` in ``dtype``.
        is_dummy: True when the weights are random (must be shown to users).
        source: where the weights came from (path, or ``"dummy"``).

    Use :meth:`from_checkpoint`, :meth:`from_state_dict` or :meth:`dummy` to build one.
    Attributes ``batch_tokens`` (query tokens per batch, default 4096) and ``batch_rows``
    (sequences per batch, default 32) bound the work done at once.
    """

    def __init__(self, model: PoETModel, *, is_dummy: bool = False, source: str = ""):
        self.model = model.eval()
        self.is_dummy = is_dummy
        self.source = source
        self.batch_tokens = 4096
        self.batch_rows = 32

    # ------------------------------------------------------------------ construction
    @property
    def config(self) -> PoETConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self.model.token_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embed.weight.dtype

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        cfg: PoETConfig,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        source: str = "",
    ) -> "PoET":
        """Build from a module state dict (strict: every key present, none left over).

        ``dtype`` default: float32 on CPU, bfloat16 on CUDA. In float16 the rotary frequencies are
        rounded to float16 like the official ``model.half()``; in bfloat16 they stay float32.

        Raises:
            ModelLoadError: missing/unexpected keys or shape mismatches (names them).
        """
        from plmserve.errors import ModelLoadError

        dev = _resolve_device(device)
        dt = _resolve_dtype(dtype, dev)
        with torch.device("meta"):
            net = PoETModel(cfg)
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{source or 'state dict'}: does not match the PoET architecture: {exc}") from exc
        # parameters to the working dtype; rotary buffers: fp32 except fp16 (official emulation)
        for name, buf in net.named_buffers():
            keep = torch.float16 if dt == torch.float16 else torch.float32
            if dt == torch.float64:
                keep = torch.float64
            _set_buffer(net, name, buf.to(keep))
        for p in net.parameters():
            p.data = p.data.to(dt)
        net = net.to(dev)
        return cls(net, source=source)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> "PoET":
        """Load the official ``poet.ckpt`` (or a file in the same layout, or a ``.safetensors``
        export written by :func:`plmserve.models.poet.convert`).

        Hyperparameters are read from the checkpoint and cross-checked against the tensor shapes.

        Raises:
            FileNotFoundError, ModelLoadError.
        """
        from .checkpoint import read_weights

        state, cfg = read_weights(path)
        return cls.from_state_dict(state, cfg, device=device, dtype=dtype, source=str(path))

    @classmethod
    def dummy(
        cls,
        d_model: int = 1024,
        n_layers: int = 12,
        n_heads: int | None = None,
        seed: int = 0,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> "PoET":
        """The real architecture with random weights (``load_format="dummy"``): every parameter
        drawn (nothing zero), head dimension 64 unless ``n_heads`` is given."""
        heads = n_heads or max(1, d_model // 64)
        cfg = PoETConfig(hidden_dim=d_model, num_layers=n_layers, nhead=heads).validate()
        net = init_random_(PoETModel(cfg), seed=seed)
        out = cls.from_state_dict(net.state_dict(), cfg, device=device, dtype=dtype, source="dummy")
        out.is_dummy = True
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    # ------------------------------------------------------------------ prompt cache
    def embed(self, prompt: Sequence[Any], *, reverse: bool = False) -> PromptCache:
        """Compute the whole-context K/V of every layer for ``prompt`` once.

        Args:
            prompt: homolog sequences (``str`` or ``(name, seq)``); may be empty (no prompt).
            reverse: reverse every prompt sequence as a whole token array (``$QES*``), keeping
                the order of the sequences (the backward half of the official score).

        Returns:
            A :class:`PromptCache` (``[H, T, hd]`` per layer, on the model's device and dtype).

        Raises:
            InvalidInputError: a bad character (names the prompt sequence and position).
        """
        if isinstance(prompt, PromptCache):
            return prompt
        if isinstance(prompt, str):  # one bare sequence is a one-sequence prompt
            prompt = [prompt]
        seqs = _prompt_sequences(prompt)
        if not seqs:
            return PromptCache(None, 0, 0, reverse)
        arrays = [A.encode_sequence(s, reverse=reverse) for s in seqs]
        tokens = torch.as_tensor(np.concatenate(arrays), device=self.device)
        memory = self.model.embed_prompt(tokens, [len(a) for a in arrays])
        return PromptCache(memory, int(tokens.numel()), len(seqs), reverse)

    # ------------------------------------------------------------------ scoring
    def _token_logprobs(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``log p(target)`` ``[B, L]`` (0 where the target is the mask id 23)."""
        acc = torch.promote_types(logits.dtype, torch.float32)
        lp = torch.log_softmax(logits.to(acc), dim=-1).gather(-1, targets[..., None])[..., 0]
        return lp.masked_fill(targets == A.MASK, 0.0)

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped by length (longest first) within the row/token budgets; a batch only
        takes rows at least 90% as long as its longest (little padding)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = lengths[cur[0]] if cur else lengths[i]
            too_short = lengths[i] < 0.9 * width  # would waste > 10% of the row on padding
            if cur and (too_short or len(cur) >= self.batch_rows or (len(cur) + 1) * width > self.batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def score_direction(self, cache: PromptCache, sequences: Sequence[str]) -> np.ndarray:
        """Log-likelihoods of ``sequences`` (already checked with ``alphabet.check_sequence``)
        in the direction of ``cache`` only (one half of :meth:`score`), batched by length.

        Returns:
            float64 ``[len(sequences)]`` (nats).
        """
        return self._score_direction(cache, list(sequences), None)

    def _score_direction(
        self, cache: PromptCache, seqs: list[str], on_batch: Callable[[int], None] | None
    ) -> np.ndarray:
        tokens = [A.encode_sequence(s, reverse=cache.reverse) for s in seqs]
        out = np.zeros(len(seqs), dtype=np.float64)
        for batch in self._batches([len(t) for t in tokens]):
            width = max(len(tokens[i]) for i in batch)
            x = np.full((len(batch), width), A.MASK, dtype=np.int64)
            for r, i in enumerate(batch):
                x[r, : len(tokens[i])] = tokens[i]
            xt = torch.as_tensor(x, device=self.device)
            inp, tgt = xt[:, :-1], xt[:, 1:]
            pos = torch.arange(inp.shape[1], device=self.device).expand_as(inp)
            logits, _ = self.model.decode(inp, pos, memory=cache.memory)
            ll = self._token_logprobs(logits, tgt).sum(dim=-1)
            out[batch] = ll.double().cpu().numpy()
            if on_batch:
                on_batch(len(batch))
        return out

    # ------------------------------------------------------------------ per-token outputs
    def _one_sequence(self, prompt: Any, sequence: str, reverse: bool) -> tuple[PromptCache, np.ndarray, Tensor]:
        if _is_ensemble(prompt):
            raise InvalidParameterError("per-token outputs take one prompt, not replicates; call once per replicate")
        seq = A.check_sequence(sequence, what="sequence")
        cache = prompt if isinstance(prompt, PromptCache) else self.embed(prompt, reverse=reverse)
        ids = A.encode_sequence(seq, reverse=cache.reverse)
        inp = torch.as_tensor(ids[None, :-1], device=self.device)
        pos = torch.arange(inp.shape[1], device=self.device)[None]
        logits, _ = self.model.decode(inp, pos, memory=cache.memory)
        return cache, ids, logits[0]

    def logits(self, prompt: Any, sequence: str, *, reverse: bool = False) -> np.ndarray:
        """Next-token logits along ``sequence`` given ``prompt`` (one forward pass, teacher forced).

        The input is ``*SEQ`` (start token + residues; ``$QES`` reversed, with the prompt
        reversed too, when ``reverse``); row ``t`` is the unnormalised distribution of token
        ``t + 1``: rows ``0..L-1`` predict the residues, row ``L`` the stop token.

        Args:
            prompt: one prompt (list of sequences or ``(name, sequence)``), or a
                :class:`PromptCache` (then its own direction is used and ``reverse`` is ignored).
            sequence: the query (ungapped, ``L`` residues).
            reverse: the backward direction (official ``score.py``'s second half).

        Returns:
            float32 ``[L + 1, 24]``; columns are token ids: ``ARNDCQEGHILKMFPSTWYV`` (0-19), ``-``,
            ``*`` (start), ``$`` (stop), ``X`` (:data:`plmserve.models.poet.alphabet.TOKENS`).
            Source: official ``PoET.logits(x, memory)`` (``poet-model.md`` §4).

        Raises:
            InvalidInputError: a bad character. InvalidParameterError: several prompts.
        """
        with torch.inference_mode():
            _, _, logits = self._one_sequence(prompt, sequence, reverse)
            return logits.float().cpu().numpy()

    def token_log_probs(self, prompt: Any, sequence: str, *, reverse: bool = False) -> np.ndarray:
        """Natural-log probability of each scored token of ``sequence`` given ``prompt``.

        Entry ``t`` is ``log p(token t+1 | prompt, tokens <= t)``: the ``L`` residues, then the
        stop token (``L + 1`` entries; in the backward direction the residues reversed, then the
        start token). ``X``/``B``/``Z`` targets are 0. The sum equals
        ``score(prompt, [sequence], direction="backward" if reverse else "forward")``.

        Args: as :meth:`logits`.

        Returns:
            float64 ``[L + 1]`` (log-softmax in float32 or wider, from :meth:`logits`).
            Source: ``poet-model.md`` §5 (per-token terms of the log-likelihood).

        Raises:
            InvalidInputError: a bad character. InvalidParameterError: several prompts.
        """
        with torch.inference_mode():
            _, ids, logits = self._one_sequence(prompt, sequence, reverse)
            targets = torch.as_tensor(ids[None, 1:], device=self.device)
            return self._token_logprobs(logits[None], targets)[0].double().cpu().numpy()

    def score(
        self,
        prompt: Any,
        sequences: Sequence[str],
        *,
        reverse: bool = True,
        direction: str | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Log-likelihood of each sequence given the prompt (natural log, summed; spec §5).

        Args:
            prompt: one prompt (list of sequences, or a :class:`PromptCache`, then only its
                direction is scored), or several prompts (replicates).
            sequences: the sequences to score (ungapped; ``X``/``B``/``Z`` allowed and not scored).
            reverse: average the forward and the reversed (backward) score, as the official
                ``score.py`` does.
            direction: ``"forward"``, ``"backward"`` (the reversed problem only) or ``"both"``
                (the mean); when given it replaces ``reverse``.
            progress: ``progress(done, total)`` after each batch (total = sequences x prompts x
                directions).

        Returns:
            float64 ``[n_seqs]`` for one prompt, ``[n_prompts, n_seqs]`` for replicates
            (:func:`ensemble_mean` gives the mean).

        Raises:
            InvalidInputError: empty list, or a bad character (names the item, position, character).
            InvalidParameterError: an unknown ``direction``.
        """
        if isinstance(sequences, str):
            sequences = [sequences]
        directions = _directions(reverse, direction)
        seqs = [A.check_sequence(s, what="sequence", item=i) for i, s in enumerate(sequences)]
        if not seqs:
            raise InvalidInputError("no sequences to score")
        prompts = _replicates(prompt) if _is_ensemble(prompt) else [prompt]
        total = len(seqs) * sum(1 if isinstance(p, PromptCache) else len(directions) for p in prompts)
        tick = _progress_counter(total, progress)

        rows = []
        for p in prompts:
            if isinstance(p, PromptCache):
                rows.append(self._score_direction(p, seqs, tick))
                continue
            per_dir = [self._score_direction(self.embed(p, reverse=d), seqs, tick) for d in directions]
            rows.append(np.mean(per_dir, axis=0))
        result = np.stack(rows)
        return result if _is_ensemble(prompt) else result[0]

    # ------------------------------------------------------------------ single-site scan
    def single_site_prefix(self, cache: PromptCache, wt: str) -> "SiteContext":
        """Decode the wild type ``wt`` once in the cache's direction (step 1 of the single-site
        scan, see :meth:`single_site`): its log-likelihood, per-token terms and every layer's
        states, shared by all of its mutants' suffix decodes (:meth:`single_site_suffix`).

        Args:
            cache: the prompt cache (its ``reverse`` gives the direction).
            wt: the wild type, already checked (``alphabet.check_sequence``), ``L`` residues.

        Returns:
            A :class:`SiteContext` (tensors on the model's device; states ``[H, L+1, hd]``).
        """
        L = len(wt)
        wt_tok = torch.as_tensor(A.encode_sequence(wt, reverse=cache.reverse), device=self.device)  # [L+2]
        pos_all = torch.arange(L + 1, device=self.device)
        logits, states = self.model.decode(wt_tok[None, :-1], pos_all[None], memory=cache.memory, return_states=True)
        assert states is not None
        shared = [tuple(s[0] for s in layer) for layer in states]  # [H, L+1, hd] each
        wt_lp_full = torch.log_softmax(logits[0].to(torch.promote_types(logits.dtype, torch.float32)), -1)
        terms = wt_lp_full.gather(-1, wt_tok[1:, None])[:, 0].masked_fill(wt_tok[1:] == A.MASK, 0.0)  # [L+1]
        cum_before = torch.cat([terms.new_zeros(1), torch.cumsum(terms, 0)])  # cum_before[p] = sum terms[:p]
        return SiteContext(cache, L, wt_tok, shared, wt_lp_full, cum_before, float(terms.sum()))

    def single_site_suffix(self, site: "SiteContext", muts: Sequence[tuple[int, int]]) -> np.ndarray:
        """Scores of the mutants ``muts`` (0-based residue index, amino-acid id) in one batch:
        each decodes only its suffix after the substitution, attending to the wild type's prefix
        states of ``site`` (step 2 of :meth:`single_site`; callers group mutants of similar
        suffix length, ``L + 1 - p``, with :meth:`_batches`).

        Returns:
            float64 ``[len(muts)]`` absolute log-likelihoods in the site's direction (nats).
        """
        L, wt_tok, cache = site.length, site.wt_tokens, site.cache
        p_list = [site.input_index(i) for i, _ in muts]
        width = max(L + 1 - p for p in p_list)
        p_t = torch.as_tensor(p_list, device=self.device)
        aa_t = torch.as_tensor([a for _, a in muts], device=self.device)
        offs = torch.arange(width, device=self.device)
        idx = p_t[:, None] + offs[None, :]  # absolute positions [B, W]
        valid = idx <= L
        idx_c = idx.clamp(max=L)
        x = torch.where(valid, wt_tok[:-1][idx_c], torch.full_like(idx_c, A.MASK))
        x[:, 0] = aa_t
        tgt = torch.where(valid, wt_tok[1:][idx_c], torch.full_like(idx_c, A.MASK))
        lg, _ = self.model.decode(x, idx_c, memory=cache.memory, shared=site.shared, shared_len=p_t)
        suffix = self._token_logprobs(lg, tgt).sum(-1)
        first = site.wt_log_probs[p_t - 1, aa_t]  # log p(mutant residue | WT prefix)
        total = site.cum_before[p_t - 1] + first + suffix
        return total.double().cpu().numpy()

    def _single_site_direction(
        self, cache: PromptCache, wt: str, muts: list[tuple[int, int]], on_batch: Callable[[int], None] | None
    ) -> tuple[float, np.ndarray]:
        """WT log-likelihood and the mutants' (0-based residue index, amino-acid id) scores in the
        cache's direction, decoding only each mutant's suffix after the shared wild-type prefix."""
        site = self.single_site_prefix(cache, wt)
        out = np.zeros(len(muts), dtype=np.float64)
        suffix_len = [site.suffix_length(i) for i, _ in muts]
        for batch in self._batches(suffix_len):
            out[batch] = self.single_site_suffix(site, [muts[j] for j in batch])
            if on_batch:
                on_batch(len(batch))
        return site.wt_score, out

    def single_site(
        self,
        prompt: Any,
        sequence: str,
        *,
        reverse: bool = True,
        positions: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> list[tuple[str, Any]]:
        """Score the wild type and every single substitution (the OpenProtein single-site scan).

        Rows: ``("WT", score)`` first, then for each 1-based position ``i`` the substitutions to
        ``ARNDCQEGHILKMFPSTWYV`` except the wild-type residue, coded ``A1R`` (19·L rows for a
        standard sequence). Scores are absolute log-likelihoods (the same numbers as
        :meth:`score` on the mutant sequences), forward/backward averaged when ``reverse``.

        Algorithm: a substitution at position ``i`` leaves tokens before it identical to the
        wild type, and PoET is causal, so every layer's states of that prefix equal the wild
        type's. The wild type is decoded once; each mutant decodes only its suffix, attending to
        the wild type's cached prefix states (shared by all rows, never copied) and to the prompt
        cache. Mutants are batched by suffix length. Cost: ~half of decoding every mutant in full.

        Args:
            positions: scan only these 1-based positions (default: all), in the given order.

        Returns:
            ``list[(code, float)]`` for one prompt; ``list[(code, np.ndarray[n_prompts])]`` for
            replicates.

        Raises:
            InvalidInputError: a bad character in ``sequence`` or the prompt; a position outside
                ``1..len(sequence)``.
        """
        wt = A.check_sequence(sequence, what="sequence")
        if positions is None:
            scan = list(range(len(wt)))
        else:
            scan = []
            for p in positions:
                if not 1 <= int(p) <= len(wt):
                    raise InvalidInputError(f"position {p} is outside the sequence (1..{len(wt)})", position=int(p))
                scan.append(int(p) - 1)
        muts: list[tuple[int, int]] = []
        codes = ["WT"]
        for i in scan:
            ch = wt[i]
            for a, aa in enumerate(A.AMINO_ACIDS):
                if aa != ch:
                    muts.append((i, a))
                    codes.append(f"{ch}{i + 1}{aa}")
        prompts = _replicates(prompt) if _is_ensemble(prompt) else [prompt]
        directions = [False, True] if reverse else [False]
        total = len(muts) * sum(1 if isinstance(p, PromptCache) else len(directions) for p in prompts)
        tick = _progress_counter(total, progress)

        columns = []
        for p in prompts:
            caches = [p] if isinstance(p, PromptCache) else [self.embed(p, reverse=d) for d in directions]
            per_dir = []
            for c in caches:
                wt_score, scores = self._single_site_direction(c, wt, muts, tick)
                per_dir.append(np.concatenate([[wt_score], scores]))
            columns.append(np.mean(per_dir, axis=0))
        if _is_ensemble(prompt):
            mat = np.stack(columns, axis=1)  # [rows, n_prompts]
            return [(code, mat[r]) for r, code in enumerate(codes)]
        return [(code, float(columns[0][r])) for r, code in enumerate(codes)]

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt: Any,
        n: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        max_length: int = 1000,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> list[tuple[str, Any]]:
        """Sample ``n`` sequences given the prompt (spec §4.6), with their log-likelihoods.

        At each step the next-token log-probabilities get gap, start and ``X`` removed, are
        divided by ``temperature``, filtered (:func:`top_k_top_p_filter`) and sampled. A sequence
        ends at the stop token or after ``max_length`` residues. With several prompts
        (replicates) one shared sequence is sampled from the weighted mean of the replicates'
        log-probabilities, weights = softmax over replicates of the sequence's log-likelihood so
        far (uniform at the first step), as the official ``sample_given_memories_ensemble``.
        A sequence has at most ``max_length`` residues; one that reaches it without sampling the
        stop token is returned as is and its log-likelihood covers its residues only (the
        official sampler allowed one more residue).

        Args:
            n: number of sequences.
            seed: makes the samples deterministic on a given device (None = random).
            progress: ``progress(done, n)`` after each batch of sequences.

        Returns:
            ``[(sequence, log-likelihood)]`` for one prompt; ``[(sequence, ndarray[n_prompts])]``
            for replicates. The log-likelihood is under the unfiltered, temperature-free model
            (start not scored, stop scored).

        Raises:
            InvalidParameterError: temperature <= 0, top_k < 1, top_p outside (0, 1], max_length < 1.
        """
        _check_sampling(temperature, top_k, top_p, max_length, n)
        prompts = _replicates(prompt) if _is_ensemble(prompt) else [prompt]
        caches = [self.embed(p) for p in prompts]
        if any(c.reverse for c in caches):
            raise InvalidParameterError("generation needs forward prompt caches (reverse=False)")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) if seed is not None else secrets.randbits(63))  # global RNG untouched
        results: list[tuple[str, Any]] = []
        rows = max(1, min(self.batch_rows, 16))
        for start in range(0, n, rows):
            b = min(rows, n - start)
            seqs, lls = self._sample_batch(caches, b, temperature, top_k, top_p, max_length, gen)
            for s, ll in zip(seqs, lls):
                results.append((s, ll if len(caches) > 1 else float(ll[0])))
            if progress:
                progress(len(results), n)
        return results

    def _sample_batch(
        self,
        caches: list[PromptCache],
        B: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        max_length: int,
        gen: torch.Generator,
    ) -> tuple[list[str], list[np.ndarray]]:
        dev = self.device
        P = len(caches)
        cfg = self.config
        H, hd = cfg.nhead, cfg.head_dim
        cap = min(max_length + 2, 64)
        bufs = [
            [torch.empty(4, B, H, cap, hd, device=dev, dtype=self.dtype) for _ in range(cfg.num_layers)]
            for _ in range(P)
        ]
        token = torch.full((B, 1), A.START, device=dev, dtype=torch.long)
        cum = torch.zeros(B, P, device=dev, dtype=torch.float64)
        active = torch.ones(B, dtype=torch.bool, device=dev)
        sampled: list[Tensor] = []
        for t in range(max_length + 1):
            if t >= cap:  # grow the per-row caches
                new_cap = min(2 * cap, max_length + 2)
                for pb in bufs:
                    for li, buf in enumerate(pb):
                        grown = torch.empty(4, B, H, new_cap, hd, device=dev, dtype=self.dtype)
                        grown[..., :cap, :] = buf
                        pb[li] = grown
                cap = new_cap
            pos = torch.full((B, 1), t, device=dev, dtype=torch.long)
            logps = []
            for pi, cache in enumerate(caches):
                past = None if t == 0 else [tuple(buf[j, :, :, :t] for j in range(4)) for buf in bufs[pi]]
                logits, states = self.model.decode(token, pos, memory=cache.memory, past=past, return_states=True)
                assert states is not None
                for li, st in enumerate(states):
                    for j in range(4):
                        bufs[pi][li][j, :, :, t : t + 1] = st[j]
                logps.append(torch.log_softmax(logits[:, 0].float(), dim=-1))
            lp = torch.stack(logps, dim=1)  # [B, P, V]
            if P == 1:
                mixed = lp[:, 0]
            else:
                w = torch.softmax(cum, dim=-1).to(lp.dtype)
                mixed = (w[..., None] * lp).sum(dim=1)
            mixed = mixed.clone()
            mixed[:, list(_INVALID_SAMPLES)] = float("-inf")
            mixed = top_k_top_p_filter(mixed / temperature, top_k, top_p)
            probs = torch.softmax(mixed, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)  # [B, 1]
            if t == max_length:  # max_length residues reached: only a stop token is kept
                active = active & (nxt[:, 0] == A.STOP)
            nxt = torch.where(active[:, None], nxt, torch.full_like(nxt, A.MASK))
            picked = lp.gather(-1, nxt[:, None, :].expand(B, P, 1))[..., 0].double()  # [B, P]
            cum = cum + torch.where(active[:, None], picked, torch.zeros_like(picked))
            sampled.append(nxt[:, 0])
            active = active & (nxt[:, 0] != A.STOP)
            token = nxt
            if not bool(active.any()):
                break
        toks = torch.stack(sampled, dim=1).cpu().numpy()
        seqs = []
        for row in toks:
            residues = [int(x) for x in row if int(x) < 20]  # stops, padding after the stop dropped
            seqs.append("".join(A.AMINO_ACIDS[x] for x in residues))
        return seqs, list(cum.cpu().numpy())


def _set_buffer(module: torch.nn.Module, dotted: str, value: Tensor) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    parent._buffers[leaf] = value
