"""Shared test helpers. Fixtures and data in ``tests/data`` are located through :func:`shared_path`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datafiles import REPO_ROOT, shared_dir, shared_path  # noqa: F401 (re-exported)


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def _isolated_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plmserve-data")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, _isolated_data_dir):
    """Tests never reach the network for weights, and never read or write the user's data folder
    (``~/.local/share/plmserve``) nor one set in the shell: ``PLMSERVE_DATA_DIR`` is a temporary folder
    (a test that needs another one sets it itself)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(_isolated_data_dir))


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
