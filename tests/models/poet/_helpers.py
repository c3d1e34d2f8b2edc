"""Shared helpers of the PoET tests: fixture files and a cached fixture model."""

from __future__ import annotations

import functools
import json

from tests.conftest import shared_path


def fixture_file(name: str):
    return shared_path("fixtures", "poet", name)


@functools.lru_cache(maxsize=None)
def fixture_json(name: str) -> dict:
    return json.loads(fixture_file(name).read_text())


@functools.lru_cache(maxsize=None)
def fixture_model(name: str = "model.ckpt"):
    from plmserve.models.poet import PoET

    return PoET.from_checkpoint(fixture_file(name))


def loglik_close(got, ref) -> bool:
    """The fixture README's tolerance for log-likelihoods: |x - ref| <= 1e-3 + 2e-6 |ref|."""
    import numpy as np

    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    return bool(np.all(np.abs(got - ref) <= 1e-3 + 2e-6 * np.abs(ref)))
