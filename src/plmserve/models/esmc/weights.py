"""ESM C weights: the official ``.pth`` layout, the Hugging Face (``biohub/ESMC-*``) layout, the
conversion between them, and where to find them.

Layouts (``shared/specs/esmc-and-biolm-v3.md`` §5.2-§5.3):

* **official** (``esm`` 3.2.1, ``data/weights/esmc_300m_2024_12_v0.pth``): a plain state dict,
  ``embed.weight``, ``transformer.blocks.{i}.attn.layernorm_qkv.{0,1}`` (fused q|k|v rows),
  ``attn.{q_ln,k_ln,out_proj}``, ``ffn.{0,1,3}`` (``ffn.1`` = gate rows then up rows),
  ``transformer.norm.weight``, ``sequence_head.{0,2,3}``;
* **transformers** (``EsmcForMaskedLM``): ``esmc.embed_tokens``, ``esmc.layers.{i}.{input_layernorm,
  self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm, post_attention_layernorm, mlp.{gate,up,down}_proj}``,
  ``esmc.norm``, ``lm_head.{dense,layer_norm,decoder}``.

The mapping is exact (row slices of the fused tensors). The official file does not record the
number of attention heads: it is taken from a ``config.json`` next to the file (``n_heads``), the
caller, or the released shapes (head width 64).

Search order of :func:`locate_weights` (first hit wins): an explicit path (``.pth`` file or HF
folder); ``<PLMSERVE_MODEL_DIR>/<slug>/`` (HF folder, or an official snapshot holding
``data/weights/<file>``); ``<PLMSERVE_MODEL_DIR>/<official file>``; the Hugging Face cache of the
registry's repos; a hub download unless offline.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmserve.errors import ModelLoadError, WeightsNotFoundError
from plmserve.models.esm2.weights import hub_cache_dir, hub_offline, is_hf_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import EsmcConfig

    from plmserve.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: attention heads of the released shapes (d_model -> heads; head width 64)
RELEASED_HEADS = {960: 15, 1152: 18, 2560: 40}
MAX_POSITIONS = 16386  # Forge's limit of 16384 residues + BOS/EOS (rotary: no learned positions)


def swiglu_hidden(d_model: int) -> int:
    """F = floor((8/3 d + 255) / 256) * 256: 2560 for 960, 3072 for 1152, 256 for 64."""
    return int(((8 / 3) * d_model + 255) // 256 * 256)


def esmc_config(d_model: int, n_heads: int, n_layers: int, intermediate: int | None = None) -> "EsmcConfig":
    """The ``transformers.EsmcConfig`` of an ESM C shape (vocabulary 64, pad 1, bos 0, eos 2,
    mask 32, no biases in attention/MLP, rotary base 10000, LayerNorm eps 1e-5)."""
    from transformers import EsmcConfig

    if d_model % n_heads:
        raise ModelLoadError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    return EsmcConfig(
        vocab_size=64,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=d_model // n_heads,
        intermediate_size=intermediate or swiglu_hidden(d_model),
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        mask_token_id=32,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )


def load_official_state_dict(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Read an official ESM C ``.pth`` (a plain state dict) with ``torch.load(weights_only=True)``.

    Raises:
        ModelLoadError: unreadable file, or not an ESM C state dict (names the file).
    """
    import torch

    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read ESM C checkpoint {path}: {first}") from exc
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or "embed.weight" not in data:
        raise ModelLoadError(f"{path} is not an official ESM C state dict (no 'embed.weight')")
    return data


def official_to_hf(state: dict[str, "torch.Tensor"], *, n_heads: int | None = None) -> tuple["EsmcConfig", dict]:
    """Convert an official ESM C state dict to ``(EsmcConfig, EsmcForMaskedLM state dict)``.

    Args:
        state: the official keys (§5.2).
        n_heads: attention heads; default: :data:`RELEASED_HEADS` for the released widths.

    Raises:
        ModelLoadError: missing keys, inconsistent layers or shapes, unknown head count.
    """
    import torch

    vocab, d = state["embed.weight"].shape
    if vocab != 64:
        raise ModelLoadError(f"not an ESM C checkpoint: embedding has {vocab} rows, expected 64")
    layer_ids = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.blocks.")})
    n_layers = len(layer_ids)
    if n_layers == 0 or layer_ids != list(range(n_layers)):
        raise ModelLoadError(f"ESM C checkpoint has inconsistent block indices {layer_ids[:5]}")
    if n_heads is None:
        n_heads = RELEASED_HEADS.get(int(d))
        if n_heads is None:
            raise ModelLoadError(
                f"ESM C checkpoint of width {d}: the number of attention heads is not in the file; "
                "put a config.json with \"n_heads\" next to it")
    if any(k.startswith("transformer.blocks.0.geom_attn") for k in state):
        raise ModelLoadError("this is an ESM3 checkpoint (geometric attention), not ESM C")
    hidden = state["transformer.blocks.0.ffn.3.weight"].shape[1]
    config = esmc_config(int(d), int(n_heads), n_layers, int(hidden))
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ModelLoadError(f"ESM C checkpoint lacks '{key}'")
        used.add(key)
        return state[key].detach().to(torch.float32).contiguous()

    out["esmc.embed_tokens.weight"] = take("embed.weight")
    for i in range(n_layers):
        s, t = f"transformer.blocks.{i}.", f"esmc.layers.{i}."
        out[t + "input_layernorm.weight"] = take(s + "attn.layernorm_qkv.0.weight")
        out[t + "input_layernorm.bias"] = take(s + "attn.layernorm_qkv.0.bias")
        qkv = take(s + "attn.layernorm_qkv.1.weight")
        if qkv.shape != (3 * d, d):
            raise ModelLoadError(f"{s}attn.layernorm_qkv.1.weight has shape {tuple(qkv.shape)}, expected {(3 * d, d)}")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[t + f"self_attn.{name}.weight"] = qkv[j * d:(j + 1) * d].clone()
        out[t + "self_attn.q_norm.weight"] = take(s + "attn.q_ln.weight")
        out[t + "self_attn.k_norm.weight"] = take(s + "attn.k_ln.weight")
        out[t + "self_attn.o_proj.weight"] = take(s + "attn.out_proj.weight")
        out[t + "post_attention_layernorm.weight"] = take(s + "ffn.0.weight")
        out[t + "post_attention_layernorm.bias"] = take(s + "ffn.0.bias")
        up = take(s + "ffn.1.weight")
        if up.shape != (2 * hidden, d):
            raise ModelLoadError(f"{s}ffn.1.weight has shape {tuple(up.shape)}, expected {(2 * hidden, d)}")
        out[t + "mlp.gate_proj.weight"] = up[:hidden].clone()
        out[t + "mlp.up_proj.weight"] = up[hidden:].clone()
        out[t + "mlp.down_proj.weight"] = take(s + "ffn.3.weight")
    out["esmc.norm.weight"] = take("transformer.norm.weight")
    for src, dst in (("0", "dense"), ("2", "layer_norm"), ("3", "decoder")):
        out[f"lm_head.{dst}.weight"] = take(f"sequence_head.{src}.weight")
        out[f"lm_head.{dst}.bias"] = take(f"sequence_head.{src}.bias")
    extra = sorted(set(state) - used)
    if extra:
        raise ModelLoadError(f"ESM C checkpoint has unexpected keys {extra[:5]}")
    return config, out


def heads_from_sidecar(pth: Path) -> int | None:
    """``n_heads`` from a ``config.json`` next to an official ``.pth`` (as in the test fixture), or None."""
    cfg = pth.with_name("config.json")
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = data.get("n_heads") if isinstance(data, dict) else None
    return int(value) if isinstance(value, int) else None


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, n_heads: int | None = None) -> Path:
    """Convert an official ``esmc_*.pth`` into a transformers folder (``config.json`` +
    ``model.safetensors``) loadable by ``EsmcForMaskedLM.from_pretrained`` and by plmserve from
    ``<PLMSERVE_MODEL_DIR>/<slug>/``.

    Raises:
        FileNotFoundError: ``src`` does not exist. ModelLoadError: not an ESM C checkpoint.
    """
    from .engine import build_hf_model

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(2, "No such file", str(src))
    config, state = official_to_hf(load_official_state_dict(src), n_heads=n_heads or heads_from_sidecar(src))
    model = build_hf_model(config, state)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    return dst


# --------------------------------------------------------------------------------------------
# resolution


@dataclass(frozen=True)
class WeightsLocation:
    """``kind``: ``hf-dir``/``hf-hub`` (transformers folder) or ``official`` (``.pth`` file)."""

    kind: str
    path: Path


def _official_in(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for cand in (folder / name, folder / "data" / "weights" / name):
            if cand.is_file():
                return cand
    return None


def _hub_folder(repo: str, *, local_only: bool) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, allow_patterns=["config.json", "*.safetensors", "*.json", "data/weights/*.pth"],
                                      local_files_only=local_only))  # fmt: skip
    except LocalEntryNotFoundError:
        return None
    except Exception as exc:  # network, auth, missing repo
        if local_only:
            return None
        raise WeightsNotFoundError(f"downloading {repo} from the Hugging Face hub failed: {exc}") from exc
    return path


def locate_weights(spec: "ModelSpec", settings: Any, *, explicit: str | os.PathLike | None = None,
                   download: bool = True) -> WeightsLocation:
    """Find an ESM C model's weights (order in the module docstring).

    Raises:
        WeightsNotFoundError: nothing found; the message lists every place searched.
    """
    names = tuple(spec.official_files)
    searched: list[str] = []
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_file() and p.suffix in (".pth", ".pt"):
            return WeightsLocation("official", p)
        if is_hf_dir(p):
            return WeightsLocation("hf-dir", p)
        if p.is_dir() and (f := _official_in(p, names)) is not None:
            return WeightsLocation("official", f)
        searched.append(f"{p} (given explicitly; needs an HF folder or an official .pth)")
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        md = Path(model_dir).expanduser()
        d = md / spec.slug
        if is_hf_dir(d):
            return WeightsLocation("hf-dir", d)
        for folder in (d, md):
            if (f := _official_in(folder, names)) is not None:
                return WeightsLocation("official", f)
        searched.append(f"{d}/ (HF folder or data/weights/{names[0]}) and {md / names[0]}")
    else:
        searched.append("PLMSERVE_MODEL_DIR is not set (no local model folder searched)")
    repos = [r for r in (spec.hf_repo, *spec.config.get("alt_hf_repos", ())) if r]
    offline = hub_offline(settings)
    for local_only in (True, False):
        if not local_only and (offline or not download):
            searched.append(f"no hub download ({'offline mode' if offline else 'download disabled'})")
            break
        for repo in repos:
            snap = _hub_folder(repo, local_only=local_only)
            if snap is None:
                if local_only:
                    searched.append(f"Hugging Face cache {hub_cache_dir()} for {repo}")
                continue
            if is_hf_dir(snap):
                return WeightsLocation("hf-hub", snap)
            if (f := _official_in(snap, names)) is not None:
                return WeightsLocation("official", f)
    raise WeightsNotFoundError(
        f"weights for model '{spec.slug}' were not found. Searched: {'; '.join(searched)}. To get them: "
        f"`plmserve models pull {spec.slug}` on a connected machine and copy the folder to <dir>/{spec.slug}/, "
        f"then set PLMSERVE_MODEL_DIR=<dir>; or put {names[0] if names else 'the .pth'} in PLMSERVE_MODEL_DIR; "
        "or start with --load-format dummy for random weights (smoke tests only)."
    )


def hf_to_official(state: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """The inverse of :func:`official_to_hf`: an ``EsmcForMaskedLM`` state dict -> the official
    ``esm`` 3.2.1 ``ESMC`` keys (q|k|v and gate|up rows concatenated). Used to hand the same
    weights to the official package (benchmarks, cross-checks).

    Raises:
        ModelLoadError: a missing key.
    """
    import torch

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise ModelLoadError(f"transformers ESM C state dict lacks '{key}'")
        return state[key].detach().contiguous()

    n = len({k.split(".")[2] for k in state if k.startswith("esmc.layers.")})
    out = {"embed.weight": get("esmc.embed_tokens.weight")}
    for i in range(n):
        s, t = f"esmc.layers.{i}.", f"transformer.blocks.{i}."
        out[t + "attn.layernorm_qkv.0.weight"] = get(s + "input_layernorm.weight")
        out[t + "attn.layernorm_qkv.0.bias"] = get(s + "input_layernorm.bias")
        out[t + "attn.layernorm_qkv.1.weight"] = torch.cat([get(s + f"self_attn.{p}_proj.weight") for p in "qkv"])
        out[t + "attn.out_proj.weight"] = get(s + "self_attn.o_proj.weight")
        out[t + "attn.q_ln.weight"] = get(s + "self_attn.q_norm.weight")
        out[t + "attn.k_ln.weight"] = get(s + "self_attn.k_norm.weight")
        out[t + "ffn.0.weight"] = get(s + "post_attention_layernorm.weight")
        out[t + "ffn.0.bias"] = get(s + "post_attention_layernorm.bias")
        out[t + "ffn.1.weight"] = torch.cat([get(s + "mlp.gate_proj.weight"), get(s + "mlp.up_proj.weight")])
        out[t + "ffn.3.weight"] = get(s + "mlp.down_proj.weight")
    out["transformer.norm.weight"] = get("esmc.norm.weight")
    for src, dst in (("0", "dense"), ("2", "layer_norm"), ("3", "decoder")):
        out[f"sequence_head.{src}.weight"] = get(f"lm_head.{dst}.weight")
        out[f"sequence_head.{src}.bias"] = get(f"lm_head.{dst}.bias")
    return out
