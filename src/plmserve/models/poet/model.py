"""The PoET network in plain PyTorch (no flash-attn), with the official module names.

PoET (Truong & Bepler, "PoET: A generative model of protein families as sequences-of-sequences",
NeurIPS 2023) is a decoder over a *sequence of sequences*: the prompt (homologs) followed by the
sequence being scored or generated. Every layer is pre-LN and *tiered*:

1. ``self_attn`` (the sequence tier): causal attention within one sequence;
2. ``multihead_attn`` (the sequence-of-sequences tier): causal attention over the whole
   concatenation (prompt tokens, then the query's own tokens);
3. a GELU (exact erf) feed-forward block.

Both tiers rotate q and k with *interleaved* (GPT-J style) rotary embeddings at the position of
the token **within its own sequence** (restarting at 0 for every sequence). Facts and equations:
``shared/specs/poet-model.md`` §2 (checked against the official code, commit ``6ece230``).

Module names follow the official state dict (``token_embed``, ``decoder.layers.{i}.self_attn.q_proj``
...), so the official checkpoint loads with ``strict=True``.

Tensor layout used throughout: hidden states ``[B, L, d]``; per-head tensors ``[B, L, H, hd]``
before attention and ``[B, H, L, hd]`` inside it. Cached prompt keys/values are ``[H, T, hd]``
without a batch dimension: they are shared by (broadcast to) every batch row, never copied.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmserve.errors import InvalidParameterError, ModelLoadError

_ALLOWED_HEAD_DIMS = (16, 32, 64, 128)
_SCORE_BUDGET_BYTES = 256 * 2**20  # largest attention-score block materialised at once

LayerKV = tuple[Tensor, Tensor]
"""Whole-context (``multihead_attn``) keys and values of one layer for a prompt: ``[H, T, hd]`` each,
keys after RoPE."""
LayerState = tuple[Tensor, Tensor, Tensor, Tensor]
"""Per-layer own-token states of a sequence: ``(seq_k, seq_v, ctx_k, ctx_v)``, keys after RoPE."""


@dataclass(frozen=True)
class PoETConfig:
    """Hyperparameters of the official ``PoET`` constructor (``shared/specs/poet-model.md`` §2.1).

    The released checkpoint uses ``hidden_dim=1024, num_layers=12, nhead=16, norm=True``
    (201,537,560 parameters).
    """

    n_vocab: int = 24
    hidden_dim: int = 1024
    ff_dim: int | None = None
    num_layers: int = 12
    nhead: int = 16
    use_multi_rotary: bool = True
    norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.nhead

    @property
    def ffn_dim(self) -> int:
        return self.ff_dim or 4 * self.hidden_dim

    def validate(self) -> "PoETConfig":
        """Check the sizes; raises :class:`InvalidParameterError` naming the bad value."""
        if self.n_vocab != 24:
            raise InvalidParameterError(f"PoET needs n_vocab=24 (its alphabet), got {self.n_vocab}")
        if self.hidden_dim <= 0 or self.nhead <= 0 or self.hidden_dim % self.nhead:
            raise InvalidParameterError(
                f"hidden_dim ({self.hidden_dim}) must be a positive multiple of nhead ({self.nhead})"
            )
        if self.head_dim not in _ALLOWED_HEAD_DIMS:
            raise InvalidParameterError(
                f"head dimension hidden_dim/nhead = {self.head_dim} must be one of {_ALLOWED_HEAD_DIMS}"
            )
        if self.num_layers <= 0:
            raise InvalidParameterError(f"num_layers must be positive, got {self.num_layers}")
        return self

    @classmethod
    def from_init_args(cls, init_args: Mapping[str, Any]) -> "PoETConfig":
        """Build from the checkpoint's ``hyper_parameters.model_spec.init_args``; unknown keys
        (``dropout``, ``mask_token`` ...) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in dict(init_args).items() if k in known}
        return cls(**kwargs).validate()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> "PoETConfig":
        """Infer every hyperparameter from tensor shapes (spec §2.2, "robust alternative").

        Raises:
            ModelLoadError: a key needed for the inference is missing.
        """
        try:
            n_vocab, d = state["token_embed.weight"].shape
            layers = {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")}
            ff = state["decoder.layers.0.linear1.weight"].shape[0]
            hd = state["decoder.layers.0.self_attn.rotary_emb.inv_freq"].numel()
        except KeyError as exc:
            raise ModelLoadError(f"not a PoET state dict: key {exc.args[0]!r} is missing") from None
        return cls(
            n_vocab=int(n_vocab),
            hidden_dim=int(d),
            ff_dim=int(ff),
            num_layers=len(layers),
            nhead=int(d) // int(hd),
            use_multi_rotary="decoder.layers.0.multihead_attn.rotary_emb.inv_freq" in state,
            norm="norm.weight" in state,
        ).validate()

    def init_args(self) -> dict[str, Any]:
        """The official constructor arguments (``ff_dim`` only when not the default 4·d)."""
        out = asdict(self)
        if out["ff_dim"] in (None, 4 * self.hidden_dim):
            out.pop("ff_dim")
        return out

    def same_architecture(self, other: "PoETConfig") -> bool:
        return (
            self.n_vocab == other.n_vocab
            and self.hidden_dim == other.hidden_dim
            and self.ffn_dim == other.ffn_dim
            and self.num_layers == other.num_layers
            and self.nhead == other.nhead
            and self.use_multi_rotary == other.use_multi_rotary
            and self.norm == other.norm
        )


class RotaryEmbedding(nn.Module):
    """Interleaved-pair rotary position embedding (GPT-J style, base 10000).

    ``inv_freq[c] = 10000 ** (-2*floor(c/2)/hd)`` for ``c = 0..hd-1`` (each frequency twice); the
    buffer is loaded from the checkpoint, never recomputed there. Angles ``pos * inv_freq`` and
    their cos/sin are computed in float32 and cast to the activation dtype, like the official code.
    For the channel pair ``(2i, 2i+1)``: ``y[2i] = x[2i]cos - x[2i+1]sin``,
    ``y[2i+1] = x[2i+1]cos + x[2i]sin``.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float32).repeat_interleave(2) / head_dim
        self.register_buffer("inv_freq", 1.0 / (10000.0**exponent))

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` of shape ``[B, L, H, hd]`` at integer ``positions`` ``[B, L]``."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq.to(torch.float32)
        cos = angles.cos().to(x.dtype)[:, :, None, :]
        sin = angles.sin().to(x.dtype)[:, :, None, :]
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
        return x * cos + rotated * sin


class TieredAttention(nn.Module):
    """Weights of one attention tier: q/k/v projections without bias, ``out_proj`` with bias, and
    (optionally) the tier's own rotary buffer. The attention itself is computed by
    :class:`PoETModel`, which knows which keys each query may see."""

    def __init__(self, d: int, nhead: int, rotary: bool):
        super().__init__()
        self.nhead = nhead
        self.head_dim = d // nhead
        self.v_proj = nn.Linear(d, d, bias=False)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=True)
        self.rotary_emb = RotaryEmbedding(self.head_dim) if rotary else None

    def qkv(self, a: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``a`` ``[B, L, d]`` to q, k (rotated), v, each ``[B, H, L, hd]``."""
        B, L, _ = a.shape
        q = self.q_proj(a).view(B, L, self.nhead, self.head_dim)
        k = self.k_proj(a).view(B, L, self.nhead, self.head_dim)
        v = self.v_proj(a).view(B, L, self.nhead, self.head_dim)
        if self.rotary_emb is not None:
            q = self.rotary_emb(q, positions)
            k = self.rotary_emb(k, positions)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def project_out(self, o: Tensor) -> Tensor:
        """``[B, H, L, hd]`` attention output -> ``[B, L, d]`` after ``out_proj``."""
        B, H, L, hd = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, L, H * hd))


class TieredLayer(nn.Module):
    """One pre-LN tiered layer (official ``TieredRotaryTransformerEncoderLayer`` names)."""

    def __init__(self, cfg: PoETConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = TieredAttention(d, cfg.nhead, rotary=True)
        self.multihead_attn = TieredAttention(d, cfg.nhead, rotary=cfg.use_multi_rotary)
        self.linear1 = nn.Linear(d, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, d)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.norm3 = nn.LayerNorm(d, eps=1e-5)

    def ffn(self, h: Tensor) -> Tensor:
        return self.linear2(F.gelu(self.linear1(self.norm3(h))))


class _Decoder(nn.Module):
    def __init__(self, cfg: PoETConfig):
        super().__init__()
        self.layers = nn.ModuleList(TieredLayer(cfg) for _ in range(cfg.num_layers))


# --------------------------------------------------------------------------------------------
# attention pieces, merged exactly with a log-sum-exp rule (softmax over the union of key sets)
# --------------------------------------------------------------------------------------------
_Part = tuple[Tensor, Tensor, Tensor]  # (unnormalised output [B,H,Lq,hd], row max [B,H,Lq,1], row sum)
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _softmax_part(scores: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(scores - m)
    z = p.sum(dim=-1, keepdim=True)
    o = torch.matmul(p.to(v.dtype), v)
    return o, m, z


def _fused_ok(q: Tensor) -> bool:
    return q.device.type == "cpu" and _FUSED_CPU is not None


def _fused(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, bias: Tensor | None = None) -> _Part:
    """torch's fused CPU attention kernel, which also returns the log-sum-exp: (normalised
    output, lse, 1) is a valid part for :func:`_merge`. ``bias``: additive mask (0 / -inf)."""
    o, lse = _FUSED_CPU(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)[:2]
    lse = lse[..., None].to(_acc_dtype(q.dtype))
    return o, lse, torch.ones_like(lse)


def _part_rows(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, *, causal: bool = False
) -> _Part:
    """Queries ``[B,H,Lq,hd]`` against per-row keys/values ``[B,H,Lk,hd]``. Either ``causal``
    (``Lq == Lk``, query i sees keys <= i) or ``mask`` (True = visible, broadcastable to
    ``[B,H,Lq,Lk]``) or all keys visible."""
    if mask is None and _fused_ok(q) and (not causal or q.shape[2] == k.shape[2]):
        return _fused(q, k, v, causal, scale)
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril_(k.shape[2] - q.shape[2])
    s = torch.matmul(q, k.transpose(-1, -2)).to(_acc_dtype(q.dtype)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return _softmax_part(s, v)


def _part_shared(q: Tensor, k: Tensor, v: Tensor, key_len: Tensor | None, scale: float) -> _Part:
    """Queries ``[B,H,Lq,hd]`` against keys/values ``[H,Lk,hd]`` shared by all rows (broadcast:
    the batch is folded into the query axis, so the keys are never copied). Row ``b`` sees keys
    ``[0, key_len[b])`` (all keys when ``key_len`` is None). Processed in row chunks so the score
    block stays under ~256 MiB."""
    B, H, Lq, hd = q.shape
    Lk = k.shape[1]
    acc = _acc_dtype(q.dtype)
    if _fused_ok(q):
        qf = q.permute(1, 0, 2, 3).reshape(1, H, B * Lq, hd)
        bias = None
        if key_len is not None:  # additive mask: row b sees keys [0, key_len[b])
            hidden = torch.arange(Lk, device=q.device)[None, :] >= key_len[:, None]  # [B, Lk]
            bias = torch.zeros(B, 1, Lk, dtype=q.dtype, device=q.device).masked_fill_(hidden[:, None], float("-inf"))
            bias = bias.expand(B, Lq, Lk).reshape(1, 1, B * Lq, Lk)
        o, m, z = _fused(qf, k[None], v[None], False, scale, bias)
        back = lambda x: x[0].view(H, B, Lq, x.shape[-1]).permute(1, 0, 2, 3)  # noqa: E731
        return back(o), back(m), back(z)
    rows_per_chunk = max(1, _SCORE_BUDGET_BYTES // max(1, H * Lq * Lk * torch.finfo(acc).bits // 8))
    kt = k.transpose(1, 2)
    outs, ms, zs = [], [], []
    for b0 in range(0, B, rows_per_chunk):
        qc = q[b0 : b0 + rows_per_chunk]
        nb = qc.shape[0]
        qf = qc.permute(1, 0, 2, 3).reshape(H, nb * Lq, hd)
        s = torch.matmul(qf, kt).to(acc) * scale  # [H, nb*Lq, Lk]
        if key_len is not None:
            visible = torch.arange(Lk, device=q.device)[None, :] < key_len[b0 : b0 + nb, None]  # [nb, Lk]
            s = s.view(H, nb, Lq, Lk).masked_fill(~visible[None, :, None, :], float("-inf"))
            s = s.view(H, nb * Lq, Lk)
        o, m, z = _softmax_part(s, v)
        outs.append(o.view(H, nb, Lq, hd).permute(1, 0, 2, 3))
        ms.append(m.view(H, nb, Lq, 1).permute(1, 0, 2, 3))
        zs.append(z.view(H, nb, Lq, 1).permute(1, 0, 2, 3))
    if len(outs) == 1:
        return outs[0], ms[0], zs[0]
    return torch.cat(outs), torch.cat(ms), torch.cat(zs)


def _merge(parts: Sequence[_Part], dtype: torch.dtype) -> Tensor:
    """Exact softmax over the union of the parts' keys."""
    acc = _acc_dtype(dtype)
    big_m = parts[0][1]
    for _, m, _ in parts[1:]:
        big_m = torch.maximum(big_m, m)
    num = None
    den = None
    for o, m, z in parts:
        w = torch.exp(m - big_m)
        num = o.to(acc) * w if num is None else num + o.to(acc) * w
        den = z * w if den is None else den + z * w
    return (num / den).to(dtype)


class PoETModel(nn.Module):
    """The PoET network (official parameter names; strict state-dict loading).

    Args:
        cfg: the hyperparameters (see :class:`PoETConfig`).

    Main entry points (all inputs are token ids of :mod:`plmserve.models.poet.alphabet`):

    - :meth:`embed_prompt`: the whole-context K/V of every layer for a prompt (spec §4.3);
    - :meth:`decode`: logits for new sequences after a prompt, optionally continuing from shared
      prefix states or per-row caches (spec §4.4, generalised);
    - :meth:`forward`: the training-style pass over one packed sequence-of-sequences (spec §4.2),
      used as the reference in tests.
    """

    def __init__(self, cfg: PoETConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.token_embed = nn.Embedding(cfg.n_vocab, d)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim)  # unused legacy buffer, kept for strict loading
        self.decoder = _Decoder(cfg)
        self.norm = nn.LayerNorm(d, eps=1e-5) if cfg.norm else None
        self.linear = nn.Linear(d, cfg.n_vocab)
        self.scale = cfg.head_dim**-0.5

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    def head(self, h: Tensor) -> Tensor:
        """Final LayerNorm (if any) and output head: ``[..., d]`` -> logits ``[..., 24]``."""
        if self.norm is not None:
            h = self.norm(h)
        return self.linear(h)

    # ---------------------------------------------------------------------------------------
    def _packed_pass(
        self, tokens: Tensor, segment_sizes: Sequence[int], *, stop_after_memory: bool
    ) -> tuple[Tensor | None, list[LayerKV]]:
        """Run all layers over one packed row ``tokens`` ``[T]`` made of consecutive sequences.

        Returns the final hidden states ``[T, d]`` (None when ``stop_after_memory``) and the
        whole-context K/V of every layer (``[H, T, hd]`` each).
        """
        device = tokens.device
        T = tokens.shape[0]
        sizes = torch.as_tensor(list(segment_sizes), device=device, dtype=torch.long)
        n_seq = sizes.numel()
        lmax = int(sizes.max())
        starts = torch.cumsum(sizes, 0) - sizes
        seg_id = torch.repeat_interleave(torch.arange(n_seq, device=device), sizes)
        positions = torch.arange(T, device=device) - starts[seg_id]  # within-sequence positions
        pos_b = positions[None, :]
        h = self.token_embed(tokens)[None]  # [1, T, d]
        memory: list[LayerKV] = []
        for li, layer in enumerate(self.layers):
            # sequence tier: causal within each sequence -> pad the sequences into a batch
            q, k, v = layer.self_attn.qkv(layer.norm1(h), pos_b)  # [1, H, T, hd]
            H, hd = q.shape[1], q.shape[3]

            def to_padded(x: Tensor) -> Tensor:
                out = x.new_zeros(n_seq, lmax, H, hd)
                out[seg_id, positions] = x[0].transpose(0, 1)
                return out.transpose(1, 2)  # [N, H, Lmax, hd]

            o = F.scaled_dot_product_attention(
                to_padded(q), to_padded(k), to_padded(v), is_causal=True, scale=self.scale
            )
            o = o.transpose(1, 2)[seg_id, positions].transpose(0, 1)[None]  # [1, H, T, hd]
            h = h + layer.self_attn.project_out(o)
            # whole-context tier: causal over the packed row (Lq == Lk, so is_causal is exact)
            q, k, v = layer.multihead_attn.qkv(layer.norm2(h), pos_b)
            memory.append((k[0], v[0]))
            if stop_after_memory and li == len(self.layers) - 1:
                return None, memory
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            h = h + layer.multihead_attn.project_out(o)
            h = h + layer.ffn(h)
        return h[0], memory

    @torch.inference_mode()
    def embed_prompt(self, tokens: Tensor, segment_sizes: Sequence[int]) -> list[LayerKV]:
        """Whole-context keys (after RoPE) and values of every layer for a packed prompt.

        Args:
            tokens: ``[T]`` long, the prompt sequences concatenated, each ``*SEQ$`` (or reversed).
            segment_sizes: the token length of each prompt sequence (sums to ``T``).

        Returns:
            ``[(K_0, V_0), ..., (K_{n-1}, V_{n-1})]``, each ``[H, T, hd]`` in the model dtype.
            The last layer's attention output and FFN are skipped (they do not affect the memory).
        """
        _, memory = self._packed_pass(tokens, segment_sizes, stop_after_memory=True)
        return memory

    @torch.inference_mode()
    def forward(self, tokens: Tensor, segment_sizes: Sequence[int]) -> Tensor:
        """Logits ``[T, 24]`` for one packed sequence-of-sequences ``tokens`` ``[T]``.

        ``logits[t]`` is the distribution of token ``t+1``. This is the official ``forward`` for
        batch 1 and the reference for the cached paths.
        """
        h, _ = self._packed_pass(tokens, segment_sizes, stop_after_memory=False)
        assert h is not None
        return self.head(h)

    @torch.inference_mode()
    def decode(
        self,
        tokens: Tensor,
        positions: Tensor,
        *,
        memory: Sequence[LayerKV] | None = None,
        shared: Sequence[LayerState] | None = None,
        shared_len: Tensor | None = None,
        past: Sequence[LayerState] | None = None,
        return_states: bool = False,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, list[LayerState] | None]:
        """Run new tokens after a prompt and (optionally) earlier tokens of the same sequences.

        Each query token ``(b, i)`` attends, in the sequence tier, to the visible earlier tokens of
        its own sequence (``shared`` prefix, ``past`` cache, its own tokens ``<= i``) and, in the
        whole-context tier, additionally to every prompt token in ``memory`` (bottom-right causal
        alignment, spec §2.4).

        Args:
            tokens: ``[B, L]`` long. Right padding is allowed (padded queries never influence
                valid ones, since they come later).
            positions: ``[B, L]`` long, the within-sequence positions of ``tokens``.
            memory: per layer ``(K, V)`` of the prompt, ``[H, T, hd]``, shared by every row; None
                for no prompt.
            shared: per layer ``(seq_k, seq_v, ctx_k, ctx_v)`` ``[H, Ls, hd]`` of one reference
                sequence (e.g. the wild type), shared by every row; row ``b`` sees its first
                ``shared_len[b]`` tokens (``shared_len``: ``[B]`` long).
            past: per layer ``(seq_k, seq_v, ctx_k, ctx_v)`` ``[B, H, Lp, hd]``, a per-row cache
                of earlier tokens, all visible.
            return_states: also return the new tokens' per-layer states ``[B, H, L, hd]``.
            return_logits: compute the logits (skip the head when only states are needed).

        Returns:
            ``(logits [B, L, 24] or None, states or None)``.
        """
        B, L = tokens.shape
        h = self.token_embed(tokens)
        if shared is not None and shared_len is not None:
            # no row sees past the longest visible prefix: drop the keys beyond it
            n_vis = int(shared_len.max())
            shared = [tuple(t[:, :n_vis] for t in layer) for layer in shared]  # type: ignore[misc]
        states: list[LayerState] = []
        for li, layer in enumerate(self.layers):
            q, k, v = layer.self_attn.qkv(layer.norm1(h), positions)
            parts = [_part_rows(q, k, v, None, self.scale, causal=True)]
            if past is not None:
                parts.append(_part_rows(q, past[li][0], past[li][1], None, self.scale))
            if shared is not None:
                parts.append(_part_shared(q, shared[li][0], shared[li][1], shared_len, self.scale))
            h = h + layer.self_attn.project_out(_merge(parts, q.dtype))
            sk, sv = k, v

            q, k, v = layer.multihead_attn.qkv(layer.norm2(h), positions)
            parts = [_part_rows(q, k, v, None, self.scale, causal=True)]
            if past is not None:
                parts.append(_part_rows(q, past[li][2], past[li][3], None, self.scale))
            if shared is not None:
                parts.append(_part_shared(q, shared[li][2], shared[li][3], shared_len, self.scale))
            if memory is not None:
                parts.append(_part_shared(q, memory[li][0], memory[li][1], None, self.scale))
            h = h + layer.multihead_attn.project_out(_merge(parts, q.dtype))
            h = h + layer.ffn(h)
            if return_states:
                states.append((sk, sv, k, v))
        logits = self.head(h) if return_logits else None
        return logits, (states if return_states else None)


def init_random_(model: PoETModel, seed: int = 0) -> PoETModel:
    """Fill every parameter with random values (a "dummy" model for smoke tests and benchmarks).

    The official initialisation zeroes ``out_proj`` and ``linear2``, which makes a fresh model
    ignore attention and FFN (spec §7); this draws all of them: embeddings ~ N(0, 1), matrices
    ~ N(0, 1/sqrt(fan_in)), LayerNorm weights ~ N(1, 0.1), biases ~ N(0, 0.1). Rotary buffers keep
    their formula values.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "token_embed.weight":
                vals = torch.randn(p.shape, generator=gen)
            elif p.ndim == 2:
                vals = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
            elif "norm" in name and name.endswith("weight"):
                vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                vals = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(vals.to(p.dtype))
    return model
