"""ESM-2's architecture on ``transformers.EsmForMaskedLM``: its configuration, the model builder and
the attention function plmserve registers with transformers (fused SDPA, or an explicit softmax whose
weights are handed to a per-thread collector).

This module is the leaf of the ESM-2 package: :mod:`.weights` (finding and converting checkpoints)
and :mod:`.engine` (inference) both build on it, and it imports neither.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from plmserve.errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import EsmConfig

# torch and transformers are imported where used, so that importing this module (and .weights,
# e.g. for `plmserve models list`) stays cheap.

MAX_POSITIONS = 1026  # BOS + 1024 residues + EOS

# --------------------------------------------------------------------------------------------
# configuration


def esm2_config(num_layers: int, embed_dim: int, attention_heads: int) -> "EsmConfig":
    """The ``transformers.EsmConfig`` of an ESM-2 model of the given shape.

    ESM-2 facts (fair-esm ``esm.model.esm2.ESM2``): 33-token vocabulary, pre-LayerNorm blocks,
    FFN width 4 x ``embed_dim``, rotary positions, token dropout, LayerNorm eps 1e-5, final
    ``emb_layer_norm_after``, LM head tied to the token embedding, 1026 positions.
    """
    from transformers import EsmConfig

    if embed_dim % attention_heads:
        raise ModelLoadError(f"embed_dim {embed_dim} is not divisible by attention_heads {attention_heads}")
    return EsmConfig(
        vocab_size=33,
        mask_token_id=32,
        pad_token_id=1,
        hidden_size=embed_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=attention_heads,
        intermediate_size=4 * embed_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        use_cache=True,
        emb_layer_norm_before=False,
        token_dropout=True,
        is_folding_model=False,
        tie_word_embeddings=True,
    )



# --------------------------------------------------------------------------------------------
# attention and the model builder

ATTN_IMPLEMENTATION = "plmserve_esm2"

_state = threading.local()  # per-thread: the attention collector and the hidden-state capture


# --------------------------------------------------------------------------------------------
# attention: fused SDPA, or explicit softmax with the weights handed to a collector


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function registered with transformers' ``AttentionInterface``.

    Shapes: query/key/value ``[B, H, T, D]`` (the query already scaled by ``D**-0.5`` and rotated,
    as in fair-esm); ``attention_mask`` boolean ``[B, 1, T, T]`` (True = attend) or None.
    Returns ``([B, T, H, D], None)``.
    """
    import torch
    import torch.nn.functional as F

    scale = 1.0 if scaling is None else scaling
    collector = getattr(_state, "collector", None)
    debug = getattr(_state, "debug", None)
    if debug is not None:
        prev = collector

        def collector(probs, _prev=prev):
            debug(probs.clone())
            if _prev is not None:
                _prev(probs)

    if collector is None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        return out.transpose(1, 2).contiguous(), None
    scores = torch.matmul(query, key.transpose(-1, -2))
    if scale != 1.0:
        scores = scores * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores.float(), dim=-1)
    collector(probs)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


_registered = False


class attention_maps:
    """Context manager that records the full attention weights of every forward pass run in this
    thread while it is active (tests/debugging): ``with attention_maps() as maps: engine.encode(...)``
    leaves ``maps`` = one float32 ``[B, H, T, T]`` tensor per layer and batch, in call order."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __enter__(self) -> list[torch.Tensor]:
        _state.debug = self.maps.append
        return self.maps

    def __exit__(self, *exc) -> None:
        _state.debug = None


def _register_attention() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    _registered = True


def build_hf_model(config, state_dict: "dict[str, torch.Tensor] | None" = None):
    """An ``EsmForMaskedLM`` (eval mode) with plmserve's attention function, optionally loaded
    strictly from an HF-layout ``state_dict``.

    Raises:
        ModelLoadError: missing or unexpected keys, or shape mismatches.
    """
    from transformers import EsmForMaskedLM

    _register_attention()
    config._attn_implementation = ATTN_IMPLEMENTATION
    model = EsmForMaskedLM(config)
    if state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:
            raise ModelLoadError(f"ESM-2 weights do not fit the architecture: {exc}") from exc
        missing = [k for k in missing if not k.startswith("esm.contact_head.") and k != "lm_head.decoder.weight"]
        if missing or unexpected:
            raise ModelLoadError(f"ESM-2 weights: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        model.tie_weights()
    return model.eval()
