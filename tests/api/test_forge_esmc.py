"""Forge routes for ESM C and ESMProtein prompts (TestClient): encode, decode, ESM C logits (JSON
and the SDK's bytes form) against the official ``esm`` 3.2.1 fixture, ESM3 ``generate``."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import zstandard
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings
from tests.models.esm3.test_generate_fixtures import load_fixture_model
from tests.models.esmc._fixture import HIDDEN_ATOL, close, engine, expected, inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUTH = {"Authorization": "Bearer test-key"}
NULL_TRACKS = {"secondary_structure": None, "sasa": None, "coordinates": None}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(api_keys=["test-key"], device="cpu", data_dir=tmp_path_factory.mktemp("data"))
    models = ModelManager(settings)
    models.put("esmc-300m", engine("official"))
    models.put("esm3-open-2024-03", load_fixture_model())
    with TestClient(create_app(settings, models)) as c:
        yield c


def post(client, endpoint, body, headers=None):
    return client.post(f"/api/v1/{endpoint}", json={**body, "potential_sequence_of_concern": False},
                       headers={**AUTH, **(headers or {})})


def test_encode_and_decode_esmc(client):
    for s, ids in inputs()["tokenizer_examples"].items():
        r = post(client, "encode", {"model": "esmc-300m-2024-12", "inputs": {"sequence": s}})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["outputs"]["sequence"] == ids
        assert out["outputs"]["structure"] is None and out["outputs"]["residue_annotation"] is None
        assert out["potential_sequence_of_concern"] is False
    # the ESM3 client's body: every track key, null
    r = post(client, "encode", {"model": "esmc-300m-2024-12", "inputs": {"sequence": "MKTA", **NULL_TRACKS}})
    assert r.json()["outputs"]["sequence"] == [0, 20, 15, 11, 5, 2]
    r = post(client, "decode", {"model": "esmc-300m-2024-12", "inputs": {"sequence": [0, 20, 15, 32, 5, 2, 1]}})
    assert r.status_code == 200 and r.json()["outputs"]["sequence"] == "MK_A"
    assert set(r.json()["outputs"]) >= {"plddt", "ptm", "coordinates", "function"}
    r = post(client, "encode", {"model": "esmc-300m", "inputs": {"sequence": "MKTA", "coordinates": [[[0, 0, 0]]]}})
    assert r.status_code == 422 and "structure tokenizer" in r.json()["detail"]
    r = post(client, "decode", {"model": "esm3-open-2024-03", "inputs": {"sequence": [0, 5, 2], "structure": [4098, 1, 4097]}})
    assert r.status_code == 422 and "structure decoder" in r.json()["detail"]
    r = post(client, "decode", {"model": "esmc-300m", "inputs": {"sequence": [0, 70, 2]}})
    assert r.status_code == 400 and "0..63" in r.json()["detail"]
    assert post(client, "encode", {"model": "poet", "inputs": {"sequence": "MK"}}).status_code == 400


def _logits(client, ids, cfg, headers=None):
    body = {"model": "esmc-300m-2024-12", "inputs": {"sequence": ids}, "logits_config": cfg}
    r = post(client, "logits", body, headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def test_esmc_logits_json(client):
    exp, ids = expected(), inputs()["token_ids"][3]
    t = len(ids)
    cfg = {"sequence": True, "return_embeddings": True, "return_hidden_states": True, "ith_hidden_layer": -1}
    out = _logits(client, ids, cfg)
    assert set(out) >= {"logits", "embeddings", "hidden_states", "mean_embedding", "mean_hidden_state"}
    assert close(np.array(out["logits"]["sequence"]), exp["sequence_logits_3"][None])
    assert close(np.array(out["embeddings"]), exp["embeddings_3"][None])
    hs = np.array(out["hidden_states"])
    assert hs.shape == (3, 1, t, 64)
    assert close(hs[1, 0], exp["hidden_states_3"][0], atol=HIDDEN_ATOL) and close(hs[2, 0], exp["embeddings_3"])
    one = _logits(client, ids, {**cfg, "return_embeddings": False, "ith_hidden_layer": 2})
    assert np.shape(one["hidden_states"]) == (1, 1, t, 64) and one["embeddings"] is None
    none = _logits(client, ids, {"sequence": False, "return_mean_embedding": True})
    assert none["logits"] == {} and none["hidden_states"] is None
    assert close(np.array(none["mean_embedding"]), exp["embeddings_3"].mean(0))
    # the ESM3 client's request shape: all tracks null, every logits_config flag
    esm3_cfg = {"sequence": True, "structure": False, "secondary_structure": False, "sasa": False, "function": False,
                "residue_annotations": False, "return_embeddings": False, "return_hidden_states": False,
                "ith_hidden_layer": -1}
    body = {"model": "esmc-300m-2024-12", "logits_config": esm3_cfg,
            "inputs": {"sequence": ids, "structure": None, "function": None, "residue_annotation": None, **NULL_TRACKS}}
    assert post(client, "logits", body).status_code == 200
    bad = post(client, "logits", {**body, "logits_config": {**esm3_cfg, "structure": True}})
    assert bad.status_code == 422 and "structure" in bad.json()["detail"]
    bad = post(client, "logits", {**body, "logits_config": {**esm3_cfg, "return_hidden_states": True,
                                                            "ith_hidden_layer": 3}})
    assert bad.status_code == 400 and "ith_hidden_layer" in bad.json()["detail"]


def test_esmc_logits_bytes_form(client):
    exp, ids = expected(), inputs()["token_ids"][5]
    cfg = {"sequence": True, "return_embeddings": True, "return_hidden_states": True, "ith_hidden_layer": -1}
    out = _logits(client, ids, cfg, headers={"return-bytes": "true"})

    def decode(s):
        raw = zstandard.ZstdDecompressor().decompress(base64.b64decode(s))
        return torch.load(io.BytesIO(raw), weights_only=False)

    logits = decode(out["logits"])
    assert isinstance(logits, dict) and close(logits["sequence"].numpy(), exp["sequence_logits_5"][None])
    assert close(decode(out["embeddings"]).numpy(), exp["embeddings_5"][None])
    assert tuple(decode(out["hidden_states"]).shape) == (3, 1, len(ids), 64)


def test_esm3_generate_from_sequence_prompt(client):
    prompt = "MKTAYIAK__RQISFVK___FSRQ"
    body = {"model": "esm3-sm-open-v1", "inputs": {"sequence": prompt, **NULL_TRACKS}, "track": "sequence",
            "num_steps": 4, "temperature": 1.0, "seed": 7}
    r = post(client, "generate", body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    seq = out["sequence"]
    assert len(seq) == len(prompt) and "_" not in seq
    assert all(a == b for a, b in zip(prompt, seq) if a != "_")
    assert out["coordinates"] is None and out["plddt"] is None and out["ptm"] is None
    # the same seed gives the same tokens as generate_tensor (one sampler)
    from plmserve.models.esmc.alphabet import tokenize

    tensor = post(client, "generate_tensor", {**body, "inputs": {"sequence": tokenize(prompt)}})
    assert tensor.status_code == 200, tensor.text
    assert tokenize(seq) == tensor.json()["outputs"]["sequence"]
    r = post(client, "generate", {**body, "inputs": {"sequence": prompt, "coordinates": [[[1.0, 2.0, 3.0]] * 37] * 26}})
    assert r.status_code == 422 and "structure tokenizer" in r.json()["detail"]
    r = post(client, "generate", {**body, "track": "structure"})
    assert r.status_code == 422 and "structure decoder" in r.json()["detail"]
    r = post(client, "generate", {**body, "model": "esmc-300m"})
    assert r.status_code == 400 and "ESM3" in r.json()["detail"]
