"""Shared test helpers. Fixtures from ``../shared`` are located through :func:`shared_path`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The shared folder: ``$PLMSERVE_SHARED_DIR`` or ``../shared`` next to the repository root."""
    env = os.environ.get("PLMSERVE_SHARED_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared"
    if not path.is_dir():
        raise RuntimeError(f"shared folder not found at {path} (set PLMSERVE_SHARED_DIR)")
    return path


def shared_path(*parts: str) -> Path:
    """Path of a file under the shared folder, e.g. ``shared_path("fixtures", "esm2", "esm2_tiny.pt")``."""
    return shared_dir().joinpath(*parts)


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """Tests never reach the network for weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny models' small ops thrash with 2 OpenMP threads on a
    busy 2-core machine. Results are unchanged. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
