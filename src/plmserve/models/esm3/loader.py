"""Where ESM3 weights come from, and building the model for a registry entry.

Search order of :func:`locate_weights` (first hit wins):

1. ``<PLMSERVE_MODEL_DIR>/<slug>/`` or ``<PLMSERVE_MODEL_DIR>/<alias>/`` holding
   ``esm3_sm_open_v1.pth`` (or the hub snapshot layout ``data/weights/esm3_sm_open_v1.pth``, or one
   ``*.pth``), optionally with a ``config.json`` (``d_model``, ``n_heads``, ``v_heads``, ``n_layers``);
2. the official file in ``<PLMSERVE_MODEL_DIR>`` itself (``esm3_sm_open_v1.pth`` or
   ``data/weights/esm3_sm_open_v1.pth``);
3. the Hugging Face hub cache of the registry's repos (``EvolutionaryScale/esm3-sm-open-v1``, then
   ``biohub/esm3-sm-open-v1``), file ``data/weights/esm3_sm_open_v1.pth``;
4. a download from those repos, unless offline (``PLMSERVE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or
   the hub is unreachable (one fast check, :func:`plmserve.models.hub.hub_unreachable`: no retries).
   The EvolutionaryScale repo is gated: accept the licence on its hub page and export ``HF_TOKEN``.

Nothing found: one :class:`~plmserve.errors.WeightsNotFoundError` that lists every place searched
and how to get the weights. ``load_format="dummy"`` skips all of this and builds random weights.

Device/dtype: ``settings.device`` ``auto`` = CUDA when available, else CPU; ``settings.dtype``
``auto`` = bfloat16 on CUDA (as the official code), float32 on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from plmserve.errors import InvalidParameterError, WeightsNotFoundError
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.model import ESM3, ESM3Config, find_weights_file
from plmserve.models.hub import OFFLINE_ADVICE, hub_offline, hub_unreachable

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(name: str | None) -> torch.device:
    """``auto``/None -> ``cuda`` when available else ``cpu``; otherwise ``torch.device(name)``.

    Raises:
        InvalidParameterError: an unknown device name, or CUDA asked for but not available.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidParameterError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device '{name}' requested but CUDA is not available")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto``/None -> bfloat16 on CUDA (official), float32 elsewhere; or a named dtype.

    Raises:
        InvalidParameterError: an unknown dtype name.
    """
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise InvalidParameterError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16") from None


def _offline(settings: Any) -> bool:
    return hub_offline(settings)


def _hub_repos(spec: Any) -> list[str]:
    repos = [spec.hf_repo] if spec.hf_repo else []
    repos += list(spec.config.get("alt_hf_repos", ()))
    return repos


def _weights_file_name(spec: Any) -> str:
    return spec.official_files[0] if spec.official_files else C.ESM3_OPEN_WEIGHTS_FILE


def locate_weights(spec: Any, settings: Any) -> Path:
    """Find the weights of ``spec`` (search order in the module docstring).

    Returns:
        path of the ``.pth`` state dict.

    Raises:
        WeightsNotFoundError: nothing found; the message lists every place searched, the reason
            each hub repo failed (gated, offline, not cached, network) and how to get the weights.
    """
    searched: list[str] = []
    file_name = _weights_file_name(spec)
    model_dir = getattr(settings, "model_dir", None)
    if model_dir:
        model_dir = Path(model_dir).expanduser()
        names = (spec.slug, *spec.aliases)
        searched.append(
            f"{model_dir}/{{{','.join(names)}}}/ ({file_name}, data/weights/{file_name} or one *.pth)"
        )
        for name in names:
            sub = model_dir / name
            if sub.is_dir():
                try:
                    return find_weights_file(sub)
                except WeightsNotFoundError:
                    pass
        for cand in (model_dir / file_name, model_dir / "data" / "weights" / file_name):
            searched.append(str(cand))
            if cand.is_file():
                return cand
    else:
        searched.append("PLMSERVE_MODEL_DIR (not set)")

    repo_path = f"data/weights/{file_name}"
    offline = _offline(settings)
    reasons: list[str] = []
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        hf_hub_download = None  # type: ignore[assignment]
    if hf_hub_download is not None:
        for repo in _hub_repos(spec):
            searched.append(f"Hugging Face cache of {repo} ({repo_path})")
            try:
                return Path(hf_hub_download(repo, repo_path, local_files_only=True))
            except Exception:  # not cached (LocalEntryNotFoundError and friends)
                pass
        unreachable = None if offline else hub_unreachable()
        if offline:
            reasons.append("offline (PLMSERVE_OFFLINE/HF_HUB_OFFLINE set): the hub was not contacted")
        elif unreachable is not None:
            searched.append("no download (the hub is unreachable)")
            reasons.append(f"the network is the cause: {unreachable}; {OFFLINE_ADVICE}")
        else:
            for repo in _hub_repos(spec):
                searched.append(f"download from https://huggingface.co/{repo}")
                try:
                    logger.info("downloading %s from %s", repo_path, repo)
                    return Path(hf_hub_download(repo, repo_path))
                except GatedRepoError:
                    reasons.append(
                        f"{repo} is gated: accept the licence at https://huggingface.co/{repo} with your "
                        "account, then export HF_TOKEN=<your token> (or run `huggingface-cli login`)"
                    )
                except RepositoryNotFoundError:
                    reasons.append(
                        f"{repo} not found or not visible without a token: if it is gated, accept the licence "
                        f"at https://huggingface.co/{repo} and export HF_TOKEN"
                    )
                except LocalEntryNotFoundError as exc:
                    reasons.append(f"{repo}: the hub could not be reached ({_first_line(exc)})")
                except Exception as exc:  # network errors, 5xx, disk full ...
                    reasons.append(f"{repo}: {type(exc).__name__}: {_first_line(exc)}")

    where = f"{model_dir}/{spec.slug}/" if model_dir else f"$PLMSERVE_MODEL_DIR/{spec.slug}/"
    lines = [
        f"weights of model '{spec.slug}' not found.",
        "Searched: " + "; ".join(searched) + ".",
    ]
    if reasons:
        lines.append("Hub: " + "; ".join(reasons) + ".")
    lines.append(
        f"To fix: download {repo_path} from https://huggingface.co/{_hub_repos(spec)[0] if _hub_repos(spec) else '?'} "
        f"(licence: {spec.licence or 'see the hub page'}; gated: accept it and set HF_TOKEN) and put "
        f"{file_name} into {where}, or set PLMSERVE_MODEL_DIR; use --load-format dummy for random weights."
    )
    raise WeightsNotFoundError(" ".join(lines))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def spec_config(spec: Any) -> ESM3Config:
    """Architecture of a registry entry: ``esm3_sm_open_v1`` unless ``spec.config`` overrides
    ``d_model``/``n_heads``/``v_heads``/``n_layers`` (e.g. a reduced trunk for benchmarks)."""
    base = ESM3Config.open_small().to_dict()
    base.update({k: v for k, v in spec.config.items() if k in base})
    return ESM3Config.from_dict(base)


def load_esm3(spec: Any, settings: Any) -> ESM3:
    """Build the model of a registry entry on ``settings.device`` in ``settings.dtype``.

    ``settings.load_format == "dummy"``: the architecture of :func:`spec_config` with random
    weights (seed 0), flagged ``is_dummy``. Otherwise the weights found by :func:`locate_weights`,
    loaded strictly.

    Raises:
        WeightsNotFoundError: no weights (503 over HTTP; the message says how to get them).
        ModelLoadError: the file does not fit the architecture.
        InvalidParameterError: bad device/dtype settings.
    """
    device = resolve_device(getattr(settings, "device", "auto"))
    dtype = resolve_dtype(getattr(settings, "dtype", "auto"), device)
    if getattr(settings, "load_format", "auto") == "dummy":
        model = ESM3.dummy(spec_config(spec), seed=0, device=device, dtype=dtype)
        model.name = f"{spec.slug} (dummy weights)"
        logger.warning("%s: random (dummy) weights -- outputs are meaningless", spec.slug,
                       extra={"plmserve_dummy": True})  # the CLI prints its own warning instead
        return model
    path = locate_weights(spec, settings)
    config = None
    if any(k in spec.config for k in ("d_model", "n_heads", "v_heads", "n_layers")):
        config = spec_config(spec)
    logger.info("loading %s from %s (%s, %s)", spec.slug, path, device, dtype)
    model = ESM3.from_pretrained(path, device=device, dtype=dtype, config=config)
    model.name = spec.slug
    return model
