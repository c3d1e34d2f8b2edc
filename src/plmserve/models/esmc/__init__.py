"""ESM C (ESM Cambrian, EvolutionaryScale 2024): the engine behind BioLM-style ``encode`` /
``predict`` / ``log_prob``, Forge ``encode`` / ``logits`` / ``decode`` and variant scoring.

``load(spec, settings)`` is what :class:`plmserve.models.registry.ModelManager` calls; heavy
imports happen lazily. Weights: the official ``esmc_*_2024_12_v0.pth``, a transformers folder or
hub id (``biohub/ESMC-300M``), or ``--load-format dummy`` (see :mod:`.weights`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from plmserve.models.registry import ModelSpec
    from plmserve.settings import Settings

    from .engine import ESMCEngine

logger = logging.getLogger(__name__)

__all__ = ["ESMCEngine", "load", "convert", "locate_weights"]


def load(spec: "ModelSpec", settings: "Settings", *, path: str | None = None) -> "ESMCEngine":
    """Build the engine of a registry entry.

    ``settings.load_format == "dummy"``: the real architecture (``spec.config``) with random
    weights and a WARNING. Otherwise :func:`plmserve.models.esmc.weights.locate_weights`; ``path``
    is an explicit ``.pth`` file or transformers folder.

    Raises:
        WeightsNotFoundError: nothing found (the message lists the places searched).
        ModelLoadError: weights found but unusable.
    """
    from plmserve.models.engine_common import engine_kwargs

    from .engine import ESMCEngine
    from .weights import locate_weights

    kw = engine_kwargs(spec, settings)
    if getattr(settings, "load_format", "auto") == "dummy":
        return ESMCEngine.dummy(spec, seed=0, **kw)
    where = locate_weights(spec, settings, explicit=path)
    logger.info("loading %s from %s (%s)", spec.slug, where.path, where.kind)
    if where.kind == "official":
        return ESMCEngine.from_official(where.path, n_heads=None, **kw)
    return ESMCEngine.from_pretrained(str(where.path), load_format=where.kind, **kw)


def convert(src, dst):
    """Convert an official ``esmc_*.pth`` into a transformers folder (see :func:`weights.convert`)."""
    from .weights import convert as _convert

    return _convert(src, dst)


def locate_weights(spec, settings, **kw):
    """See :func:`plmserve.models.esmc.weights.locate_weights`."""
    from .weights import locate_weights as _locate

    return _locate(spec, settings, **kw)


def __getattr__(name: str):
    if name == "ESMCEngine":
        from .engine import ESMCEngine

        return ESMCEngine
    if name in ("alphabet", "engine", "weights"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
