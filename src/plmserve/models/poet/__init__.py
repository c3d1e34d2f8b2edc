"""PoET (Truong & Bepler, NeurIPS 2023) in pure PyTorch: the official checkpoint on CPU and GPU.

Public API (plain Python, usable from a notebook)::

    load(spec, settings) -> PoET            # what ModelManager calls
    convert(src, dst) -> None               # official .ckpt <-> .safetensors
    PoET.from_checkpoint(path, device=None, dtype=None); PoET.dummy(d_model, n_layers, seed=0)
    PoET.embed(prompt, reverse=False) -> PromptCache
    PoET.score(prompt, sequences, *, reverse=True, progress=None) -> ndarray
    PoET.single_site(prompt, sequence, *, reverse=True, progress=None) -> [(code, score)]
    PoET.generate(prompt, n, *, temperature, top_k, top_p, max_length, seed, progress) -> [(seq, ll)]
    ensemble_mean(scores) -> ndarray; score_py_ensemble(...) (``plmserve.models.poet.ensemble``)

Weights: the official ``poet.ckpt`` (Zenodo record 10061322, licence CC BY-NC-SA 4.0,
non-commercial). See ``docs/poet-engine.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plmserve.errors import InvalidParameterError, WeightsNotFoundError
from .checkpoint import read_weights, save_official_checkpoint, save_safetensors
from .engine import PoET, PromptCache, ensemble_mean, top_k_top_p_filter
from .model import PoETConfig, PoETModel

__all__ = [
    "PoET",
    "PoETConfig",
    "PoETModel",
    "PromptCache",
    "candidate_paths",
    "convert",
    "ensemble_mean",
    "load",
    "top_k_top_p_filter",
]

_WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt")


def candidate_paths(spec: Any, settings: Any) -> list[Path]:
    """Every file :func:`load` looks at, in order, for ``spec`` under ``settings.model_dir``:
    ``<dir>/<file>``, ``<dir>/<slug>/<file>`` for each official file name (``poet.ckpt``), then the
    same names with ``.safetensors``, then ``<dir>/<slug>/`` itself if it holds exactly one
    weights file."""
    model_dir = getattr(settings, "model_dir", None)
    if model_dir is None:
        return []
    root = Path(model_dir).expanduser()
    names = list(getattr(spec, "official_files", ()) or ("poet.ckpt",))
    names += [Path(n).with_suffix(".safetensors").name for n in names]
    out: list[Path] = []
    for name in names:
        out += [root / name, root / spec.slug / name]
    slug_dir = root / spec.slug
    if slug_dir.is_dir():
        found = sorted(p for p in slug_dir.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
        if len(found) == 1:
            out.append(found[0])
    return list(dict.fromkeys(out))


def load(spec: Any, settings: Any) -> PoET:
    """Build the PoET model for ``spec`` (a :class:`plmserve.models.registry.ModelSpec`).

    ``settings.load_format == "dummy"``: the full-size architecture (``spec.config`` may override
    ``hidden_dim``/``num_layers``) with random weights, flagged ``is_dummy``. Otherwise the first
    existing file of :func:`candidate_paths`. Device/dtype from ``settings.device`` /
    ``settings.dtype`` (``auto``: CUDA if present; float32 on CPU, bfloat16 on CUDA).

    Raises:
        WeightsNotFoundError: no weights file; the message lists the places searched and how to
            download the official checkpoint (and its licence).
        ModelLoadError: the file is not a PoET checkpoint or does not match its hyperparameters.
    """
    device = getattr(settings, "device", "auto")
    dtype = getattr(settings, "dtype", "auto")
    if getattr(settings, "load_format", "auto") == "dummy":
        cfg = dict(getattr(spec, "config", {}) or {})
        return PoET.dummy(
            d_model=int(cfg.get("hidden_dim", 1024)),
            n_layers=int(cfg.get("num_layers", 12)),
            n_heads=int(cfg.get("nhead", 16)) if "nhead" in cfg else None,
            device=device,
            dtype=dtype,
        )
    searched = candidate_paths(spec, settings)
    for path in searched:
        if path.is_file():
            return PoET.from_checkpoint(path, device=device, dtype=dtype)
    where = ", ".join(str(p) for p in searched) or "nowhere (PLMSERVE_MODEL_DIR is not set)"
    url = getattr(spec, "download_url", None) or "https://zenodo.org/records/10061322"
    licence = getattr(spec, "licence", None) or "CC BY-NC-SA 4.0"
    raise WeightsNotFoundError(
        f"PoET weights for '{spec.slug}' not found; searched: {where}. Download the official "
        f"checkpoint from {url} (licence: {licence}) and put it at <PLMSERVE_MODEL_DIR>/poet.ckpt, "
        f"or start with PLMSERVE_LOAD_FORMAT=dummy for random weights."
    )


def convert(src: Path | str, dst: Path | str) -> None:
    """Convert PoET weights between the official checkpoint layout and safetensors.

    The direction follows ``dst``'s suffix: ``.safetensors`` writes the module state dict plus the
    constructor arguments (metadata ``poet_init_args``); anything else (``.ckpt``) writes the
    official layout with plain dicts (``torch.load(weights_only=True)`` can read it). Tensors keep
    their stored dtype.

    Raises:
        FileNotFoundError: ``src`` missing. ModelLoadError: ``src`` is not PoET weights.
        InvalidParameterError: ``src`` and ``dst`` are the same file.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InvalidParameterError(f"source and destination are the same file: {src}")
    state, cfg = read_weights(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix == ".safetensors":
        save_safetensors(state, cfg, dst)
    else:
        save_official_checkpoint(state, cfg, dst)
