"""Helpers for the ESM3 reference fixtures in ``tests/data/fixtures/esm3`` (usable by every ESM3 test).

- :func:`fixture_dir`: the folder (``model.pth`` + ``config.json`` in the official format).
- :func:`tiny_model`: the official tiny model loaded through ``ESM3.from_pretrained`` (cached).
- :func:`cases`: ``inputs.json`` (a list of ``{name, inputs, ...}``, inputs in Forge wire format).
- :func:`wire_to_forward_kwargs`: the kwargs the official ``ESM3.logits`` passes to ``forward``
  for a wire-format Tokens object (null tracks -> None, coordinates null -> NaN,
  ``per_res_plddt`` = any-atom-finite, ``average_plddt`` = 1.0).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmserve.models.esm3 import ESM3, per_residue_plddt_from_coordinates
from tests.conftest import shared_path

WIRE_TO_KWARG = {
    "sequence": "sequence_tokens",
    "structure": "structure_tokens",
    "secondary_structure": "ss8_tokens",
    "sasa": "sasa_tokens",
    "function": "function_tokens",
    "residue_annotation": "residue_annotation_tokens",
}


def fixture_dir() -> Path:
    return shared_path("fixtures", "esm3")


@functools.lru_cache(maxsize=1)
def tiny_model() -> ESM3:
    return ESM3.from_pretrained(fixture_dir())


@functools.lru_cache(maxsize=1)
def cases() -> list[dict[str, Any]]:
    return json.loads((fixture_dir() / "inputs.json").read_text())


def case(name: str) -> dict[str, Any]:
    return next(c for c in cases() if c["name"] == name)


@functools.lru_cache(maxsize=1)
def expected_logits() -> dict[str, np.ndarray]:
    with np.load(fixture_dir() / "expected_logits.npz") as z:
        return {k: z[k] for k in z.files}


def wire_coordinates(coords: list) -> torch.Tensor:
    """[N][37][3] with null -> float32 tensor [N, 37, 3] with NaN."""
    arr = np.array(
        [[[np.nan if v is None else v for v in atom] for atom in row] for row in coords], dtype=np.float32
    )
    return torch.from_numpy(arr)


def wire_to_forward_kwargs(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Batch-1 forward kwargs of a wire Tokens object, as the official ``ESM3.logits`` builds them."""
    kw: dict[str, torch.Tensor] = {}
    for wire, name in WIRE_TO_KWARG.items():
        if inputs.get(wire) is not None:
            kw[name] = torch.tensor(inputs[wire], dtype=torch.long)[None]
    n = len(next(v for v in inputs.values() if v is not None))
    if inputs.get("coordinates") is not None:
        coords = wire_coordinates(inputs["coordinates"])[None]
        kw["structure_coords"] = coords
        kw["per_res_plddt"] = per_residue_plddt_from_coordinates(coords)
    else:
        kw["per_res_plddt"] = torch.zeros(1, n)
    kw["average_plddt"] = torch.tensor(1.0)
    return kw
