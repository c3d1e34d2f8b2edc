"""BioLM v3 routes (``/api/v3``) and gzip request bodies (TestClient).

ESM-2 values come from the fair-esm fixture (``biolm_expected.json``, which is in BioLM's current
output shape); ESM C values from the official ``esm`` 3.2.1 fixture (``fixtures/esmc``). Both models
are put in a model folder exactly as users would (official file names), so the server loads them
through the registry.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.esmc.alphabet import CANONICAL_IDS, tokenize
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings
from tests.client.support import install_esm2_fixture, install_esmc_fixture
from tests.conftest import shared_path
from tests.models.esmc._fixture import expected as esmc_expected
from tests.models.esmc._fixture import inputs as esmc_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
ESMC_VOCAB = list("ACDEFGHIKLMNPQRSTVWY")
LIMIT = 300_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    install_esm2_fixture(d)
    for size in ("300m", "600m"):  # the official snapshot layout: <slug>/data/weights/<file>
        install_esmc_fixture(d, size)
    return d


@pytest.fixture(scope="module")
def esm2_expected():
    return json.loads(shared_path("fixtures", "esm2", "biolm_expected.json").read_text())


@pytest.fixture(scope="module")
def client(model_dir, tmp_path_factory):
    settings = Settings(api_keys=[KEY], model_dir=model_dir, device="cpu", max_decompressed_body_bytes=LIMIT,
                        data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings, ModelManager(settings))) as c:
        yield c


def post(client, slug, action, body, version="v3", **kw):
    return client.post(f"/api/{version}/{slug}/{action}/", json=body, headers=AUTH, **kw)


def post_gzip(client, url, body, headers=None):
    data = gzip.compress(json.dumps(body).encode())
    h = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip", **(headers or {})}
    return client.post(url, content=data, headers=h)


def close(actual, expected, atol=1e-4, rtol=1e-5):
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)


# --- ESM-2 ------------------------------------------------------------------------------------


def test_esm2_encode_v3_shape_and_values(client, esm2_expected):
    exp = esm2_expected["encode"]
    body = {"params": {"include": ["mean", "bos", "per_token", "contacts", "logits", "attentions"]},
            "items": [{"sequence": e["sequence"]} for e in exp]}
    r = post(client, "esm2-8m", "encode", body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["sequence_index"] for x in results] == [0, 1, 2]
    for res, e in zip(results, exp):
        assert set(res) == {"sequence_index", "embeddings", "bos_embeddings", "per_token_embeddings", "contacts",
                            "logits", "vocab_tokens", "attentions"}
        assert [x["layer"] for x in res["embeddings"]] == [2]
        close(res["embeddings"][0]["embedding"], e["mean_representations"][0]["embedding"])
        close(res["bos_embeddings"][0]["embedding"], e["bos_representations"][0]["embedding"])
        close(np.mean(res["per_token_embeddings"][0]["embeddings"], 0), res["embeddings"][0]["embedding"], 1e-5)
        close(res["logits"], e["logits"])
        assert res["vocab_tokens"] == e["vocab_tokens"] == list("LAGVSERTIDPKQNFYMHWC")
        close(res["contacts"], e["contacts"], 1e-5)
        close(res["attentions"], e["attentions"], 1e-6, 1e-4)


def test_esm2_predict_and_log_prob_v3(client, esm2_expected):
    p = esm2_expected["predict"][0]
    r = post(client, "esm2-8m", "predict", {"items": [{"sequence": p["sequence"]}]})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert set(res) == {"logits", "sequence_tokens", "vocab_tokens"}
    assert res["sequence_tokens"] == p["sequence_tokens"]
    close(res["logits"], p["logits"])
    seqs = [e["sequence"] for e in esm2_expected["encode"]]
    r = post(client, "esm2-8m", "log_prob", {"items": [{"sequence": s} for s in seqs]})
    assert r.status_code == 200, r.text
    got = [x["log_prob"] for x in r.json()["results"]]
    np.testing.assert_allclose(got, [e["log_prob"] for e in esm2_expected["encode"]], atol=2e-3)
    # the pseudo-log-likelihood is an explicit option, and equals v2's default
    pll = post(client, "esm2-8m", "log_prob", {"params": {"method": "pll"}, "items": [{"sequence": seqs[2]}]})
    v2 = post(client, "esm2-8m", "log_prob", {"items": [{"sequence": seqs[2]}]}, version="v2")
    assert pll.json()["results"][0]["log_prob"] == pytest.approx(v2.json()["results"][0]["log_prob"], abs=1e-6)
    assert abs(pll.json()["results"][0]["log_prob"] - got[2]) > 1.0


# --- ESM C ------------------------------------------------------------------------------------


def test_esmc_encode_v3(client):
    exp, seqs = esmc_expected(), esmc_inputs()["sequences"]
    body = {"params": {"include": ["mean", "per_token", "logits"], "repr_layers": [-1, 0]},
            "items": [{"sequence": s} for s in seqs[:4]]}
    r = post(client, "esmc-300m", "encode", body)
    assert r.status_code == 200, r.text
    for i, res in enumerate(r.json()["results"]):
        assert set(res) == {"embeddings", "per_token_embeddings", "logits", "vocab_tokens"}  # no sequence_index
        L = len(seqs[i])
        hs = exp[f"hidden_states_{i}"]
        assert [x["layer"] for x in res["embeddings"]] == [1, 0]  # -1 -> the last block (n-1 = 1)
        close(res["embeddings"][0]["embedding"], hs[1, 1:L + 1].mean(0), 2e-4)
        close(res["per_token_embeddings"][1]["embeddings"], hs[0, 1:L + 1], 2e-4)
        close(res["logits"], exp[f"sequence_logits_{i}"][1:L + 1][:, CANONICAL_IDS])
        assert res["vocab_tokens"] == ESMC_VOCAB
    default = post(client, "esmc-300m", "encode", {"items": [{"sequence": "MKTAYIAK"}]}).json()["results"][0]
    assert set(default) == {"embeddings"} and default["embeddings"][0]["layer"] == 1
    bad = post(client, "esmc-300m", "encode", {"params": {"repr_layers": [2]}, "items": [{"sequence": "MKT"}]})
    assert bad.status_code == 400 and "[-2, 1]" in bad.json()["detail"]
    bad = post(client, "esmc-300m", "encode", {"params": {"include": ["contacts"]}, "items": [{"sequence": "MKT"}]})
    assert bad.status_code == 400 and "contacts" in bad.json()["detail"]


def test_esmc_predict_and_log_prob_v3(client):
    exp, seqs = esmc_expected(), esmc_inputs()["sequences"]
    r = post(client, "esmc-300m", "predict", {"items": [{"sequence": seqs[4]}]})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    toks = tokenize(seqs[4])[1:-1]
    assert res["sequence_tokens"] == ["_" if t == 32 else esmc_inputs()["vocab"][t] for t in toks]
    assert res["sequence_tokens"].count("_") == 2 and res["vocab_tokens"] == ESMC_VOCAB
    close(res["logits"], exp["sequence_logits_4"][1:-1][:, CANONICAL_IDS])
    s = seqs[3]
    lp = torch.log_softmax(torch.from_numpy(exp["sequence_logits_3"][1:-1][:, CANONICAL_IDS]).double(), -1).numpy()
    want = sum(lp[p, ESMC_VOCAB.index(ch)] for p, ch in enumerate(s))
    r = post(client, "esmc-300m", "log_prob", {"items": [{"sequence": s}]})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["log_prob"] == pytest.approx(want, abs=1e-3)
    pll = post(client, "esmc-300m", "log_prob", {"params": {"method": "pll"}, "items": [{"sequence": s}]})
    assert pll.status_code == 200 and abs(pll.json()["results"][0]["log_prob"] - want) > 1e-2
    bad = post(client, "esmc-300m", "log_prob", {"items": [{"sequence": "MKT"}, {"sequence": "MKXA"}]})
    assert bad.status_code == 400 and "item 1" in bad.json()["detail"] and "position 3" in bad.json()["detail"]
    # esmc-600m is served too (a plmserve extension)
    assert post(client, "esmc-600m", "log_prob", {"items": [{"sequence": s}]}).status_code == 200


def test_limits_and_unknown_models(client):
    nine = {"items": [{"sequence": "MKTAYIAK"}] * 9}
    r = post(client, "esmc-300m", "encode", nine)
    assert r.status_code == 400 and "at most 8" in r.json()["detail"]
    r = post(client, "poet", "encode", {"items": [{"sequence": "MKT"}]})
    assert r.status_code == 404 and "v3" in r.json()["detail"]
    r = post(client, "nope", "encode", {"items": [{"sequence": "MKT"}]})
    assert r.status_code == 404
    r = post(client, "esmc-300m", "encode", {"items": [{"sequence": "M" * 2049}]})
    assert r.status_code == 400 and "2048" in r.json()["detail"]
    r = client.post("/api/v3/esmc-300m/encode/", json={"items": [{"sequence": "MKT"}]})
    assert r.status_code == 401


def test_schema_route(client):
    r = client.get("/api/v3/schema/esmc-300m/encode/")
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["properties"]["items"]["maxItems"] == 8
    assert s["properties"]["items"]["items"]["properties"]["sequence"]["maxLength"] == 2048
    assert json.dumps(s).count('"per_token"') >= 1 and '"contacts"' not in json.dumps(s)
    assert '"contacts"' in json.dumps(client.get("/api/v3/schema/esm2-8m/encode/").json())
    assert client.get("/api/v3/schema/esmc-300m/log_prob/").json()["properties"]["items"]["maxItems"] == 8
    assert client.get("/api/v3/schema/esmc-300m/fold/").status_code == 404
    assert client.get("/api/v3/schema/poet/encode/").status_code == 404


# --- gzip request bodies ------------------------------------------------------------------------


def test_gzip_bodies_on_v3_and_v2(client):
    seq = esmc_inputs()["sequences"][0]  # 286 residues: biolmai gzips such a body
    body = {"params": {"include": ["mean"]}, "items": [{"sequence": seq}, {"sequence": seq[:100]}]}
    plain = post(client, "esmc-300m", "encode", body)
    zipped = post_gzip(client, "/api/v3/esmc-300m/encode/", body)
    assert zipped.status_code == 200, zipped.text
    assert zipped.json() == plain.json()
    v2 = post_gzip(client, "/api/v2/esm2-8m/encode/", {"items": [{"sequence": seq}]})
    assert v2.status_code == 200, v2.text
    assert v2.json() == post(client, "esm2-8m", "encode", {"items": [{"sequence": seq}]}, version="v2").json()


def test_gzip_errors(client):
    bomb = gzip.compress(b"{" + b" " * (LIMIT + 10) + b"}")  # inflates past the limit
    r = client.post("/api/v3/esmc-300m/encode/", content=bomb,
                    headers={**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 413 and str(LIMIT) in r.json()["detail"]
    assert "PLMSERVE_MAX_DECOMPRESSED_BODY_BYTES" in r.json()["detail"]
    r = client.post("/api/v2/esm2-8m/encode/", content=b"not gzip at all",
                    headers={**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 400 and "gzip" in r.json()["detail"]
    truncated = gzip.compress(json.dumps({"items": [{"sequence": "MKT"}]}).encode())[:-6]
    r = client.post("/api/v3/esmc-300m/encode/", content=truncated,
                    headers={**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    r = client.post("/api/v3/esmc-300m/encode/", content=b"{}",
                    headers={**AUTH, "Content-Encoding": "br", "Content-Type": "application/json"})
    assert r.status_code == 415 and "br" in r.json()["detail"]
