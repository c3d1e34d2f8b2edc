"""BioLM-compatible ESM-2 routes (TestClient): schema, values against the fair-esm fixture, bad input.

The model is the tiny fair-esm reference checkpoint of ``tests/data/fixtures/esm2`` placed in a model
folder under the official file name of esm2-8m, so the server loads it through the same fair-esm
conversion users get; its BioLM outputs must equal ``biolm_expected.json`` within the README's
tolerances.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings
from tests.client.support import install_esm2_fixture
from tests.conftest import shared_path

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
ALPHABET = list("LAGVSERTIDPKQNFYMHWC")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    install_esm2_fixture(d)
    # a corrupt HF folder for esm2-35m: found, but cannot be loaded -> 503
    bad = d / "esm2-35m"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"garbage")
    return d


@pytest.fixture(scope="module")
def expected():
    return json.loads(shared_path("fixtures", "esm2", "biolm_expected.json").read_text())


@pytest.fixture(scope="module")
def settings(model_dir):
    return Settings(api_keys=[KEY], model_dir=model_dir, max_items=4, max_residues=400)


@pytest.fixture(scope="module")
def client(settings):
    models = ModelManager(settings)  # shared: the model loads once for the module
    with TestClient(create_app(settings, models)) as c:
        yield c


def post(client, action, body, slug="esm2-8m", slash=True):
    return client.post(f"/api/v2/{slug}/{action}{'/' if slash else ''}", json=body, headers=AUTH)


def close(actual, expected, atol, rtol=0.0):
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)


# --- values: the fair-esm reference through the HTTP contract --------------------------------


def test_encode_all_outputs_match_fixture(client, expected):
    seqs = [e["sequence"] for e in expected["encode"]]
    body = {"params": {"include": ["mean", "bos", "contacts", "logits", "attentions"]},
            "items": [{"sequence": s} for s in seqs]}
    r = post(client, "encode", body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["sequence_index"] for res in results] == [0, 1, 2]
    for res, exp in zip(results, expected["encode"]):
        L = len(exp["sequence"])
        assert set(res) == {"sequence_index", "mean_representations", "bos_representations",
                            "contacts", "logits", "attentions"}
        assert list(res["mean_representations"]) == ["2"]  # repr_layers default [-1] -> "2"
        close(res["mean_representations"]["2"], exp["mean_representations"][0]["embedding"], 1e-4, 1e-5)
        close(res["bos_representations"]["2"], exp["bos_representations"][0]["embedding"], 1e-4, 1e-5)
        close(res["logits"], exp["logits"], 1e-4, 1e-5)
        close(res["contacts"], exp["contacts"], 1e-5)
        close(res["attentions"], exp["attentions"], 1e-6, 1e-4)
        assert np.shape(res["contacts"]) == (L, L) and np.shape(res["attentions"]) == (2, L)


def test_predict_matches_fixture(client, expected):
    exp = expected["predict"][0]
    r = post(client, "predict", {"items": [{"sequence": exp["sequence"]}]})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert set(res) == {"logits", "sequence_tokens", "alphabet_tokens"}
    assert res["sequence_tokens"] == exp["sequence_tokens"]
    assert res["alphabet_tokens"] == ALPHABET == exp["vocab_tokens"]
    close(res["logits"], exp["logits"], 1e-4, 1e-5)


def test_encode_per_token_and_layers(client, expected):
    seq = expected["encode"][1]["sequence"]
    body = {"params": {"include": ["per_token", "mean"], "repr_layers": [0, -1, 1]},
            "items": [{"sequence": seq.lower()}]}
    r = post(client, "encode", body, slash=False)  # also without the trailing slash
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert set(res["representations"]) == {"0", "1", "2"}
    for layer, reps in res["representations"].items():
        assert np.shape(reps) == (len(seq), 64)
        # the mean representation is the mean of the per-token ones over residues
        close(res["mean_representations"][layer], np.mean(reps, axis=0), 1e-5, 1e-5)
    close(res["mean_representations"]["2"], expected["encode"][1]["mean_representations"][0]["embedding"],
          1e-4, 1e-5)


def test_log_prob(client, expected):
    seqs = [e["sequence"] for e in expected["encode"][1:]]
    r = post(client, "log_prob", {"items": [{"sequence": s} for s in seqs]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and all(set(x) == {"log_prob"} for x in results)
    values = [x["log_prob"] for x in results]
    assert all(np.isfinite(v) and v < 0 for v in values)
    # a pseudo-log-likelihood sums one term per residue: the 22-aa sequence must not score like the 14-aa one
    assert values[0] != values[1]


def test_log_prob_biolm_method_matches_fixture(client, expected):
    body = {"params": {"method": "biolm"}, "items": [{"sequence": e["sequence"]} for e in expected["encode"]]}
    r = post(client, "log_prob", body)
    assert r.status_code == 200, r.text
    got = [x["log_prob"] for x in r.json()["results"]]
    np.testing.assert_allclose(got, [e["log_prob"] for e in expected["encode"]], atol=2e-3)
    bad = post(client, "log_prob", {"params": {"method": "exact"}, "items": [{"sequence": "MKT"}]})
    assert bad.status_code == 422


def test_score_variants_route(client, expected):
    wt = expected["encode"][1]["sequence"]  # MKTAYIAKQR...
    body = {"params": {"wild_type": wt}, "items": [{"mutant": "M1A"}, {"mutant": "K2R:T3S"}, {"mutant": "M1M"}]}
    r = post(client, "score_variants", body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["mutant"] for x in res] == ["M1A", "K2R:T3S", "M1M"]
    assert res[2]["score"] == pytest.approx(0.0, abs=1e-6)  # wild type vs itself
    assert res[0]["score"] != 0.0
    bad = post(client, "score_variants", {"params": {"wild_type": wt}, "items": [{"mutant": "A1G"}]})
    assert bad.status_code == 400 and "item 0" in bad.json()["detail"]


# --- the whole bad-input list --------------------------------------------------------------


@pytest.mark.parametrize(
    "action,body,status,fragments",
    [
        ("encode", {"items": [{"sequence": "MKTAY"}, {"sequence": "MKT1AY"}]}, 400,
         ["item 1", "position 4", "'1'"]),
        ("encode", {"items": [{"sequence": "MKJ"}]}, 400, ["item 0", "position 3", "'J'"]),
        ("encode", {"items": [{"sequence": ""}]}, 400, ["item 0", "empty"]),
        ("encode", {"items": [{"sequence": "   "}]}, 400, ["item 0", "empty"]),
        ("encode", {"items": []}, 400, ["items is empty"]),
        ("encode", {"items": [{"sequence": "A" * 1025}]}, 400, ["item 0", "1025", "1024"]),
        ("encode", {"items": [{"sequence": "MKT"}] * 5}, 400, ["too many items", "5", "4"]),
        ("encode", {"items": [{"sequence": "M" * 300}, {"sequence": "M" * 200}]}, 400,
         ["too many residues", "500", "400"]),
        ("encode", {"params": {"repr_layers": [3]}, "items": [{"sequence": "MKT"}]}, 400, ["3"]),
        ("encode", {"params": {"repr_layers": [-4]}, "items": [{"sequence": "MKT"}]}, 400, ["-4"]),
        ("encode", {"params": {"include": ["mean", "embeddings"]}, "items": [{"sequence": "MKT"}]}, 400,
         ["params.include[1]", "'embeddings'", "per_token"]),
        ("encode", {"params": {"include": []}, "items": [{"sequence": "MKT"}]}, 400, ["params.include"]),
        ("encode", {"items": [{"sequence": "MK<mask>T"}]}, 400, ["item 0", "<mask>", "position 3"]),
        ("predict", {"items": [{"sequence": "MK<mask>T"}, {"sequence": "MKT"}]}, 400, ["item 1", "<mask>"]),
        ("predict", {"items": [{"sequence": "MK<mask>T*"}]}, 400, ["item 0", "position 5", "'*'"]),
        ("log_prob", {"items": [{"sequence": "MKT€"}]}, 400, ["item 0", "position 4", "'€'"]),
    ],
)
def test_bad_input_is_a_clear_4xx(client, action, body, status, fragments):
    r = post(client, action, body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for frag in fragments:
        assert frag in detail, (frag, detail)


@pytest.mark.parametrize("body", [{"itemz": []}, {"items": [{"seq": "MKT"}]}, {"items": "MKT"},
                                  {"items": [{"sequence": "MKT"}], "params": {"repr_layers": ["x"]}}])
def test_malformed_json_is_422_with_location(client, body):
    r = post(client, "encode", body)
    assert r.status_code == 422
    assert all("loc" in e for e in r.json()["detail"])


def test_unknown_slug_is_404(client):
    for slug in ("esm2-9000m", "poet"):
        r = post(client, "encode", {"items": [{"sequence": "MKT"}]}, slug=slug)
        assert r.status_code == 404, r.text
        assert slug in r.json()["detail"] and "esm2-8m" in r.json()["detail"]


def test_slug_aliases_are_case_insensitive(client):
    r = post(client, "encode", {"items": [{"sequence": "MKT"}]}, slug="ESM2_t6_8M_UR50D")
    assert r.status_code == 200, r.text


def test_model_that_fails_to_load_is_503_and_server_survives(client):
    r = post(client, "encode", {"items": [{"sequence": "MKT"}]}, slug="esm2-35m")
    assert r.status_code == 503, r.text
    assert "esm2-35m" in r.json()["detail"]
    # no weights anywhere (offline): 503 naming the model, the places searched and the remedy
    r = post(client, "encode", {"items": [{"sequence": "MKT"}]}, slug="esm2-150m")
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert "esm2-150m" in detail and "PLMSERVE_MODEL_DIR" in detail
    assert post(client, "encode", {"items": [{"sequence": "MKT"}]}).status_code == 200


def test_auth_required(client):
    r = client.post("/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKT"}]})
    assert r.status_code == 401


# --- schema in /docs, dummy header -----------------------------------------------------------


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    for action in ("encode", "predict", "log_prob"):
        assert f"/api/v2/{{slug}}/{action}/" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert schemas["EncodeParams"]["properties"]["include"]["items"]["enum"] == \
        ["mean", "per_token", "bos", "contacts", "logits", "attentions"]
    assert set(schemas["EncodeResult"]["properties"]) == {
        "sequence_index", "mean_representations", "representations", "bos_representations",
        "contacts", "logits", "attentions"}
    assert client.get("/docs").status_code == 200


def test_dummy_load_format_says_so():
    settings = Settings(no_auth=True, load_format="dummy")
    with TestClient(create_app(settings)) as c:
        r = c.post("/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKTAYIAKQR"}]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Plmserve-Load-Format"] == "dummy"
    assert len(r.json()["results"][0]["mean_representations"]["6"]) == 320  # the real 8M shape
