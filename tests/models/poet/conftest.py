"""PoET test settings: the fixture model is tiny, so one intra-op thread is fastest (several
threads on a busy machine spin-wait and slow tiny matmuls down by orders of magnitude)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
