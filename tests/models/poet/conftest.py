"""PoET test settings: the fixture model is tiny, so one intra-op thread is fastest (several
threads on a busy machine spin-wait and slow tiny matmuls down by orders of magnitude)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every PoET test module runs with one torch thread (see ``tests/conftest.py``)."""
    yield
