"""Finding and loading the model behind ``plmserve variants score -m NAME``.

Names are registry slugs or aliases (``esm2-650m``, ``esmc-300m``, ``poet``,
``esm3-open-2024-03``), or a family name (``esm3``, ``esm2``, ``esmc``) meaning the family's
first registered model. Weights are found as the server finds them (``ModelManager``:
``--model-dir``, the hub cache, official files), or taken from an explicit ``--checkpoint``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmserve.errors import InvalidParameterError, ModelNotFoundError


@dataclass
class LoadedModel:
    """A model ready to score variants.

    Attributes:
        spec: the registry entry (:class:`plmserve.models.registry.ModelSpec`).
        model: the engine (ESM2Engine, the ESM C engine, ESM3, PoET).
        source: where the weights came from (path, hub repo or ``dummy``).
        is_dummy: random weights (``--load-format dummy``): scores are meaningless.
    """

    spec: Any
    model: Any
    source: str
    is_dummy: bool

    @property
    def family(self) -> str:
        return self.spec.family


def resolve_spec(name: str) -> Any:
    """The registry entry for a slug, alias or family name.

    Raises:
        ModelNotFoundError: unknown name (lists the known slugs).
    """
    from plmserve.models.registry import get_spec, list_models

    try:
        return get_spec(name)
    except ModelNotFoundError:
        family = list_models(name.strip().lower())
        if family:
            return family[0]
        raise


def load_scoring_model(name: str, *, checkpoint: Path | None = None, load_format: str | None = None,
                       model_dir: Path | None = None, device: str | None = None,
                       dtype: str | None = None) -> LoadedModel:
    """Load ``name`` for variant scoring.

    Args:
        checkpoint: explicit weights: a fair-esm ``.pt`` or HF folder (ESM-2), ``poet.ckpt`` or
            ``.safetensors`` (PoET), a ``.pth`` file or folder (ESM3); for other families the
            family's ``load(spec, settings, path=...)`` when it accepts ``path``.
        load_format: ``auto`` or ``dummy`` (random weights).

    Raises:
        ModelNotFoundError, WeightsNotFoundError, ModelLoadError, InvalidParameterError.
    """
    from plmserve.settings import get_settings

    if load_format is not None and load_format not in ("auto", "dummy"):
        raise InvalidParameterError(f"--load-format must be 'auto' or 'dummy', not '{load_format}'")
    spec = resolve_spec(name)
    settings = get_settings(load_format=load_format, model_dir=model_dir, device=device, dtype=dtype)
    if checkpoint is None:
        from plmserve.models.registry import ModelManager

        model = ModelManager(settings).get(spec.slug)
    else:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise FileNotFoundError(2, "No such file or directory", str(checkpoint))
        model = _load_checkpoint(spec, settings, checkpoint)
    is_dummy = bool(getattr(model, "is_dummy", False)) or getattr(model, "load_format", None) == "dummy" \
        or settings.load_format == "dummy"
    source = "dummy" if is_dummy else str(getattr(model, "source", None) or checkpoint or spec.hf_repo or spec.slug)
    return LoadedModel(spec=spec, model=model, source=source, is_dummy=is_dummy)


def _load_checkpoint(spec: Any, settings: Any, path: Path) -> Any:
    if spec.family == "poet":
        from plmserve.models.poet import PoET

        return PoET.from_checkpoint(path, device=settings.device, dtype=settings.dtype)
    if spec.family == "esm3":
        import torch

        from plmserve.models.esm3 import ESM3

        device = None if settings.device in (None, "auto") else settings.device
        if device is None and torch.cuda.is_available():
            device = "cuda"
        return ESM3.from_pretrained(path, device=device)
    family = importlib.import_module(f"plmserve.models.{spec.family}")
    if "path" in inspect.signature(family.load).parameters:
        return family.load(spec, settings, path=str(path))
    raise InvalidParameterError(f"--checkpoint is not supported for {spec.family} models; use --model-dir")
