"""ESM-2 (Lin et al. 2023) on Hugging Face ``transformers``: the engine behind BioLM-style
``encode`` / ``predict`` / ``log_prob`` and masked-marginal variant scoring.

``load(spec, settings)`` is what :class:`plmserve.models.registry.ModelManager` calls. Heavy imports
(torch, transformers) happen lazily, so importing this package is cheap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from plmserve.models.registry import ModelSpec
    from plmserve.settings import Settings

    from .engine import ESM2Engine

logger = logging.getLogger(__name__)

__all__ = ["ESM2Engine", "load", "convert", "locate_weights", "find_local_weights"]


def load(spec: "ModelSpec", settings: "Settings", *, path: str | None = None) -> "ESM2Engine":
    """Build the engine for a registry entry.

    ``settings.load_format == "dummy"``: the real architecture (from ``spec.config``) with random
    weights, with a WARNING in the log. Otherwise weights are resolved by
    :func:`plmserve.models.esm2.weights.locate_weights` (local HF folder, hub cache, fair-esm
    checkpoint, hub download unless offline); ``path`` is an explicit folder or ``.pt`` file.

    Raises:
        WeightsNotFoundError: no weights anywhere (the message lists the places searched).
        ModelLoadError: weights found but unusable.
    """
    from plmserve.models.engine_common import engine_kwargs

    from .engine import ESM2Engine
    from .weights import locate_weights

    kw = engine_kwargs(spec, settings)
    if getattr(settings, "load_format", "auto") == "dummy":
        return ESM2Engine.dummy(spec, seed=0, **kw)
    where = locate_weights(spec, settings, explicit=path)
    logger.info("loading %s from %s (%s)", spec.slug, where.path, where.kind)
    if where.kind == "fair-esm":
        engine = ESM2Engine.from_fair_esm(where.path, **kw)
    else:
        engine = ESM2Engine.from_pretrained(str(where.path), load_format=where.kind, **kw)
    want = (spec.config.get("num_layers"), spec.config.get("embed_dim"))
    if None not in want and want != (engine.num_layers, engine.embed_dim):
        logger.warning(
            "%s: the weights in %s have %d layers x %d wide, the registry says %d x %d",
            spec.slug, where.path, engine.num_layers, engine.embed_dim, *want,
        )
    return engine


def convert(src, dst):
    """Convert a fair-esm ``esm2_*.pt`` checkpoint into an HF folder (see :func:`weights.convert`)."""
    from .weights import convert as _convert

    return _convert(src, dst)


def locate_weights(spec, settings, **kw):
    """See :func:`plmserve.models.esm2.weights.locate_weights`."""
    from .weights import locate_weights as _locate

    return _locate(spec, settings, **kw)


def find_local_weights(spec, settings):
    """See :func:`plmserve.models.esm2.weights.find_local_weights`."""
    from .weights import find_local_weights as _find

    return _find(spec, settings)


def __getattr__(name: str):
    if name == "ESM2Engine":
        from .engine import ESM2Engine

        return ESM2Engine
    if name in ("alphabet", "engine", "weights"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
