"""ESM C through the current OpenProtein embeddings service (``v1/embeddings``): the model
registry lists ``esmc-300m`` / ``esmc-600m`` with the metadata the 0.17 SDK validates, and
``embed`` / ``logits`` jobs return per-sequence ``.npy`` arrays equal to the engine's own
outputs and to the official ``esm`` package's (the shared tiny ESM C fixture).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.settings import Settings
from tests.client.support import make_app, wait_job
from tests.models.esmc._fixture import close, engine, expected, fixture_path, inputs

API = "/api/v1"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def client(tmp_path):
    # the fixture's transformers-layout folder where a user keeps esmc-300m: the server loads it
    # with its own loader on the first job (the reference below is the official .pth layout)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "esmc-300m").symlink_to(fixture_path("hf"), target_is_directory=True)
    settings = Settings(data_dir=tmp_path / "data", api_keys=["admin-key"], model_dir=tmp_path / "models",
                        device="cpu", dtype="float32", offline=True)
    app = make_app(settings, users={"alice": "alice-password"})
    with TestClient(app) as c:
        r = c.post(f"{API}/auth/login", data={"username": "alice", "password": "alice-password"})
        assert r.status_code == 200, r.text
        c.headers["authorization"] = f"Bearer {r.json()['access_token']}"
        yield c


def run_job(client, route, body) -> dict:
    r = client.post(f"{API}/embeddings/models/esmc-300m/{route}", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    status = wait_job(client, None, job["job_id"])
    assert status["status"] == "SUCCESS", status
    return job


def npy(client, job, seq) -> np.ndarray:
    r = client.get(f"{API}{job['job_type']}/{job['job_id']}/{seq}")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content), allow_pickle=False)


def test_esmc_models_listed_with_metadata(client):
    ids = client.get(f"{API}/embeddings/models").json()
    assert {"esmc-300m", "esmc-600m"} <= set(ids) and "esmc-6b" not in ids
    models = {m["model_id"]: m for m in client.get(f"{API}/embeddings/models", params={"verbose": True}).json()}
    small, large = models["esmc-300m"], models["esmc-600m"]
    assert (small["dimension"], large["dimension"]) == (960, 1152)
    assert small["output_types"] == ["embed", "logits"] == large["output_types"]
    assert small["output_tokens"] == list("ACDEFGHIKLMNPQRSTVWY") == engine().alphabet_tokens
    # registry sizes, not the loaded model's (listing loads nothing)
    assert small["max_sequence_length"] == 16384 and small["description"]["citation_title"]
    assert "NON-COMMERCIAL" in large["description"]["summary"]
    assert "NON-COMMERCIAL" not in small["description"]["summary"]
    one = client.get(f"{API}/embeddings/models/esmc-600m")
    assert one.status_code == 200 and one.json() == large


def test_esmc_embed_and_logits_match_engine_and_official(client):
    seqs = inputs()["sequences"][3:]
    seqs = [seqs[0], seqs[2]]  # 22 and 5 residues, no masks
    per_res = run_job(client, "embed", {"sequences": seqs})
    mean = run_job(client, "embed", {"sequences": seqs, "reduction": "MEAN"})
    total = run_job(client, "embed", {"sequences": seqs, "reduction": "SUM"})
    logits = run_job(client, "logits", {"sequences": seqs})
    eng = engine()
    ref_logits = eng.encode(seqs, include=["logits"])
    for i, (seq, fixture_index) in enumerate(zip(seqs, (3, 5))):
        official = expected()[f"embeddings_{fixture_index}"][1:-1]  # official ESMC `embeddings`, BOS/EOS dropped
        got = npy(client, per_res, seq)
        assert got.dtype == np.float32 and got.shape == (len(seq), eng.embed_dim)
        assert close(got, official)
        np.testing.assert_allclose(npy(client, mean, seq), official.mean(axis=0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(npy(client, total, seq), official.sum(axis=0), rtol=1e-5, atol=1e-3)
        got_logits = npy(client, logits, seq)
        assert got_logits.shape == (len(seq), 20)
        np.testing.assert_allclose(got_logits, ref_logits[i]["logits"], rtol=1e-6, atol=1e-6)
        cols = [inputs()["vocab"].index(a) for a in eng.alphabet_tokens]
        assert close(got_logits, expected()[f"sequence_logits_{fixture_index}"][1:-1][:, cols])


def test_esmc_bad_requests_are_4xx(client):
    r = client.post(f"{API}/embeddings/models/esmc-300m/attn", json={"sequences": ["MKT"]})
    assert r.status_code == 400 and "attention" in r.json()["detail"]
    r = client.post(f"{API}/embeddings/models/esmc-300m/embed", json={"sequences": ["MK1"]})
    assert r.status_code == 400 and "item 0" in r.json()["detail"]
    r = client.post(f"{API}/embeddings/models/esmc-300m/logits", json={"sequences": ["MKT"], "prompt_id": "p"})
    assert r.status_code == 400 and "takes no prompt" in r.json()["detail"]
    assert client.get(f"{API}/embeddings/models/esmc-6b").status_code == 404
    # weights absent (offline, nothing in the model folder): the job fails with the loader's message
    r = client.post(f"{API}/embeddings/models/esmc-600m/embed", json={"sequences": ["MKT"]})
    assert r.status_code == 200
    deadline = time.monotonic() + 60
    while (job := client.get(f"{API}/jobs/{r.json()['job_id']}").json())["status"] not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["status"] == "FAILURE" and "esmc-600m" in job["failure_message"]


def test_plmserve_client_embeds_with_esmc(tmp_path):
    """``plmserve.client``'s 0.17 surface reaches ESM C as ``session.embedding.esmc_300m``."""
    import plmserve.client as pc
    from tests.client.support import LiveServer

    settings = Settings(data_dir=tmp_path / "data", api_keys=["admin-key"], device="cpu", dtype="float32",
                        offline=True)
    # the official-layout fixture, installed directly
    app = make_app(settings, {"esmc-300m": engine()}, users={"alice": "alice-password"})
    with LiveServer(app) as srv:
        session = pc.connect(srv.url, "alice", "alice-password", poll_interval=0.05)
        try:
            esmc = session.embedding.esmc_300m
            assert esmc is session.embedding.get_model("esmc-300m") and esmc.metadata.dimension == 960
            ((seq, mean),) = esmc.embed(["ACDEF"]).wait(timeout=60)  # MEAN by default
            assert seq in (b"ACDEF", "ACDEF")
            assert close(mean, expected()["embeddings_5"][1:-1].mean(axis=0))
            ((_, logits),) = esmc.logits(["ACDEF"]).wait(timeout=60)
            np.testing.assert_allclose(logits, engine().encode(["ACDEF"], include=["logits"])[0]["logits"],
                                       rtol=1e-6, atol=1e-6)
        finally:
            session.close()
