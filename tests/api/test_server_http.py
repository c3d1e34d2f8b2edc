"""A real server: ``plmserve serve --load-format dummy`` in a subprocess on 127.0.0.1, called over
HTTP with httpx using the seed's curl examples (with the 8M slug)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from tests.serving._live import KEY, LiveServer

# the seed's example sequences (BioLM ESM-2 docs), encode and predict
SEED_ENCODE_SEQ = (
    "MAETAVINHKKRKNSPRIVQSNDLTEAAYSLSRDQKRMLYLFVDQIRKSDGTLQEHDGICEIHVAKYAEIFGLTSAEASKDIRQALKSFAGKEVVFYRPEED"
    "AGDEKGYESFPWFIKRAHSPSRGLYSVHINPYLIPFFIGLQNRFTQFRLSETKEITNPYAMRLYESLCRYRKPDGSGIVSLKIDWIIERYQLPQSYQRMPD"
    "FRRRFLQVCVNEINSRTPMRLSYIEKKKGRQTTHIVFSFRDITSMTTG"
)
SEED_PREDICT_SEQ = (
    "MAETAVINHKKRKNSPRI<mask>QSNDLTEAAYSLSRDQKRMLYLFVDQIRKSDGTLQEHDGICEIHVAKYAEIFGLTSAEASKDIRQALKSFAGKEVVFYR"
    "PEEDAGDEKGYESFPWFIKRAHSPSRGLYSVHINPYLIPFFIGLQNRFTQFRLSETKEITNPYAMRLYESLCQYRKPDGSGIVSLKIDWIIERYQLPQSYQRM"
    "PDFRRRFLQVCVNEINSRTPMRLSYIEKKKGRQTTHIVFSFRDITSMTTG"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("http"), "--log-level", "warning")
    try:
        yield srv.base
    finally:
        srv.stop(timeout=20)


def test_seed_encode_curl_example(server):
    body = {"params": {"include": ["mean", "contacts", "logits", "attentions"]},
            "items": [{"sequence": SEED_ENCODE_SEQ}]}
    r = httpx.post(f"{server}/api/v2/esm2-8m/encode/", json=body,
                   headers={"Authorization": f"Token {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-plmserve-load-format"] == "dummy"
    (res,) = r.json()["results"]
    L = len(SEED_ENCODE_SEQ)
    assert res["sequence_index"] == 0
    assert set(res) == {"sequence_index", "mean_representations", "contacts", "logits", "attentions"}
    assert list(res["mean_representations"]) == ["6"] and len(res["mean_representations"]["6"]) == 320
    assert np.shape(res["contacts"]) == (L, L)
    assert np.shape(res["logits"]) == (L, 20)
    assert np.shape(res["attentions"]) == (6, L)
    contacts = np.asarray(res["contacts"])
    assert ((contacts >= 0) & (contacts <= 1)).all()
    np.testing.assert_allclose(contacts, contacts.T, atol=1e-5)  # the contact head symmetrises


def test_seed_predict_curl_example(server):
    r = httpx.post(f"{server}/api/v2/esm2-8m/predict/", json={"items": [{"sequence": SEED_PREDICT_SEQ}]},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    L = len(SEED_PREDICT_SEQ) - len("<mask>") + 1
    assert np.shape(res["logits"]) == (L, 20)
    assert len(res["sequence_tokens"]) == L and res["sequence_tokens"][18] == "<mask>"
    assert res["sequence_tokens"][:4] == ["M", "A", "E", "T"]
    assert res["alphabet_tokens"] == list("LAGVSERTIDPKQNFYMHWC")


def test_http_errors(server):
    r = httpx.post(f"{server}/api/v2/esm2-8m/log_prob/", json={"items": [{"sequence": "MKT"}]}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(f"{server}/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MK!T"}]},
                   headers={"Authorization": f"Token {KEY}"}, timeout=30)
    assert r.status_code == 400 and "position 3" in r.json()["detail"]
    r = httpx.post(f"{server}/api/v2/esm2-8m/log_prob", json={"items": [{"sequence": "MKTAYIAKQR"}]},
                   headers={"Authorization": f"Token {KEY}"}, timeout=60)
    assert r.status_code == 200 and np.isfinite(r.json()["results"][0]["log_prob"])


def test_event_loop_not_blocked_by_a_model_call(server):
    """/health answers while a long encode runs (model calls go to the thread pool)."""
    import threading

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("LAGVSERTIDPKQNFYMHWC"), 1000)) for _ in range(2)]
    done: dict[str, float] = {}

    def long_encode():
        r = httpx.post(f"{server}/api/v2/esm2-8m/encode/", timeout=300,
                       json={"params": {"include": ["mean"]}, "items": [{"sequence": s} for s in seqs]},
                       headers={"Authorization": f"Token {KEY}"})
        done["encode"] = time.monotonic()
        done["status"] = r.status_code

    t = threading.Thread(target=long_encode)
    t.start()
    time.sleep(0.2)
    assert httpx.get(f"{server}/health", timeout=60).status_code == 200
    done["health"] = time.monotonic()
    t.join()
    assert done["status"] == 200
    assert done["health"] < done["encode"], "the event loop was blocked during the model call"
