"""Where ESM-2 weights come from, and the fair-esm -> Hugging Face conversion.

Search order used by :func:`locate_weights` (first hit wins):

1. a local directory in Hugging Face format (``config.json`` + ``*.safetensors`` or
   ``pytorch_model.bin``): an explicit path, else ``<PLMSERVE_MODEL_DIR>/<slug>/`` (also
   ``<PLMSERVE_MODEL_DIR>/<fair-esm name>/``);
2. the Hugging Face hub cache for ``facebook/esm2_*`` (no network);
3. a fair-esm checkpoint (``esm2_t33_650M_UR50D.pt`` + ``esm2_t33_650M_UR50D-contact-regression.pt``,
   the torch-hub format) in ``<PLMSERVE_MODEL_DIR>``, ``<PLMSERVE_MODEL_DIR>/<slug>/`` or the torch
   hub checkpoint folder (``~/.cache/torch/hub/checkpoints``), converted on load;
4. a download from the hub (``huggingface_hub.snapshot_download``), unless offline
   (``PLMSERVE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or the hub is unreachable (one fast check,
   :func:`plmserve.models.hub.hub_unreachable`: the error then names the network cause).

Nothing found: one :class:`~plmserve.errors.WeightsNotFoundError` that lists every place searched.

The conversion maps fair-esm's ``ESM2`` state dict (``encoder.sentence_encoder.*`` / ``encoder.lm_head.*``
keys, as in the released files) onto ``transformers.EsmForMaskedLM``. The rotary ``inv_freq`` buffer
is copied from the checkpoint, not recomputed: the released checkpoints hold fp16-rounded values and
recomputing them changes the logits by ~0.05-0.1.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmserve.errors import ModelLoadError, WeightsNotFoundError
from plmserve.models.hub import OFFLINE_ADVICE, hub_offline, hub_unreachable  # noqa: F401 (hub_offline re-exported)

from .architecture import MAX_POSITIONS, build_hf_model, esm2_config  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import EsmConfig

    from plmserve.models.registry import ModelSpec

logger = logging.getLogger(__name__)


_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")  # fmt: skip


# --------------------------------------------------------------------------------------------
# configuration


def _heads_for(embed_dim: int) -> int:
    """Attention heads of the released ESM-2 shapes (20 up to 1280 wide, 40 above)."""
    return 40 if embed_dim >= 2560 else 20


# --------------------------------------------------------------------------------------------
# fair-esm checkpoints


def load_fair_esm_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fair-esm ``.pt`` file safely (``torch.load(weights_only=True)``).

    The released files keep their configuration in an ``argparse.Namespace``; that one class is
    allow-listed, nothing else. Returns the unpickled dict (``{"model": state_dict, "cfg": ...}``).

    Raises:
        ModelLoadError: the file is not a loadable checkpoint (message names the file and the reason).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read fair-esm checkpoint {path}: {first}") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise ModelLoadError(f"{path} is not a fair-esm checkpoint (no 'model' state dict)")
    return data


def fair_esm_to_hf(
    model_data: dict[str, Any],
    regression_data: dict[str, Any] | None = None,
    *,
    attention_heads: int | None = None,
) -> tuple["EsmConfig", dict[str, "torch.Tensor"]]:
    """Convert a fair-esm ESM-2 checkpoint to ``EsmForMaskedLM`` config + state dict.

    Args:
        model_data: the unpickled ``esm2_*.pt`` (``{"model": state_dict, "cfg": {"model": Namespace}}``);
            a bare fair-esm ``ESM2.state_dict()`` (keys without the ``encoder.`` prefixes) also works.
        regression_data: the unpickled ``*-contact-regression.pt`` (``{"model": {...}}``), or None.
        attention_heads: used when the checkpoint carries no configuration.

    Returns:
        ``(config, state_dict)`` with HF key names; ``lm_head.decoder.weight`` is the token embedding
        (tied), ``esm.rotary_embeddings.inv_freq`` the checkpoint's own (fp16-rounded) values.

    Raises:
        ModelLoadError: missing keys, inconsistent shapes, or per-layer ``inv_freq`` that differ.
    """
    import torch

    sd = dict(model_data.get("model", model_data))
    # normalise the key prefixes of the released files to fair-esm ESM2.state_dict() names
    norm: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key
        for prefix, repl in (("encoder.sentence_encoder.", ""), ("encoder.", ""), ("sentence_encoder.", "")):
            if k.startswith(prefix):
                k = repl + k[len(prefix):]
                break
        norm[k] = value
    if regression_data is not None:
        for key, value in dict(regression_data.get("model", regression_data)).items():
            norm[key if key.startswith("contact_head.") else f"contact_head.{key}"] = value

    if "embed_tokens.weight" not in norm:
        raise ModelLoadError("not an ESM-2 checkpoint: no embed_tokens.weight")
    vocab, embed_dim = norm["embed_tokens.weight"].shape
    if vocab != 33:
        raise ModelLoadError(f"not an ESM-2 checkpoint: vocabulary of {vocab} tokens, expected 33")
    layer_ids = sorted({int(k.split(".")[1]) for k in norm if k.startswith("layers.")})
    num_layers = len(layer_ids)
    if layer_ids != list(range(num_layers)) or num_layers == 0:
        raise ModelLoadError(f"ESM-2 checkpoint has inconsistent layer indices {layer_ids[:5]}...")

    cfg = model_data.get("cfg") if isinstance(model_data, dict) else None
    cfg_model = cfg.get("model") if isinstance(cfg, dict) else None
    heads = getattr(cfg_model, "encoder_attention_heads", None) or attention_heads or _heads_for(embed_dim)
    if cfg_model is not None:
        if getattr(cfg_model, "encoder_layers", num_layers) != num_layers or getattr(
            cfg_model, "encoder_embed_dim", embed_dim
        ) != embed_dim:
            raise ModelLoadError("checkpoint configuration does not match its tensors")
        if getattr(cfg_model, "token_dropout", True) is not True:
            raise ModelLoadError("ESM-2 checkpoints with token_dropout=False are not supported")
    config = esm2_config(num_layers, embed_dim, int(heads))

    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in norm:
            raise ModelLoadError(f"ESM-2 checkpoint lacks '{src}'")
        out[dst] = norm[src].detach().to(torch.float32).contiguous()

    take("embed_tokens.weight", "esm.embeddings.word_embeddings.weight")
    inv_freq = None
    for i in range(num_layers):
        s, d = f"layers.{i}.", f"esm.encoder.layer.{i}."
        for a, b in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            take(f"{s}self_attn.{a}.weight", f"{d}attention.self.{b}.weight")
            take(f"{s}self_attn.{a}.bias", f"{d}attention.self.{b}.bias")
        take(f"{s}self_attn.out_proj.weight", f"{d}attention.output.dense.weight")
        take(f"{s}self_attn.out_proj.bias", f"{d}attention.output.dense.bias")
        take(f"{s}self_attn_layer_norm.weight", f"{d}attention.LayerNorm.weight")
        take(f"{s}self_attn_layer_norm.bias", f"{d}attention.LayerNorm.bias")
        take(f"{s}fc1.weight", f"{d}intermediate.dense.weight")
        take(f"{s}fc1.bias", f"{d}intermediate.dense.bias")
        take(f"{s}fc2.weight", f"{d}output.dense.weight")
        take(f"{s}fc2.bias", f"{d}output.dense.bias")
        take(f"{s}final_layer_norm.weight", f"{d}LayerNorm.weight")
        take(f"{s}final_layer_norm.bias", f"{d}LayerNorm.bias")
        freq = norm.get(f"{s}self_attn.rot_emb.inv_freq")
        if freq is not None:
            if inv_freq is None:
                inv_freq = freq.detach().to(torch.float32)
            elif not torch.equal(inv_freq, freq.to(torch.float32)):
                raise ModelLoadError(f"rotary inv_freq of layer {i} differs from layer 0")
    if inv_freq is None:  # not stored: the fp16-rounded values fair-esm itself trained with
        head_dim = embed_dim // int(heads)
        inv_freq = (1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))).half().float()
        logger.warning("checkpoint has no rotary inv_freq; using fp16-rounded 1/10000^(2i/d)")
    out["esm.rotary_embeddings.inv_freq"] = inv_freq.contiguous()
    take("emb_layer_norm_after.weight", "esm.encoder.emb_layer_norm_after.weight")
    take("emb_layer_norm_after.bias", "esm.encoder.emb_layer_norm_after.bias")
    take("lm_head.dense.weight", "lm_head.dense.weight")
    take("lm_head.dense.bias", "lm_head.dense.bias")
    take("lm_head.layer_norm.weight", "lm_head.layer_norm.weight")
    take("lm_head.layer_norm.bias", "lm_head.layer_norm.bias")
    take("lm_head.bias", "lm_head.bias")
    if "lm_head.weight" in norm and not torch.equal(norm["lm_head.weight"], norm["embed_tokens.weight"]):
        raise ModelLoadError("LM-head weight is not tied to the token embedding (not an ESM-2 checkpoint)")
    out["lm_head.decoder.weight"] = out["esm.embeddings.word_embeddings.weight"]
    if "contact_head.regression.weight" in norm:
        take("contact_head.regression.weight", "esm.contact_head.regression.weight")
        take("contact_head.regression.bias", "esm.contact_head.regression.bias")
        if out["esm.contact_head.regression.weight"].shape != (1, num_layers * int(heads)):
            raise ModelLoadError(
                f"contact regression has shape {tuple(out['esm.contact_head.regression.weight'].shape)}, "
                f"expected (1, {num_layers * int(heads)})"
            )
    return config, out


def regression_path_for(pt_path: str | os.PathLike) -> Path:
    """fair-esm's naming: ``<checkpoint without .pt>-contact-regression.pt`` in the same folder."""
    p = Path(pt_path)
    return p.with_name(p.stem + "-contact-regression.pt")


def read_fair_esm(pt_path: str | os.PathLike) -> tuple["EsmConfig", dict[str, "torch.Tensor"], bool]:
    """A fair-esm ``esm2_*.pt`` and, when present, its :func:`regression_path_for` file, converted
    to the HF layout (:func:`fair_esm_to_hf`).

    Returns:
        ``(config, state_dict, has_contact_regression)``.

    Raises:
        FileNotFoundError: ``pt_path`` does not exist.
        ModelLoadError: not a readable ESM-2 checkpoint.
    """
    pt_path = Path(pt_path)
    if not pt_path.is_file():
        raise FileNotFoundError(2, "No such file", str(pt_path))
    reg = regression_path_for(pt_path)
    model_data = load_fair_esm_checkpoint(pt_path)
    reg_data = load_fair_esm_checkpoint(reg) if reg.is_file() else None
    config, state = fair_esm_to_hf(model_data, reg_data)
    return config, state, reg_data is not None


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert a fair-esm ``esm2_*.pt`` (+ its ``-contact-regression.pt`` if present) into a Hugging
    Face model directory at ``dst`` (``config.json`` + ``model.safetensors``), loadable with
    ``EsmForMaskedLM.from_pretrained`` and by plmserve from ``<PLMSERVE_MODEL_DIR>/<slug>/``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ModelLoadError: not a readable ESM-2 checkpoint.
    """
    src = Path(src)
    config, state, has_regression = read_fair_esm(src)
    if not has_regression:
        logger.warning("no %s next to %s: the converted model has no contact head",
                       regression_path_for(src).name, src.name)
    build_hf_model(config, state)  # checks that every tensor fits the architecture
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    write_hf_folder(config, state, dst)
    return dst


def write_hf_folder(config: "EsmConfig", state: dict[str, "torch.Tensor"], dst: Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``vocab.txt`` in the layout of the
    ``facebook/esm2_*`` hub repositories (per-layer ``rotary_embeddings.inv_freq`` keys, an explicit
    ``lm_head.decoder.weight``), readable by transformers 4.x and 5.x."""
    from safetensors.torch import save_file

    from .alphabet import ALL_TOKENS

    config.architectures = ["EsmForMaskedLM"]
    config.save_pretrained(dst)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "esm.rotary_embeddings.inv_freq":
            for i in range(config.num_hidden_layers):
                out[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = value.clone()
        else:
            out[key] = value.detach().clone().contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "vocab.txt").write_text("\n".join(ALL_TOKENS) + "\n")


# --------------------------------------------------------------------------------------------
# resolution


@dataclass(frozen=True)
class WeightsLocation:
    """Where a model's weights were found.

    Attributes:
        kind: ``hf-dir`` (HF-format folder), ``hf-hub`` (hub cache/download) or ``fair-esm`` (.pt file).
        path: the folder (hf-dir, hf-hub) or the ``.pt`` file (fair-esm).
    """

    kind: str
    path: Path


def is_hf_dir(path: Path) -> bool:
    """A folder with ``config.json`` and HF weights."""
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in _HF_WEIGHT_FILES)


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def _candidate_dirs(spec: "ModelSpec", settings: Any) -> list[Path]:
    dirs: list[Path] = []
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        md = Path(model_dir).expanduser()
        name = spec.config.get("fair_esm_name")
        dirs.append(md / spec.slug)
        if name:
            dirs.append(md / name)
    return dirs


def _fair_esm_candidates(spec: "ModelSpec", settings: Any) -> list[Path]:
    if not spec.official_files:
        return []
    main = spec.official_files[0]
    places: list[Path] = []
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        md = Path(model_dir).expanduser()
        places += [md / main, md / spec.slug / main]
    places.append(torch_hub_checkpoint_dir() / main)
    return places


def _hub_snapshot(repo: str, *, local_only: bool) -> Path | None:
    """A hub snapshot folder with config + safetensors (or .bin) weights, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    common = ["config.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"]
    for patterns in (common + ["*.safetensors", "*.safetensors.index.json"], common + ["pytorch_model.bin*"]):
        try:
            path = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=local_only))
        except LocalEntryNotFoundError:
            return None
        except Exception as exc:  # network, auth, missing repo ...
            if local_only:
                return None
            raise WeightsNotFoundError(f"downloading {repo} from the Hugging Face hub failed: {exc}") from exc
        if is_hf_dir(path):
            return path
    return None


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``/``HF_HOME``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def locate_weights(
    spec: "ModelSpec", settings: Any, *, explicit: str | os.PathLike | None = None, download: bool = True
) -> WeightsLocation:
    """Find a model's weights (see the module docstring for the order).

    Args:
        spec: the registry entry.
        settings: :class:`plmserve.settings.Settings` (``model_dir``, ``offline``).
        explicit: a folder (HF format) or a fair-esm ``.pt`` file given by the user; searched first.
        download: allow a hub download (still subject to offline mode).

    Raises:
        WeightsNotFoundError: nothing found; the message lists every place searched and how to
            get the weights.
    """
    searched: list[str] = []
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_file() and p.suffix == ".pt":
            return WeightsLocation("fair-esm", p)
        if is_hf_dir(p):
            return WeightsLocation("hf-dir", p)
        searched.append(f"{p} (given explicitly; needs an HF folder or a fair-esm .pt file)")
    for d in _candidate_dirs(spec, settings):
        if is_hf_dir(d):
            return WeightsLocation("hf-dir", d)
        searched.append(f"{d}/ (HF format: config.json + model.safetensors)")
    if not getattr(settings, "model_dir", None):
        searched.append("PLMSERVE_MODEL_DIR is not set (no local model folder searched)")
    offline = hub_offline(settings)
    if spec.hf_repo:
        snap = _hub_snapshot(spec.hf_repo, local_only=True)
        if snap is not None:
            return WeightsLocation("hf-hub", snap)
        searched.append(f"Hugging Face cache {hub_cache_dir()} for {spec.hf_repo}")
    for f in _fair_esm_candidates(spec, settings):
        if f.is_file():
            return WeightsLocation("fair-esm", f)
        searched.append(f"{f} (fair-esm checkpoint)")
    unreachable = None
    if spec.hf_repo and download and not offline:
        unreachable = hub_unreachable()
    if spec.hf_repo and download and not offline and unreachable is None:
        snap = _hub_snapshot(spec.hf_repo, local_only=False)
        if snap is not None:
            return WeightsLocation("hf-hub", snap)
        searched.append(f"Hugging Face hub download of {spec.hf_repo} (no weights in the repository)")
    elif unreachable is not None:
        searched.append(f"Hugging Face hub download of {spec.hf_repo} (not attempted: the hub is unreachable)")
    elif spec.hf_repo:
        searched.append(f"no download from the Hugging Face hub ({'offline mode' if offline else 'download disabled'})")
    network = f"The network is the cause: {unreachable}; {OFFLINE_ADVICE}. " if unreachable else ""
    raise WeightsNotFoundError(
        f"weights for model '{spec.slug}' ({spec.hf_repo or spec.official_files[0]}) were not found. "
        f"Searched: {'; '.join(searched)}. {network}To get them: run `plmserve models pull {spec.slug}` on a "
        f"connected machine and copy the folder it prints to <dir>/{spec.slug}/ here, then set "
        f"PLMSERVE_MODEL_DIR=<dir> (or put {spec.official_files[0] if spec.official_files else 'the checkpoint'} "
        f"in PLMSERVE_MODEL_DIR); or start with --load-format dummy for random weights (smoke tests only)."
    )


def find_local_weights(spec: "ModelSpec", settings: Any) -> WeightsLocation | None:
    """Like :func:`locate_weights` without any network access; None when nothing is on disk."""
    try:
        return locate_weights(spec, settings, download=False)
    except WeightsNotFoundError:
        return None
