"""ESM3 (EvolutionaryScale): own clean-room trunk that loads the official open weights.

Public interface (the sampler, the Forge API and the CLI build on these):

- :func:`load` ``(spec, settings) -> ESM3`` -- what :class:`~plmserve.models.registry.ModelManager`
  calls. Weights: ``settings.model_dir/<slug>/`` or the official ``esm3_sm_open_v1.pth`` in
  ``settings.model_dir``, else the Hugging Face repos of the registry entry (cache only when
  offline); ``load_format="dummy"`` gives random weights of the full architecture.
- :class:`ESM3` -- ``ESM3.from_pretrained(path, device=None, dtype=None)``,
  ``ESM3.dummy(config=None, seed=0)``, ``model(sequence_tokens=..., ...) -> ESM3Output``.
- :class:`ESM3Output` -- ``sequence_logits`` [B,L,64], ``structure_logits`` [B,L,4096],
  ``secondary_structure_logits`` [B,L,11], ``sasa_logits`` [B,L,19], ``function_logits``
  [B,L,8,260], ``residue_logits`` [B,L,1478], ``embeddings`` [B,L,d] (pre-final-norm), fp32.
- :class:`ESM3Config` -- ``open_small()`` (1536/24/256/48) and ``tiny()`` (64/4/4/2).
- :func:`default_inputs`, :func:`default_tokens`, :func:`default_coordinates`,
  :func:`per_residue_plddt_from_coordinates` -- the official default/mock tracks.
- :func:`logits_kwargs_from_wire` -- Forge wire tokens (the JSON ``inputs`` object) -> the
  keyword arguments of ``ESM3.logits`` (:meth:`ProteinTokens.logits_kwargs`)::

      out = model.logits(**logits_kwargs_from_wire({"sequence": [0, 20, 15, 11, 2]}))

- :mod:`plmserve.models.esm3.constants` -- vocabularies, special ids, track names.
"""

from __future__ import annotations

from typing import Any

from plmserve.models.esm3 import constants
from plmserve.models.esm3.model import (
    ESM3,
    ESM3Config,
    ESM3Output,
    default_coordinates,
    default_inputs,
    default_tokens,
    per_residue_plddt_from_coordinates,
)
from plmserve.models.esm3.sampler import ProteinTokens, logits_kwargs_from_wire

__all__ = [
    "ESM3",
    "ESM3Config",
    "ESM3Output",
    "ProteinTokens",
    "constants",
    "default_coordinates",
    "default_inputs",
    "default_tokens",
    "load",
    "logits_kwargs_from_wire",
    "per_residue_plddt_from_coordinates",
]


def load(spec: Any, settings: Any) -> ESM3:
    """Build the ESM3 model of a registry entry (called by ``ModelManager.get``).

    See :func:`plmserve.models.esm3.loader.load_esm3` for the search order and errors.
    """
    from plmserve.models.esm3.loader import load_esm3

    return load_esm3(spec, settings)
