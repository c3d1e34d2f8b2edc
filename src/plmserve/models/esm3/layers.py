"""Building blocks of the ESM3 trunk: rotary attention, geometric attention, SwiGLU, heads.

Written from ``shared/specs/esm3-model.md`` (§3-§6), a clean-room description of the official
``esm`` package (EvolutionaryScale, ``esm/layers/*``, ``esm/utils/structure/affine3d.py``).
Sub-module names equal the official ones so that the official state dict loads strictly.

Shapes: B batch, L tokens (BOS and EOS included), d model width, H attention heads,
Dh = d / H head width, v geometric ("vector") heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# Rotary position embedding (GPT-NeoX half-split form)
# --------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over all ``dim`` features, half-split (GPT-NeoX), base 10000.

    ``inv_freq`` is a non-persistent buffer (it is not a key of the official state dict). Casting
    the module to bf16 rounds it, exactly as the official GPU path does (esm3-model.md §9); the
    angles are always computed in fp32 from fp32 positions and then cast to q's dtype.

    Source: Su et al. 2021 (RoFormer); layout as in esm3-model.md §4.2 step 5.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.dtype, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def _cos_sin(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._cache
        if c is not None and c[0] >= length and c[1] == device and c[2] == dtype and c[3] == self.inv_freq.dtype:
            return c[4][:length], c[5][:length]
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device=device, dtype=torch.float32))  # [L, Dh/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [L, Dh]
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        self._cache = (length, device, dtype, self.inv_freq.dtype, cos, sin)
        return cos, sin

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k.

        Args:
            q, k: [B, L, H, Dh]; position p = token index in the row (0 at BOS).

        Returns:
            (q', k') of the same shape and dtype.
        """
        length = q.shape[1]
        cos, sin = self._cos_sin(length, q.device, q.dtype)
        cos = cos[None, :, None, :]
        sin = sin[None, :, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# --------------------------------------------------------------------------------------------
# Self-attention with qk-LayerNorm
# --------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Pre-LN multi-head self-attention with q/k LayerNorm over the full width and rotary.

    Keys (prefix ``attn.``): ``layernorm_qkv.0.{weight,bias}``, ``layernorm_qkv.1.weight`` [3d, d],
    ``out_proj.weight`` [d, d], ``q_ln.weight`` [d], ``k_ln.weight`` [d]. No other biases.

    Source: esm3-model.md §4.2.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 3 * d_model, bias=False))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.q_ln = nn.LayerNorm(d_model, bias=False)
        self.k_ln = nn.LayerNorm(d_model, bias=False)
        self.rotary = RotaryEmbedding(self.d_head)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Args:
            x: [B, L, d].
            attn_mask: None (attend everywhere) or bool [B, 1, L, L], True = query i may attend key j.

        Returns:
            [B, L, d], the attention update (before the residual scaling).
        """
        b, length, _ = x.shape
        qkv = self.layernorm_qkv(x)
        q, k, v = qkv.chunk(3, dim=-1)
        q = self.q_ln(q).to(qkv.dtype)
        k = self.k_ln(k).to(qkv.dtype)
        q = q.view(b, length, self.n_heads, self.d_head)
        k = k.view(b, length, self.n_heads, self.d_head)
        v = v.view(b, length, self.n_heads, self.d_head)
        q, k = self.rotary(q, k)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )  # [B, H, L, Dh]
        out = out.transpose(1, 2).reshape(b, length, self.d_model)
        return self.out_proj(out)


# --------------------------------------------------------------------------------------------
# Backbone frames
# --------------------------------------------------------------------------------------------


def backbone_frames(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rigid frames (R, t) of residues from their N, CA, C coordinates (Gram-Schmidt).

    Args:
        coords: [B, L, A>=3, 3] float (Å), atom order N, CA, C first (atom37 or atom14 or 3).
            NaN/inf mark missing atoms.

    Returns:
        R: [B, L, 3, 3] fp32 rotation, local->global, axes as **columns**: e0 = unit(CA - C),
           e1 = unit(N - CA orthogonalised against e0), e2 = e0 x e1.
        t: [B, L, 3] fp32 translation (= CA).
        has_frame: [B, L] bool, True when all 9 backbone numbers are finite and < 1e6 (signed
           comparison, as in the official code). Frameless residues get the identity frame at
           the origin; they never affect outputs (their keys are masked, their queries zeroed).

    Source: esm3-model.md §3 (official ``build_affine3d_from_coordinates``).
    """
    x = coords[..., :3, :].float()
    has_frame = (torch.isfinite(x) & (x < 1e6)).flatten(-2).all(-1)
    x = torch.where(has_frame[..., None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    n_atom, ca, c_atom = x[..., 0, :], x[..., 1, :], x[..., 2, :]
    u = ca - c_atom
    e0 = u / torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-10)
    w = n_atom - ca
    w = w - (e0 * w).sum(-1, keepdim=True) * e0
    e1 = w / torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-10)
    e2 = torch.linalg.cross(e0, e1, dim=-1)
    rot = torch.stack((e0, e1, e2), dim=-1)  # columns
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    rot = torch.where(has_frame[..., None, None], rot, eye)
    return rot, ca, has_frame


# --------------------------------------------------------------------------------------------
# Geometric attention (block 0)
# --------------------------------------------------------------------------------------------


class GeometricReasoning(nn.Module):
    """Geometric (frame-invariant) attention over backbone frames, used in block 0 only.

    Keys (prefix ``geom_attn.``): ``distance_scale_per_head`` [v], ``rotation_scale_per_head`` [v],
    ``s_norm.weight`` [d], ``proj.weight`` [15v, d], ``out_proj.weight`` [d, 3v]. No biases.

    Per head h, query residue i, key residue j (esm3-model.md §5):
        w_hij = softplus(rot_h) * (R_i a_ih . R_j b_jh) / sqrt(3)
                - softplus(dist_h) * |(R_i alpha_ih + t_i) - (R_j beta_jh + t_j)|_2 / sqrt(3) + bias_ij
        o_ih = R_i^T sum_j softmax_j(w)_hij R_j c_jh
    bias_ij = 1.0 for the same sequence_id else 0.0, finfo.min for frameless keys and for pairs of
    different chains (added, not multiplied). Rows of frameless queries are zeroed.

    Source: esm3-model.md §5 (official ``GeometricReasoningOriginalImpl``).
    """

    def __init__(self, d_model: int, v_heads: int):
        super().__init__()
        self.d_model = d_model
        self.v_heads = v_heads
        self.s_norm = nn.LayerNorm(d_model, bias=False)
        self.proj = nn.Linear(d_model, 15 * v_heads, bias=False)
        self.out_proj = nn.Linear(3 * v_heads, d_model, bias=False)
        self.distance_scale_per_head = nn.Parameter(torch.zeros(v_heads))
        self.rotation_scale_per_head = nn.Parameter(torch.zeros(v_heads))

    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        trans: torch.Tensor,
        has_frame: torch.Tensor,
        sequence_id: torch.Tensor | None,
        chain_id: torch.Tensor,
    ) -> torch.Tensor:
        """Args:
            x: [B, L, d].
            rot, trans, has_frame: from :func:`backbone_frames` ([B,L,3,3], [B,L,3], [B,L] bool).
            sequence_id: None or [B, L] (any comparable dtype): +1 bias for same-id pairs.
            chain_id: [B, L] long: pairs of different chains are masked.

        Returns:
            [B, L, d], the geometric update (before the residual scaling).
        """
        b, length, _ = x.shape
        v = self.v_heads
        p = self.proj(self.s_norm(x))
        vec_rot, vec_dist = p.split((9 * v, 6 * v), dim=-1)
        # fp32 island: applying the frames (as the official code does under autocast)
        rot32 = rot.float()
        vec_rot = vec_rot.float().reshape(b, length, 3 * v, 3)
        vec_dist = vec_dist.float().reshape(b, length, 2 * v, 3)
        vec_rot = torch.einsum("blij,blnj->blni", rot32, vec_rot)
        vec_dist = torch.einsum("blij,blnj->blni", rot32, vec_dist) + trans.float()[:, :, None, :]
        query_rot, key_rot, value = vec_rot.split(v, dim=2)  # [B, L, v, 3] each
        query_dist, key_dist = vec_dist.split(v, dim=2)

        # [B, v, L, 3]
        query_rot = query_rot.transpose(1, 2)
        key_rot = key_rot.transpose(1, 2)
        value = value.transpose(1, 2)
        query_dist = query_dist.transpose(1, 2)
        key_dist = key_dist.transpose(1, 2)

        # the official rotation matmul runs in the compute dtype (bf16 on GPU)
        dot_dtype = x.dtype
        rotation_term = torch.matmul(query_rot.to(dot_dtype), key_rot.to(dot_dtype).transpose(-1, -2)).float()
        distance_term = torch.cdist(
            query_dist.reshape(b * v, length, 3),
            key_dist.reshape(b * v, length, 3),
            compute_mode="donot_use_mm_for_euclid_dist",
        ).reshape(b, v, length, length)
        inv_sqrt3 = 1.0 / math.sqrt(3.0)
        rot_scale = F.softplus(self.rotation_scale_per_head.float())[None, :, None, None]
        dist_scale = F.softplus(self.distance_scale_per_head.float())[None, :, None, None]
        logits = rotation_term * (rot_scale * inv_sqrt3) - distance_term * (dist_scale * inv_sqrt3)

        if sequence_id is None:
            bias = torch.ones((b, 1, length, length), dtype=torch.float32, device=x.device)
        else:
            bias = (sequence_id[:, None, :, None] == sequence_id[:, None, None, :]).float()
            bias = bias.expand(b, 1, length, length)
        bias = bias.masked_fill(~has_frame[:, None, None, :], torch.finfo(torch.float32).min)
        bias = bias.masked_fill(
            chain_id[:, None, :, None] != chain_id[:, None, None, :], torch.finfo(x.dtype).min
        )
        attn = torch.softmax(logits + bias, dim=-1)  # [B, v, L, L] fp32

        out = torch.matmul(attn.to(dot_dtype), value.to(dot_dtype)).float()  # [B, v, L, 3], global frame
        out = out.transpose(1, 2)  # [B, L, v, 3]
        out = torch.einsum("blji,blnj->blni", rot32, out)  # R^T: back into each query's local frame
        out = out.reshape(b, length, 3 * v)
        out = out.masked_fill(~has_frame[..., None], 0.0)
        return self.out_proj(out.to(self.out_proj.weight.dtype))


# --------------------------------------------------------------------------------------------
# SwiGLU FFN, blocks, stack
# --------------------------------------------------------------------------------------------


def swiglu_hidden_width(d_model: int, expansion_ratio: float = 8 / 3) -> int:
    """F = floor((ratio * d + 255) / 256) * 256 (float floor division): 4096 for d=1536, 256 for d=64."""
    return int(((expansion_ratio * d_model) + 255) // 256 * 256)


class SwiGLU(nn.Module):
    """SiLU(first half) * second half of the last dimension: [..., 2F] -> [..., F]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def swiglu_ffn(d_model: int, expansion_ratio: float = 8 / 3) -> nn.Sequential:
    """``ffn``: Sequential(0 LayerNorm(d), 1 Linear(d, 2F, no bias), 2 SwiGLU, 3 Linear(F, d, no bias))."""
    hidden = swiglu_hidden_width(d_model, expansion_ratio)
    return nn.Sequential(
        nn.LayerNorm(d_model),
        nn.Linear(d_model, 2 * hidden, bias=False),
        SwiGLU(),
        nn.Linear(hidden, d_model, bias=False),
    )


class TransformerBlock(nn.Module):
    """Pre-LN block: x += MHA(x)/s; [block 0] x += Geom(x)/s; x += FFN(x)/s, s = sqrt(n_layers/36).

    Source: esm3-model.md §4.1 (residual updates are divided by s).
    """

    def __init__(self, d_model: int, n_heads: int, v_heads: int | None, residue_scaling_factor: float):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.geom_attn = GeometricReasoning(d_model, v_heads) if v_heads else None
        self.ffn = swiglu_ffn(d_model)
        self.scaling_factor = residue_scaling_factor

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        sequence_id: torch.Tensor | None,
        chain_id: torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.attn(x, attn_mask) / self.scaling_factor
        if self.geom_attn is not None:
            assert frames is not None
            rot, trans, has_frame = frames
            x = x + self.geom_attn(x, rot, trans, has_frame, sequence_id, chain_id) / self.scaling_factor
        x = x + self.ffn(x) / self.scaling_factor
        return x


class TransformerStack(nn.Module):
    """``transformer``: n blocks (geometric attention in block 0) and a bias-free final LayerNorm.

    Keys: ``blocks.{i}.*``, ``norm.weight``.
    """

    def __init__(self, d_model: int, n_heads: int, v_heads: int, n_layers: int, n_layers_geom: int = 1):
        super().__init__()
        scale = math.sqrt(n_layers / 36)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, v_heads if i < n_layers_geom else None, scale)
            for i in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        sequence_id: torch.Tensor | None,
        chain_id: torch.Tensor,
        return_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Returns (post-norm y [B,L,d], pre-norm embeddings x [B,L,d], hidden states per block)."""
        hiddens: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x, attn_mask, frames, sequence_id, chain_id)
            if return_hidden_states:
                hiddens.append(x)
        return self.norm(x), x, hiddens


def regression_head(d_model: int, output_dim: int) -> nn.Sequential:
    """Output head: Sequential(0 Linear(d,d), 1 GELU (exact erf), 2 LayerNorm(d), 3 Linear(d,out))."""
    return nn.Sequential(
        nn.Linear(d_model, d_model),
        nn.GELU(),
        nn.LayerNorm(d_model),
        nn.Linear(d_model, output_dim),
    )
