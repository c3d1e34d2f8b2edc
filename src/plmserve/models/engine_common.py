"""Plumbing shared by the ESM-2 and ESM C engines (masked protein language models).

* :func:`resolve_device_dtype` and :func:`token_batches` (length-sorted batches under a padded-
  token budget);
* :func:`resolve_layer_numbers`: ``repr_layers`` made non-negative and range-checked;
* :class:`MaskedLMEngineBase`: the forward-pass slots (two passes at once, so the batching
  scheduler's short-request lane runs beside a long batch), input validation, and the methods
  built only on an engine's ``encode`` and ``_residue_logits`` (one forward pass over residue rows):
  ``_masked_log_probs``, ``unmasked_log_probs``,
  ``predict``, ``masked_log_probs``, ``log_prob`` (pseudo-log-likelihood, Salazar et al. 2020; or
  BioLM's single-pass definition) and ``score_mutants`` (ESM-1v masked / wild-type marginals, Meier
  et al. 2021, via :mod:`plmserve.models.marginals`).

Each engine keeps its own forward pass, ``encode`` and layer convention.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Mapping

import numpy as np
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.marginals import check_method, marginal_scores, parse_substitutions

#: forward passes an engine runs at once (the batching scheduler's main batch + its short-request lane)
CONCURRENT_PASSES = 2


def resolve_device_dtype(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto"):
    """``auto`` device = CUDA when available else CPU; ``auto`` dtype = float32 on CPU, bfloat16 on CUDA.

    Raises:
        InvalidParameterError: an unknown dtype name.
    """
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}  # fmt: skip
    if dtype in (None, "auto"):
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if dtype.lower() not in names:
            raise InvalidParameterError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
        dtype = names[dtype.lower()]
    return device, dtype


def engine_kwargs(spec: Any, settings: Any) -> dict[str, Any]:
    """An engine constructor's keyword arguments for the registry entry ``spec`` (its ``slug``)
    from ``settings`` (``device``, ``dtype``, ``toks_per_batch``; ``auto``/``auto``/4096 when a
    field is absent)."""
    return {
        "device": getattr(settings, "device", "auto"),
        "dtype": getattr(settings, "dtype", "auto"),
        "toks_per_batch": getattr(settings, "toks_per_batch", 4096),
        "slug": spec.slug,
    }


def token_batches(lengths: Sequence[int], toks_per_batch: int, *, square_budget: int | None = None) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (longest first), each batch's padded token
    count ``n_seqs x max(T)`` (T = L + 2, BOS/EOS) within ``toks_per_batch`` (a single longer
    sequence is its own batch). With ``square_budget``, ``n_seqs x max(T)^2`` is also bounded
    (attention maps)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        t = lengths[i] + 2
        new_max = max(cur_max, t)
        fits = (len(cur) + 1) * new_max <= toks_per_batch
        if square_budget is not None:
            fits = fits and (len(cur) + 1) * new_max * new_max <= square_budget
        if cur and not fits:
            batches.append(cur)
            cur, new_max = [], t
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def resolve_layer_numbers(repr_layers: Sequence[int] | int, *, low: int, high: int, slug: str, what: str,
                          note: str = "") -> list[int]:
    """Layer numbers in ``[low, high]`` made non-negative (a negative ``l`` becomes ``l + high + 1``,
    so ``-1`` = ``high``), duplicates removed, order kept.

    Args:
        what: how the message counts the model's depth (``"6 layers"``, ``"30 blocks"``);
        note: appended to the range in the message.

    Raises:
        InvalidParameterError: a non-integer, or a layer outside ``[low, high]`` (names the range).
    """
    if isinstance(repr_layers, (int, np.integer)):
        repr_layers = [int(repr_layers)]
    out: list[int] = []
    for layer in repr_layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InvalidParameterError(f"repr_layers must be integers, got {layer!r}")
        layer = int(layer)
        if not low <= layer <= high:
            raise InvalidParameterError(
                f"repr_layers: layer {layer} is out of range for {slug} ({what}); valid range is [{low}, {high}]{note}")
        resolved = layer if layer >= 0 else layer + high + 1
        if resolved not in out:
            out.append(resolved)
    return out


class MaskedLMEngineBase:
    """The parts of ESM-2's and ESM C's engines that do not depend on the architecture.

    A subclass sets :attr:`slug`, :attr:`max_residues`, :attr:`toks_per_batch`, the class
    attributes below, calls :meth:`_init_slots` in ``__init__``, and implements ``encode`` (with
    ``include=("logits",)`` giving ``logits`` float32 ``[L, 20]`` in :attr:`alphabet_tokens` order),
    :meth:`_residue_logits` and :meth:`_biolm_log_prob`.

    Class attributes:
        _residue_letters: one-letter codes a mutation may name.
        _token_id: token -> vocabulary id (the columns of the log-probabilities).
        _standard_ids: int64 ``[20]``: ids of the 20 standard amino acids (the residues a
            likelihood sums over).
        _mask_id: the ``<mask>`` token's id.
    """

    slug: str
    max_residues: int
    toks_per_batch: int
    _mask_id: int = -1
    _residue_letters: str = ""
    _token_id: Mapping[str, int] = {}
    _standard_ids: np.ndarray = np.arange(0)
    # set by subclasses with staticmethod(...): the family's alphabet functions
    _encode_residues: Any = None  # residue string -> int64 ids
    _validate_sequences: Any = None  # (sequences, max_residues=, allow_mask=) -> list[str]
    _split_tokens: Any = None  # (sequence, item=) -> list[str]
    _mask_token: str = "<mask>"

    # ---------------------------------------------------------------- threading

    def _init_model(self, model: torch.nn.Module, *, slug: str, load_format: str, source: str | None,
                    device: str | torch.device | None, dtype: str | torch.dtype | None) -> None:
        """Set :attr:`device` / :attr:`dtype` (:func:`resolve_device_dtype`; a WARNING for half
        precision on CPU), :attr:`model` (moved there, eval mode), :attr:`slug`, :attr:`load_format`,
        :attr:`source` and, from ``model.config``, :attr:`num_layers`, :attr:`embed_dim` and
        :attr:`attention_heads`."""
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            logging.getLogger(type(self).__module__).warning(
                "half precision on CPU is slow and imprecise; consider dtype=float32")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        cfg = model.config
        self.slug = slug
        self.num_layers: int = int(cfg.num_hidden_layers)
        self.embed_dim: int = int(cfg.hidden_size)
        self.attention_heads: int = int(cfg.num_attention_heads)
        self.load_format = load_format
        self.source = source

    def _init_slots(self) -> None:
        """Up to :data:`CONCURRENT_PASSES` forward passes at once (the forward keeps no shared
        state, or keeps it thread-local): the batching scheduler's short-request lane runs beside a
        long batch instead of waiting for it."""
        self._lock = threading.BoundedSemaphore(CONCURRENT_PASSES)

    def _run(self, fn):
        """``fn()`` in one of the engine's forward-pass slots, under ``torch.inference_mode``."""
        with self._lock, torch.inference_mode():
            return fn()

    # ---------------------------------------------------------------- validation

    def validate(self, sequences: Sequence[str], *, allow_mask: bool = False) -> list[str]:
        """Normalised sequences (whitespace removed, upper case), letters
        ``LAGVSERTIDPKQNFYMHWCXBUZO.-`` (and ``<mask>`` when ``allow_mask``).

        Raises:
            InvalidInputError: names the 0-based item, the 1-based position and the character;
                empty sequences; sequences longer than :attr:`max_residues`.
        """
        return self._validate_sequences(sequences, max_residues=self.max_residues, allow_mask=allow_mask)

    # ---------------------------------------------------------------- predict

    def predict(self, sequences: Sequence[str]) -> list[dict[str, Any]]:
        """Logits for sequences with one or more ``<mask>`` tokens (BioLM ``predict``).

        Returns:
            Per sequence, in input order: ``logits`` float32 ``[L, 20]`` at every residue/mask
            position (columns :attr:`alphabet_tokens`), ``sequence_tokens`` (the input split into
            tokens, ``<mask>`` as one token).

        Raises:
            InvalidInputError: bad sequences, or a sequence without ``<mask>`` (names the item).
        """
        seqs = self.validate(sequences, allow_mask=True)
        for item, s in enumerate(seqs):
            if "<MASK>" not in s:
                raise InvalidInputError(
                    f"item {item}: predict needs at least one {self._mask_token} token in the sequence", item=item)
        out = self.encode(seqs, include=("logits",), repr_layers=())  # type: ignore[attr-defined]
        return [{"logits": r["logits"], "sequence_tokens": self._split_tokens(s, item=i)} for i, (r, s) in enumerate(zip(out, seqs))]

    # ---------------------------------------------------------------- likelihoods

    def masked_log_probs(self, jobs: list[tuple[np.ndarray, tuple[int, ...]]]) -> list[np.ndarray]:
        """The masked pass used by ``pll`` and ``masked_marginals`` (public for the batching
        scheduler, which batches these passes across requests).

        Args:
            jobs: ``(residue_ids int64[L], positions)``: the 0-based positions masked together.

        Returns:
            Per job, float64 ``[len(positions), V]``: ``log_softmax`` over the model's vocabulary
            (V = 33 for ESM-2, the head's 64 columns for ESM C) at the masked positions (column = token id).
        """
        return self._masked_log_probs(jobs)

    def _residue_logits(self, rows: list[np.ndarray]) -> torch.Tensor:
        """One forward pass (inside :meth:`_run`) over residue rows (int64 ``[L_i]`` each, no
        BOS/EOS, ``<mask>`` ids allowed): float32 logits ``[B, T, V]`` over the whole vocabulary,
        row ``i``'s residue ``j`` at position ``j + 1`` (after BOS)."""
        raise NotImplementedError

    def _masked_log_probs(self, jobs: list[tuple[np.ndarray, tuple[int, ...]]]) -> list[np.ndarray]:
        """For each ``(residue_ids, positions)``: mask those 0-based positions together, run the model
        (length-sorted batches under :attr:`toks_per_batch`) and return ``log_softmax`` over the
        vocabulary at them, float64 ``[len(positions), V]`` (V = 33 for ESM-2, the head's 64 columns
        for ESM C; column = token id)."""
        out: list[np.ndarray | None] = [None] * len(jobs)

        def work():
            for batch in token_batches([len(r) for r, _ in jobs], self.toks_per_batch):
                masked = []
                for i in batch:
                    r = jobs[i][0].copy()
                    r[list(jobs[i][1])] = self._mask_id
                    masked.append(r)
                lp = torch.log_softmax(self._residue_logits(masked), dim=-1)
                for b, i in enumerate(batch):
                    pos = torch.as_tensor([p + 1 for p in jobs[i][1]], device=lp.device, dtype=torch.long)
                    out[i] = lp[b, pos].double().cpu().numpy()

        self._run(work)
        return out  # type: ignore[return-value]

    def unmasked_log_probs(self, residue_rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``log_softmax`` over the vocabulary at every residue position of unmasked sequences
        (the wild-type pass of ``wt_marginals``; batched by length, padding masked).

        Args:
            residue_rows: residue token ids, int64 ``[L_i]`` each (no BOS/EOS).

        Returns:
            Per row, float64 ``[L_i, V]`` (V = 33 for ESM-2, 64 for ESM C; column = token id), rows
            in input order.
        """
        rows = [np.asarray(r, dtype=np.int64) for r in residue_rows]
        out: list[np.ndarray | None] = [None] * len(rows)

        def work():
            for batch in token_batches([len(r) for r in rows], self.toks_per_batch):
                lp = torch.log_softmax(self._residue_logits([rows[i] for i in batch]), dim=-1)
                for b, i in enumerate(batch):
                    out[i] = lp[b, 1 : len(rows[i]) + 1].double().cpu().numpy()

        self._run(work)
        return out  # type: ignore[return-value]

    def _biolm_log_prob(self, residues: np.ndarray, keep: np.ndarray, logits: np.ndarray) -> float:
        """BioLM's single-pass log-probability of one sequence from its ``[L, 20]`` logits (standard
        residue positions ``keep``); the engine defines the column order."""
        raise NotImplementedError

    def log_prob(self, sequences: Sequence[str], method: str = "pll") -> list[float]:
        """Log-likelihood of each sequence (natural log), over the 20 standard amino acids' positions.

        Methods:
            ``pll`` (default): the pseudo-log-likelihood, Σ_i log p(x_i | x with position i masked)
                over the positions holding one of the 20 standard amino acids (Salazar et al. 2020;
                softmax over the whole vocabulary). Costs L forward passes, batched.
            ``biolm``: BioLM's ``log_prob`` action: one unmasked pass, log-softmax over the 20
                standard amino acids, summed over the standard residues.

        Raises:
            InvalidInputError: bad sequences (``<mask>`` not allowed).
            InvalidParameterError: unknown method.
        """
        if method not in ("pll", "biolm"):
            raise InvalidParameterError(f"log_prob: unknown method '{method}'; use 'pll' or 'biolm'")
        seqs = self.validate(sequences)
        ids = [self._encode_residues(s) for s in seqs]
        keep = [np.nonzero(np.isin(r, self._standard_ids))[0] for r in ids]
        if method == "biolm":
            out = self.encode(seqs, include=("logits",), repr_layers=())  # type: ignore[attr-defined]
            return [self._biolm_log_prob(r, kp, o["logits"]) for r, kp, o in zip(ids, keep, out)]
        jobs: list[tuple[np.ndarray, tuple[int, ...]]] = []
        owner: list[int] = []
        for k, (r, kp) in enumerate(zip(ids, keep)):
            for p in kp:
                jobs.append((r, (int(p),)))
                owner.append(k)
        lps = self._masked_log_probs(jobs)
        totals = [0.0] * len(seqs)
        for (r, (p,)), k, lp in zip(jobs, owner, lps):
            totals[k] += float(lp[0, r[p]])
        return totals

    # ---------------------------------------------------------------- variant scoring

    def score_mutants(self, wild_type: str, mutants: Sequence[str], method: str = "masked_marginals") -> np.ndarray:
        """Zero-shot variant effect scores relative to the wild type (ESM-1v, Meier et al. 2021;
        ProteinGym).

        For a mutant with substitutions at positions M (codes ``A42G`` or ``A42G:L50P``, 1-based):

        * ``masked_marginals``: Σ_{i∈M} [log p(x_i=mt | x with all of M masked) − log p(x_i=wt | same)],
          one forward pass per distinct set M (for single substitutions exactly ESM-1v's /
          ProteinGym's masked marginal);
        * ``wt_marginals``: the same difference from one unmasked pass over the wild type.

        Log-probabilities are a softmax over the model's whole vocabulary.

        Returns:
            float64 ``[len(mutants)]``; higher = more favourable than the wild type.

        Raises:
            InvalidInputError: bad wild type, malformed code, wild-type residue mismatch, position out
                of range, or a mutant residue outside the vocabulary (messages name the row, 0-based).
            InvalidParameterError: unknown method.
        """
        check_method(method)
        (wt,) = self.validate([wild_type])
        parsed = parse_substitutions(wt, mutants, self._residue_letters)
        r = self._encode_residues(wt)
        return marginal_scores(parsed, r, self._token_id, method,
                               lambda: self.unmasked_log_probs([r])[0], self._masked_log_probs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(slug={self.slug!r}, layers={self.num_layers}, "  # type: ignore[attr-defined]
                f"dim={self.embed_dim}, load_format={self.load_format!r}, "  # type: ignore[attr-defined]
                f"device={self.device}, dtype={self.dtype})")  # type: ignore[attr-defined]
