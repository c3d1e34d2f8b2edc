"""The model registry: names and aliases, and the memory guard of :class:`ModelManager`."""

from __future__ import annotations

import pytest

from plmserve.errors import ModelLoadError, ModelNotFoundError
from plmserve.models import registry
from plmserve.models.registry import ModelManager, estimated_bytes, get_spec
from plmserve.settings import Settings


def test_aliases_resolve_case_insensitively():
    assert get_spec("ESM2_T33_650M_UR50D").slug == "esm2-650m"
    assert get_spec("esm3_sm_open_v1").slug == "esm3-open-2024-03"
    with pytest.raises(ModelNotFoundError, match="known models"):
        get_spec("esm2-650m", family="poet")


def test_estimate_orders_the_esm2_sizes():
    sizes = [estimated_bytes(get_spec(s)) for s in ("esm2-8m", "esm2-650m", "esm2-15b")]
    assert sizes[0] < sizes[1] < sizes[2]
    assert 50 * 2**30 < sizes[2] < 70 * 2**30  # 15B parameters in fp32
    assert estimated_bytes(get_spec("poet")) is None


def test_manager_refuses_a_model_larger_than_the_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_available_memory_bytes", lambda: 8 * 2**30)
    manager = ModelManager(Settings(load_format="dummy", device="cpu", data_dir=tmp_path))
    with pytest.raises(ModelLoadError, match=r"esm2-15b.*GiB.*8\.0 GiB is available"):
        manager.get("esm2-15b")
    assert manager.loaded() == []
    assert manager.get("esm2-8m").num_layers == 6  # small models still load
