"""A tiny random ESM-2 in Hugging Face format, for API and CLI tests (never downloaded).

``make_tiny_esm2_dir(root)`` writes ``root/esm2-8m/`` (config, safetensors, tokenizer vocab) so a
server or CLI given ``--model-dir root`` loads it exactly as it would load real local weights.
"""

from __future__ import annotations

from pathlib import Path

ALL_TOKENS = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
NUM_LAYERS = 2
EMBED_DIM = 32
HEADS = 4


def make_tiny_esm2_dir(root: Path, slug: str = "esm2-8m", seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide, 4-head ``EsmForMaskedLM`` (random weights) to ``root/slug``."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    torch.manual_seed(seed)
    config = EsmConfig(
        vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=EMBED_DIM,
        num_hidden_layers=NUM_LAYERS, num_attention_heads=HEADS, intermediate_size=4 * EMBED_DIM,
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, vocab_list=list(ALL_TOKENS),
        architectures=["EsmForMaskedLM"],
    )
    model = EsmForMaskedLM(config).eval()
    with torch.no_grad():  # make the outputs non-trivial (default init gives near-uniform logits)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
    out = Path(root) / slug
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(ALL_TOKENS) + "\n")
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(out)
    return out
