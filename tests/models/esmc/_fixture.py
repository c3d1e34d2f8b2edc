"""The shared ESM C tiny fixture (official ``esm`` 3.2.1 outputs; see its README)."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np

from tests.conftest import shared_path

ATOL, RTOL = 1e-4, 1e-5  # fixture README: logits / embeddings / batch (fp32)
HIDDEN_ATOL = 2e-4  # fixture README: hidden states (values up to ~46)


def fixture_path(*parts: str):
    return shared_path("fixtures", "esmc", *parts)


@lru_cache(maxsize=1)
def inputs() -> dict:
    return json.loads(fixture_path("inputs.json").read_text())


@lru_cache(maxsize=1)
def expected() -> dict[str, np.ndarray]:
    with np.load(fixture_path("expected.npz")) as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=2)
def engine(layout: str = "official"):
    """The fixture model through plmserve's engine (``official`` .pth or ``hf`` folder), fp32 CPU."""
    from plmserve.models.esmc.engine import ESMCEngine

    if layout == "hf":
        return ESMCEngine.from_pretrained(str(fixture_path("hf")), slug="esmc-300m", device="cpu")
    return ESMCEngine.from_official(fixture_path("model.pth"), slug="esmc-300m", device="cpu")


def close(got, want, atol=ATOL, rtol=RTOL) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= atol + rtol * np.abs(want)))
