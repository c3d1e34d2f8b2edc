"""Forge-compatible ESM3 endpoints (``/api/v1/generate_tensor``, ``/api/v1/logits``) with the tiny
fixture model, through FastAPI's TestClient."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens, generate_tensor
from plmserve.settings import Settings
from tests.conftest import shared_path
from tests.models.esm3.test_generate_fixtures import RECORDS, load_fixture_model

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FIXTURES = shared_path("fixtures", "esm3")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return load_fixture_model()


@pytest.fixture(scope="module")
def client(model):
    app = create_app(Settings(api_keys=[KEY], esm3_batch_window_ms=20))
    app.state.models.put("esm3-open-2024-03", model)
    with TestClient(app) as c:
        yield c


def _request(name: str) -> dict:
    return copy.deepcopy(RECORDS[name]["request"])


def _masked_body(length: int = 20, **extra) -> dict:
    body = {
        "model": "esm3-open-2024-03",
        "track": "sequence",
        "inputs": {"sequence": [0] + [32] * length + [2]},
    }
    body.update(extra)
    return body


# ---------------------------------------------------------------------------------------------
# generate_tensor
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a_sequence_cosine_8", "b_sequence_cosine_4", "extra_d_structure_with_coords_from_c",
     "e_sasa", "extra_f_function_temp1", "a_sequence_invalid_24_30"],
)
def test_generate_tensor_official_request_matches_official_output(client, name):
    """The exact body the official SDK client sends (with every key, nulls and NaN-free
    coordinates) returns the official outputs token for token."""
    resp = client.post("/api/v1/generate_tensor", json=_request(name), headers=AUTH)
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert set(outputs) == {"sequence", "structure", "secondary_structure", "sasa", "function",
                            "residue_annotation", "coordinates"}
    assert outputs == RECORDS[name]["outputs"]


@pytest.mark.parametrize("alias", ["esm3-sm-open-v1", "esm3_sm_open_v1", "esm3-open", "ESM3-Open-2024-03"])
def test_model_aliases(client, alias):
    body = _request("b_sequence_cosine_4")
    body["model"] = alias
    resp = client.post("/api/v1/generate_tensor", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"] == RECORDS["b_sequence_cosine_4"]["outputs"]


def test_server_defaults_when_fields_are_omitted(client, model):
    body = _masked_body(30, seed=11)
    resp = client.post("/api/v1/generate_tensor", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    expected = generate_tensor(
        model,
        ProteinTokens.from_lists(body["inputs"]),
        GenerationConfig(track="sequence", num_steps=20, temperature=0.5, temperature_annealing=True,
                         top_p=1.0, schedule="cosine", strategy="random"),
        seed=11,
    )
    assert resp.json()["outputs"]["sequence"] == expected.tokens.sequence.tolist()
    # null fields count as omitted
    nulls = dict(body, temperature=None, num_steps=None, schedule=None, strategy=None, top_p=None,
                 temperature_annealing=None, invalid_ids=None, condition_on_coordinates_only=None)
    resp2 = client.post("/api/v1/generate_tensor", json=nulls, headers=AUTH)
    assert resp2.status_code == 200 and resp2.json()["outputs"] == resp.json()["outputs"]


def test_seed_reproducible_and_unseeded_random(client):
    body = _masked_body(40, temperature=1.0, seed=5)
    a = client.post("/api/v1/generate_tensor", json=body, headers=AUTH).json()["outputs"]["sequence"]
    b = client.post("/api/v1/generate_tensor", json=body, headers=AUTH).json()["outputs"]["sequence"]
    assert a == b
    body.pop("seed")
    outs = {tuple(client.post("/api/v1/generate_tensor", json=body, headers=AUTH).json()["outputs"]["sequence"])
            for _ in range(3)}
    assert len(outs) > 1


def test_concurrent_requests_equal_sequential(client):
    bodies = [_masked_body(30, temperature=1.0, seed=i, num_steps=6) for i in range(6)]
    sequential = [client.post("/api/v1/generate_tensor", json=b, headers=AUTH).json() for b in bodies]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda b: client.post("/api/v1/generate_tensor", json=b, headers=AUTH).json(),
                                   bodies))
    assert concurrent == sequential


def test_nan_and_infinity_coordinates_are_missing_atoms(client):
    body = _request("c_structure_coordonly_true")
    text = json.dumps(body)
    # the BOS row's nulls sent as NaN / Infinity (Python's json accepts both)
    coords = body["inputs"]["coordinates"]
    assert coords[0][0] == [None, None, None]
    first_row = json.dumps(coords[0])
    text = text.replace(first_row, json.dumps([[float("nan")] * 3] * 36 + [[float("inf")] * 3]), 1)
    resp = client.post("/api/v1/generate_tensor", content=text,
                       headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"]
    assert out["structure"] == RECORDS["c_structure_coordonly_true"]["outputs"]["structure"]
    assert out["coordinates"][0] == [[None, None, None]] * 37


def test_auth_required(client):
    body = _masked_body()
    assert client.post("/api/v1/generate_tensor", json=body).status_code == 401
    assert client.post("/api/v1/generate_tensor", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/api/v1/generate_tensor", json=body, headers={"Authorization": f"Token {KEY}"}).status_code == 200


@pytest.mark.parametrize(
    "change, status, message",
    [
        ({"model": "esm3-large-2024-03"}, 404, "unknown model 'esm3-large-2024-03'"),
        ({"model": "esm2-8m"}, 404, "unknown model 'esm2-8m'"),
        ({"track": "sequnce"}, 400, "unknown track 'sequnce'"),
        ({"track": "coordinates"}, 400, "Iterative sampling coordinates is not supported"),
        ({"num_steps": 0}, 400, r"num_steps must be in [1, 100]"),
        ({"num_steps": 101}, 400, r"num_steps must be in [1, 100]"),
        ({"top_p": 0}, 400, "top_p must be in (0, 1]"),
        ({"top_p": 1.01}, 400, "top_p must be in (0, 1]"),
        ({"temperature": -0.1}, 400, "temperature must be"),
        ({"schedule": "cubic"}, 400, "unknown schedule 'cubic'"),
        ({"strategy": "greedy"}, 400, "unknown strategy 'greedy'"),
        ({"num_steps": "many"}, 400, "num_steps"),
        ({"inputs": {"sequence": [0, 32, 32, 2], "structure": [4098, 4096, 4097]}}, 400,
         "inconsistent track lengths"),
        ({"inputs": {"sequence": [0, 32, 99, 2]}}, 400, "inputs.sequence: token id 99 at position 2 is out of range"),
        ({"inputs": {"sequence": [0, 32, 2], "residue_annotations_typo": None}}, 400, "unknown track"),
        ({"inputs": {"sequence": [0, 5, 6, 2]}}, 400, "Cannot sample sequence when input has no masks."),
        ({"inputs": {"sequence": None}}, 400, "no track given"),
        ({"inputs": {"sequence": [0, 32, [1], 2]}}, 400, "inputs.sequence"),
        ({"track": "secondary_structure", "invalid_ids": list(range(11))}, 400, "excludes every token"),
        ({"seed": -1}, 400, "seed must be an integer"),
        ({"seed": 2**70}, 400, "seed must be an integer"),
        ({"inputs": {"sequence": [0] + [32] * 2049 + [2]}}, 400, "over the limit of 2048"),
    ],
)
def test_bad_requests_are_4xx_with_detail(client, change, status, message):
    body = _masked_body(2)
    body.update(change)
    resp = client.post("/api/v1/generate_tensor", json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and message in detail


def test_missing_fields_and_bad_json(client):
    resp = client.post("/api/v1/generate_tensor", json={"model": "esm3-open-2024-03", "inputs": {}}, headers=AUTH)
    assert resp.status_code == 400 and "track" in resp.json()["detail"]
    resp = client.post("/api/v1/generate_tensor", content=b"{not json",
                       headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["detail"]


def test_dummy_model_says_so(model):
    app = create_app(Settings(api_keys=[KEY]))
    dummy = load_fixture_model()
    dummy.is_dummy = True
    app.state.models.put("esm3-open-2024-03", dummy)
    with TestClient(app) as c:
        resp = c.post("/api/v1/generate_tensor", json=_masked_body(5), headers=AUTH)
    assert resp.status_code == 200
    assert any("RANDOM weights" in w for w in resp.json()["warning_messages"])


# ---------------------------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------------------------


def test_logits_match_official(client):
    cases = {c["name"]: c for c in json.loads((FIXTURES / "inputs.json").read_text())}
    expected = np.load(FIXTURES / "expected_logits.npz")
    for name in ("b", "c", "f"):
        body = {
            "model": "esm3-sm-open-v1",
            "inputs": cases[name]["inputs"],
            "logits_config": {"sequence": True, "secondary_structure": True, "sasa": True, "function": True,
                              "return_embeddings": True, "return_mean_embedding": True},
        }
        resp = client.post("/api/v1/logits", json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        for key, ref in (("sequence", "sequence_logits"), ("secondary_structure", "secondary_structure_logits"),
                         ("sasa", "sasa_logits")):
            np.testing.assert_allclose(np.array(data["logits"][key]), expected[f"{name}/{ref}"], rtol=1e-4, atol=1e-4)
        fn = np.array(data["logits"]["function"])
        ref = expected[f"{name}/function_logits"]
        rows = expected[f"{name}/wide_rows"]
        np.testing.assert_allclose(fn[rows], ref[rows], rtol=1e-4, atol=1e-4)
        emb = expected[f"{name}/embeddings"]
        np.testing.assert_allclose(np.array(data["embeddings"]), emb, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.array(data["mean_embedding"]), emb.mean(0), rtol=1e-4, atol=1e-4)
        assert "structure" not in data["logits"] and data["hidden_states"] is None


def test_logits_errors(client):
    resp = client.post("/api/v1/logits", json={"model": "esm3-open", "inputs": {"sequence": [0, 5, 2]},
                                               "logits_config": {"return_hidden_states": True}}, headers=AUTH)
    assert resp.status_code == 400 and "return_hidden_states" in resp.json()["detail"]
    resp = client.post("/api/v1/logits", json={"model": "nope", "inputs": {"sequence": [0, 5, 2]}}, headers=AUTH)
    assert resp.status_code == 404
    resp = client.post("/api/v1/logits", json={"model": "esm3-open", "inputs": {"sequence": [0, 5, 70, 2]}},
                       headers=AUTH)
    assert resp.status_code == 400 and "position 2" in resp.json()["detail"]
    assert client.post("/api/v1/logits", json={"model": "esm3-open", "inputs": {"sequence": [0, 5, 2]}}).status_code == 401


def test_openapi_documents_the_request_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/generate_tensor"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "track", "inputs", "num_steps", "temperature", "seed"} <= set(body["properties"])
    logits = spec["paths"]["/api/v1/logits"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "return_mean_embedding" in json.dumps(logits) and "$defs" not in json.dumps(logits)
