"""The ESM C inference engine: ``transformers.EsmcForMaskedLM`` weights, plmserve's forward pass.

ESM C (ESM Cambrian, EvolutionaryScale 2024) is a pre-LN transformer with QK-LayerNorm, rotary
positions and SwiGLU, residual branches divided by sqrt(n_layers/36), a bias-free final LayerNorm
and a ``Linear -> GELU -> LayerNorm -> Linear`` sequence head over 64 columns
(``shared/specs/esmc-and-biolm-v3.md`` §4; official ``esm`` 3.2.1 ``esm/models/esmc.py``).

The parameters live in a ``transformers.EsmcForMaskedLM`` (so the ``biohub/ESMC-*`` folders load
with no custom code, and the official ``.pth`` is mapped onto it exactly). The forward pass is
plmserve's own loop over those modules:

* q|k|v and gate|up projections are fused into one matrix multiplication each (the module
  parameters become views into the fused tensors, so no memory is duplicated);
* sequences are sorted by length and packed by a token budget (``toks_per_batch``, padded positions
  count); a batch without padding runs attention with no mask, a padded batch masks pad keys, so a
  real token sees exactly the real tokens of its own sequence, as the official code: batched
  equals unbatched up to float32 summation order;
* only the requested block outputs are kept, the loop stops after the deepest block needed, the
  final norm and the head run only when asked for;
* ``torch.inference_mode``; float32 on CPU, bfloat16 on CUDA (the official ``from_pretrained``
  casts to bf16 on GPUs).

Layer numbering (:meth:`ESMCEngine.encode`, BioLM's ESM C convention): ``0..n-1`` are the outputs
of blocks 0..n-1 **before** the final LayerNorm, negative numbers count from the end (``-1`` = block
n-1). Forge ``hidden_states`` conventions: see :meth:`ESMCEngine.forward_tokens`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plmserve.errors import InvalidParameterError, ModelLoadError
from plmserve.models.engine_common import MaskedLMEngineBase, resolve_layer_numbers
from plmserve.models.engine_common import token_batches as _token_batches

from .alphabet import (
    BOS_ID,
    CANONICAL_AA,
    CANONICAL_IDS,
    EOS_ID,
    MASK_ID,
    MASK_TOKEN,
    PAD_ID,
    RESIDUE_LETTERS,
    TOKEN_ID,
    encode_residues,
    split_tokens,
    validate_sequences,
)
from .weights import MAX_POSITIONS, esmc_config

logger = logging.getLogger(__name__)

INCLUDE_KEYS = ("mean", "per_token", "bos", "logits")
HIDDEN_CONVENTIONS = ("hf", "esm")


def build_hf_model(config, state_dict: dict[str, torch.Tensor] | None = None):
    """An ``EsmcForMaskedLM`` in eval mode, optionally loaded strictly from a transformers-layout
    ``state_dict``.

    Raises:
        ModelLoadError: missing or unexpected keys, or shape mismatches.
    """
    from transformers import EsmcForMaskedLM

    config._attn_implementation = "sdpa"
    model = EsmcForMaskedLM(config)
    if state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:
            raise ModelLoadError(f"ESM C weights do not fit the architecture: {exc}") from exc
        if missing or unexpected:
            raise ModelLoadError(f"ESM C weights: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model.eval()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ESMCEngine(MaskedLMEngineBase):
    """An ESM C model ready for inference; the same public methods as
    :class:`~plmserve.models.esm2.engine.ESM2Engine` (``validate``, ``resolve_layers``, ``encode``,
    ``predict``, ``log_prob``, ``score_mutants``; those not tied to the architecture come from
    :class:`~plmserve.models.engine_common.MaskedLMEngineBase`), plus :meth:`forward_tokens` (Forge
    ``logits``). Log-probabilities are a softmax over the head's 64 columns.

    Attributes:
        slug: public name (``esmc-300m`` ...).
        num_layers: transformer blocks ``n``; encode layers are ``0..n-1`` (pre-final-norm outputs).
        embed_dim: model width d.
        attention_heads: heads per block (head width d / heads).
        max_residues: 16384 (Forge's limit; rotary positions have no learned table).
        load_format: ``dummy``, ``official`` (``.pth``), ``hf-dir`` or ``hf-hub``.
        source: where the weights came from (None for dummy).
        alphabet_tokens: ``A C D E F G H I K L M N P Q R S T V W Y``: the columns of every 20-wide
            ``logits`` output (BioLM's ``vocab_tokens`` for ESM C).
        device, dtype: where and in which precision the model runs.
        toks_per_batch: token budget per forward pass (padded positions count).
    """

    alphabet_tokens: list[str] = list(CANONICAL_AA)
    _residue_letters = RESIDUE_LETTERS
    _token_id = TOKEN_ID
    _standard_ids = CANONICAL_IDS
    _encode_residues = staticmethod(encode_residues)
    _validate_sequences = staticmethod(validate_sequences)
    _split_tokens = staticmethod(split_tokens)
    _mask_token = MASK_TOKEN
    _mask_id = MASK_ID

    def __init__(self, model, *, slug: str = "esmc", load_format: str = "hf-dir", source: str | None = None,
                 device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
                 toks_per_batch: int = 4096):
        self._init_model(model, slug=slug, load_format=load_format, source=source, device=device, dtype=dtype)
        cfg = model.config
        self.head_dim: int = int(getattr(cfg, "head_dim", None) or self.embed_dim // self.attention_heads)
        if int(getattr(cfg, "num_key_value_heads", self.attention_heads)) != self.attention_heads:
            raise ModelLoadError("ESM C checkpoints have as many key/value heads as attention heads")
        if self.head_dim * self.attention_heads != self.embed_dim:
            raise ModelLoadError(f"head_dim {self.head_dim} x {self.attention_heads} heads != width {self.embed_dim}")
        self.max_residues = MAX_POSITIONS - 2
        self.toks_per_batch = max(int(toks_per_batch), 1024)
        self.residual_scale = math.sqrt(self.num_layers / 36)
        self._inv_scale = 1.0 / self.residual_scale
        self._init_slots()  # two forward passes at once (the forward keeps no shared state)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fuse()

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_pretrained(cls, path_or_repo: str, *, slug: str | None = None, load_format: str | None = None,
                        **kw) -> "ESMCEngine":
        """Load a transformers-layout ESM C (a folder with ``config.json`` + safetensors, or a hub id
        such as ``biohub/ESMC-300M``; the hub honours ``HF_HUB_OFFLINE``).

        Raises:
            ModelLoadError: not an ESM C checkpoint, or unreadable weights.
        """
        from transformers import EsmcForMaskedLM

        try:
            model = EsmcForMaskedLM.from_pretrained(str(path_or_repo), attn_implementation="sdpa",
                                                    dtype=torch.float32)  # fmt: skip
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load an ESM C model from {path_or_repo}: {exc}") from exc
        if model.config.vocab_size != 64:
            raise ModelLoadError(f"{path_or_repo}: vocabulary of {model.config.vocab_size}, ESM C has 64")
        return cls(model, slug=slug or "esmc", load_format=load_format or "hf-dir", source=str(path_or_repo), **kw)

    @classmethod
    def from_official(cls, path, *, n_heads: int | None = None, slug: str | None = None, **kw) -> "ESMCEngine":
        """Load an official ``esmc_*.pth`` state dict (``esm`` 3.2.1 layout), mapped exactly onto
        ``EsmcForMaskedLM``. ``n_heads``: default from a ``config.json`` beside the file, else the
        released shapes (15 heads for 960 wide, 18 for 1152).

        Raises:
            ModelLoadError: unreadable file, not ESM C, or unknown head count.
        """
        from pathlib import Path

        from .weights import heads_from_sidecar, load_official_state_dict, official_to_hf

        path = Path(path)
        config, state = official_to_hf(load_official_state_dict(path), n_heads=n_heads or heads_from_sidecar(path))
        model = build_hf_model(config, state)
        return cls(model, slug=slug or "esmc", load_format="official", source=str(path), **kw)

    @classmethod
    def dummy(cls, spec_or_config: Any, seed: int = 0, **kw) -> "ESMCEngine":
        """The real architecture with random weights (``--load-format dummy``) for smoke tests and
        benchmarks. ``spec_or_config``: a registry ``ModelSpec`` or a dict with ``num_layers``,
        ``embed_dim``, ``attention_heads``. Logs a WARNING."""
        slug = kw.pop("slug", None)
        c = getattr(spec_or_config, "config", spec_or_config)
        slug = slug or getattr(spec_or_config, "slug", None) or "esmc-dummy"
        config = esmc_config(int(c["embed_dim"]), int(c["attention_heads"]), int(c["num_layers"]))
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = build_hf_model(config)
            with torch.no_grad():  # non-degenerate: HF's init zeroes biases and sets norms to 1
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0.0, 0.1)
                    elif p.dim() == 1:
                        p.normal_(1.0, 0.1)
        finally:
            torch.random.set_rng_state(gen_state)
        logger.warning("model %s uses RANDOM weights (load format 'dummy'): outputs are meaningless", slug)
        return cls(model, slug=slug, load_format="dummy", source=None, **kw)

    def _fuse(self) -> None:
        """Fuse q|k|v and gate|up per block; the module parameters become views of the fused tensors."""
        self._qkv: list[torch.Tensor] = []
        self._gate_up: list[torch.Tensor] = []
        with torch.no_grad():
            for layer in self.model.esmc.layers:
                att, mlp = layer.self_attn, layer.mlp
                if att.q_proj.bias is not None or mlp.gate_proj.bias is not None:
                    raise ModelLoadError("ESM C has no attention/MLP biases")
                d, f = att.q_proj.weight.shape[0], mlp.gate_proj.weight.shape[0]
                qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).contiguous()
                gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
                att.q_proj.weight = torch.nn.Parameter(qkv[:d], requires_grad=False)
                att.k_proj.weight = torch.nn.Parameter(qkv[d:2 * d], requires_grad=False)
                att.v_proj.weight = torch.nn.Parameter(qkv[2 * d:], requires_grad=False)
                mlp.gate_proj.weight = torch.nn.Parameter(gu[:f], requires_grad=False)
                mlp.up_proj.weight = torch.nn.Parameter(gu[f:], requires_grad=False)
                self._qkv.append(qkv)
                self._gate_up.append(gu)

    # ---------------------------------------------------------------- validation

    def resolve_layers(self, repr_layers: Sequence[int]) -> list[int]:
        """Block numbers made non-negative (``-1`` = ``n-1``), duplicates removed, order kept.

        Raises:
            InvalidParameterError: a layer outside ``[-n, n-1]`` (the message names the range).
        """
        n = self.num_layers
        return resolve_layer_numbers(repr_layers, low=-n, high=n - 1, slug=self.slug, what=f"{n} blocks",
                                     note=" (block outputs before the final LayerNorm)")

    # ---------------------------------------------------------------- core forward

    def _rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[T, head_dim]`` in the compute dtype; angles in float32 (as the official code)."""
        key = (length, self.device, self.dtype)
        hit = self._rope_cache.get(key)
        if hit is None:
            dh = self.head_dim
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dh, 2, dtype=torch.float32, device=self.device) / dh))
            pos = torch.arange(length, dtype=torch.float32, device=self.device)
            ang = torch.outer(pos, inv_freq)
            ang = torch.cat((ang, ang), dim=-1)
            hit = (ang.cos().to(self.dtype), ang.sin().to(self.dtype))
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            self._rope_cache[key] = hit
        return hit

    def _block(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        layer = self.model.esmc.layers[i]
        att = layer.self_attn
        b, t, d = x.shape
        h = layer.input_layernorm(x)
        q, k, v = F.linear(h, self._qkv[i]).split(d, dim=-1)
        q = att.q_norm(q).to(x.dtype).view(b, t, self.attention_heads, self.head_dim).transpose(1, 2)
        k = att.k_norm(k).to(x.dtype).view(b, t, self.attention_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.attention_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, t, d)
        x = torch.add(x, att.o_proj(o), alpha=self._inv_scale)  # x + update / s, one fused op
        gate, up = F.linear(layer.post_attention_layernorm(x), self._gate_up[i]).chunk(2, dim=-1)
        h = F.silu(gate).mul_(up)
        return torch.add(x, layer.mlp.down_proj(h), alpha=self._inv_scale)

    def _forward(self, tokens: torch.Tensor, *, blocks: Sequence[int] = (), final: bool = False,
                 logits: bool = False, embedding_output: bool = False) -> dict[str, Any]:
        """One batched forward pass over ``tokens`` ``[B, T]`` (right-padded with ``<pad>``).

        Returns ``hidden`` ``{block: [B, T, d]}`` (pre-final-norm), and as requested ``input``
        (the embedding output), ``final`` (final-norm output ``[B, T, d]``) and ``logits``
        ``[B, T, 64]`` float32.
        """
        esmc = self.model.esmc
        b, t = tokens.shape
        x = esmc.embed_tokens(tokens)
        out: dict[str, Any] = {"hidden": {}}
        if embedding_output:
            out["input"] = x
        cos, sin = self._rope(t)
        pad = tokens == PAD_ID
        mask = (~pad)[:, None, None, :] if bool(pad.any()) else None
        need = set(blocks)
        last = self.num_layers - 1 if (final or logits) else (max(need) if need else -1)
        for i in range(last + 1):
            x = self._block(i, x, cos, sin, mask)
            if i in need:
                out["hidden"][i] = x
        if final or logits:
            y = esmc.norm(x)
            if final:
                out["final"] = y
            if logits:
                out["logits"] = self.model.lm_head(y).float()
        return out

    def _token_tensor(self, rows: Sequence[Sequence[int] | np.ndarray]) -> torch.Tensor:
        t = max(len(r) for r in rows)
        toks = np.full((len(rows), t), PAD_ID, dtype=np.int64)
        for i, r in enumerate(rows):
            toks[i, : len(r)] = np.asarray(r, dtype=np.int64)
        return torch.from_numpy(toks).to(self.device)

    def _residue_tokens(self, ids: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.concatenate(([BOS_ID], r, [EOS_ID])).astype(np.int64) for r in ids]

    # ---------------------------------------------------------------- Forge-level forward

    def check_forward_tokens(self, token_ids: Sequence[Sequence[int]], *, hidden_states: str | None = None,
                             ith_hidden_layer: int = -1) -> list[np.ndarray]:
        """Validate the arguments of :meth:`forward_tokens` (before any work is queued); returns
        the rows as int64 arrays.

        Raises:
            InvalidParameterError: unknown convention, ``ith_hidden_layer`` out of range, or a token
                id outside 0..63 (names the 0-based item).
        """
        n = self.num_layers
        if hidden_states is not None and hidden_states not in HIDDEN_CONVENTIONS:
            raise InvalidParameterError(f"hidden_states convention must be one of {HIDDEN_CONVENTIONS}")
        count = n + 1 if hidden_states == "hf" else n
        if hidden_states is not None and not -1 <= ith_hidden_layer < count:
            raise InvalidParameterError(
                f"ith_hidden_layer {ith_hidden_layer} is out of range: -1 (all) or 0..{count - 1} for {self.slug}")
        rows = [np.asarray(r, dtype=np.int64) for r in token_ids]
        for item, r in enumerate(rows):
            if r.ndim != 1 or r.size == 0 or (r < 0).any() or (r >= 64).any():
                raise InvalidParameterError(f"item {item}: token ids must be a non-empty list of integers in 0..63")
        return rows

    def forward_tokens(self, token_ids: Sequence[Sequence[int]], *, logits: bool = True, embeddings: bool = False,
                       hidden_states: str | None = None, ith_hidden_layer: int = -1) -> list[dict[str, np.ndarray]]:
        """Raw outputs for token-id rows (``<cls>`` ... ``<eos>`` included), as the official
        ``ESMC.logits`` computes them; the rows are batched by length internally.

        Args:
            token_ids: one list of ids (0..63) per sequence, T_i = L_i + 2.
            logits: return ``logits`` float32 ``[T, 64]`` (raw head output, all 64 columns).
            embeddings: return ``embeddings`` float32 ``[T, d]``, the **final-LayerNorm** output (the
                tensor the head reads).
            hidden_states: None, or the convention of ``hidden_states`` float32 ``[k, T, d]``:
                ``"hf"``: n+1 entries: the embedding output, blocks 0..n-2, then the final-norm output
                (transformers' ``output_hidden_states``; the hosted Forge API's count n+1);
                ``"esm"``: n entries, the outputs of blocks 0..n-1 before the final norm (local
                ``esm`` 3.2.1 ``ESMC.logits``).
            ith_hidden_layer: -1 = all entries, else only entry ``i`` (``k`` = 1).

        Raises:
            InvalidParameterError: unknown convention, ``ith_hidden_layer`` out of range, or a token
                id outside 0..63.
        """
        n = self.num_layers
        rows = self.check_forward_tokens(token_ids, hidden_states=hidden_states, ith_hidden_layer=ith_hidden_layer)
        count = n + 1 if hidden_states == "hf" else n
        if hidden_states is None:
            entries: list[int] = []
        elif ith_hidden_layer >= 0:
            entries = [ith_hidden_layer]
        else:
            entries = list(range(count))
        if hidden_states == "hf":  # entry j: 0 = embedding output, 1..n-1 = block j-1, n = final norm
            blocks = [j - 1 for j in entries if 1 <= j <= n - 1]
        else:
            blocks = list(entries)
        want_input = hidden_states == "hf" and 0 in entries
        want_final = embeddings or (hidden_states == "hf" and n in entries)
        results: list[dict[str, np.ndarray] | None] = [None] * len(rows)

        def work():
            for batch in _token_batches([len(r) - 2 for r in rows], self.toks_per_batch):
                res = self._forward(self._token_tensor([rows[i] for i in batch]), blocks=blocks, final=want_final,
                                    logits=logits, embedding_output=want_input)  # fmt: skip
                for bi, i in enumerate(batch):
                    t = len(rows[i])
                    item: dict[str, np.ndarray] = {}
                    if logits:
                        item["logits"] = _np(res["logits"][bi, :t])
                    if embeddings:
                        item["embeddings"] = _np(res["final"][bi, :t])
                    if hidden_states is not None:
                        stack = []
                        for j in entries:
                            if hidden_states == "esm":
                                stack.append(res["hidden"][j][bi, :t])
                            elif j == 0:
                                stack.append(res["input"][bi, :t])
                            elif j == n:
                                stack.append(res["final"][bi, :t])
                            else:
                                stack.append(res["hidden"][j - 1][bi, :t])
                        item["hidden_states"] = _np(torch.stack(stack))
                    results[i] = item

        self._run(work)
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------- encode

    def encode(self, sequences: Sequence[str], include: Sequence[str] = ("mean",),
               repr_layers: Sequence[int] = (-1,)) -> list[dict[str, Any]]:
        """Embeddings and logits per sequence (BioLM ``encode``; ESM C layer convention).

        Args:
            sequences: protein sequences (validated with :meth:`validate`; ``<mask>`` allowed).
            include: any of ``mean``, ``per_token``, ``bos``, ``logits``.
            repr_layers: blocks for mean/per_token/bos, ``[-n, n-1]`` (-1 = last block's output,
                before the final LayerNorm, as BioLM's ESM C).

        Returns:
            One dict per sequence, in input order, only the requested keys (numpy float32):
            ``mean_representations`` ``{layer: [d]}`` (mean over the L residues, BOS/EOS excluded),
            ``representations`` ``{layer: [L, d]}``, ``bos_representations`` ``{layer: [d]}``,
            ``logits`` ``[L, 20]`` (raw head output, columns :attr:`alphabet_tokens`).

        Raises:
            InvalidInputError: bad sequences. InvalidParameterError: unknown ``include`` value
                (ESM C has no contacts/attentions), layers out of range.
        """
        include = [include] if isinstance(include, str) else list(include if include is not None else ["mean"])
        for key in include:
            if key not in INCLUDE_KEYS:
                raise InvalidParameterError(
                    f"include: '{key}' is not available for ESM C; allowed: {', '.join(INCLUDE_KEYS)}")
        inc = set(include)
        need_repr = bool(inc & {"mean", "per_token", "bos"})
        layers = self.resolve_layers(repr_layers if repr_layers is not None else (-1,)) if need_repr else []
        seqs = self.validate(sequences, allow_mask=True)
        rows = self._residue_tokens([encode_residues(s) for s in seqs])
        cols = torch.as_tensor(CANONICAL_IDS, device=self.device)
        results: list[dict[str, Any] | None] = [None] * len(seqs)

        def work():
            for batch in _token_batches([len(r) - 2 for r in rows], self.toks_per_batch):
                res = self._forward(self._token_tensor([rows[i] for i in batch]), blocks=layers,
                                    logits="logits" in inc)
                hidden = {k: v.float() for k, v in res["hidden"].items()}
                for bi, i in enumerate(batch):
                    L = len(rows[i]) - 2
                    item: dict[str, Any] = {}
                    if "mean" in inc:
                        item["mean_representations"] = {l: _np(hidden[l][bi, 1:L + 1].mean(0)) for l in layers}
                    if "per_token" in inc:
                        item["representations"] = {l: _np(hidden[l][bi, 1:L + 1]) for l in layers}
                    if "bos" in inc:
                        item["bos_representations"] = {l: _np(hidden[l][bi, 0]) for l in layers}
                    if "logits" in inc:
                        item["logits"] = _np(res["logits"][bi, 1:L + 1][:, cols])
                    results[i] = item

        self._run(work)
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------- likelihoods

    def _residue_logits(self, rows: list[np.ndarray]) -> torch.Tensor:
        return self._forward(self._token_tensor(self._residue_tokens(rows)), logits=True)["logits"]

    def _biolm_log_prob(self, residues: np.ndarray, keep: np.ndarray, logits: np.ndarray) -> float:
        """BioLM's ESM C ``log_prob`` of one sequence: log-softmax (float64) of the ``[L, 20]`` logits
        over the 20 canonical amino acids, summed at the canonical residues ``keep``."""
        col = {int(t): j for j, t in enumerate(CANONICAL_IDS)}
        lp = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
        return float(sum(lp[p, col[int(residues[p])]] for p in keep))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
