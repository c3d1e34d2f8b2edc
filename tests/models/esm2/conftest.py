"""Shared fixtures of the ESM-2 engine tests: the fair-esm tiny reference model and its outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import shared_path


@pytest.fixture(scope="session")
def fixture_dir():
    return shared_path("fixtures", "esm2")


@pytest.fixture(scope="session")
def tiny_engine(fixture_dir):
    """The fixture's fair-esm checkpoint, loaded through the user-facing conversion."""
    from plmserve.models.esm2 import ESM2Engine

    return ESM2Engine.from_fair_esm(fixture_dir / "esm2_tiny.pt", slug="esm2-tiny")


@pytest.fixture(scope="session")
def expected(fixture_dir):
    with np.load(fixture_dir / "expected.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def inputs(fixture_dir):
    return json.loads((fixture_dir / "inputs.json").read_text())


@pytest.fixture(scope="session")
def biolm_expected(fixture_dir):
    return json.loads((fixture_dir / "biolm_expected.json").read_text())


def assert_close(actual, expected, *, atol, rtol=0.0, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    assert (err <= 0).all(), f"{what}: max excess {err.max():.3g} (max abs diff {np.abs(actual - expected).max():.3g})"
