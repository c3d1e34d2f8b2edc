"""``create_app`` wires every contract and never skips one silently (issue 12 item 9)."""

from __future__ import annotations

import pytest

from plmserve.api import app as app_module
from plmserve.api.app import CONTRACTS, create_app
from plmserve.settings import Settings


def test_every_contract_has_routes(tmp_path):
    paths = set(create_app(Settings(data_dir=tmp_path, api_keys=["k"])).openapi()["paths"])
    assert set(CONTRACTS) == {"biolm", "forge", "openprotein"}
    assert "/api/v2/{slug}/encode/" in paths  # BioLM ESM-2
    assert "/api/v1/generate_tensor" in paths  # Forge ESM3
    assert "/api/v1/poet/score" in paths  # OpenProtein PoET jobs


def test_a_missing_contract_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "CONTRACTS", (*CONTRACTS, "no_such_contract"))
    with pytest.raises(ModuleNotFoundError, match="no_such_contract"):
        create_app(Settings(data_dir=tmp_path, api_keys=["k"]))
