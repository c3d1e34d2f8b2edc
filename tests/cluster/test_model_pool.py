"""Model workers on Ray (:mod:`plmserve.cluster.model_pool`): replicas of the tiny fair-esm ESM-2
fixture as actors on the local two-node cluster; calls go to the least-loaded replica, give the
in-process engine's numbers, keep the model's 4xx errors, and survive a killed replica."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import numpy as np
import pytest

from plmserve.cluster.model_pool import ModelPool
from plmserve.errors import InvalidInputError, PlmserveError
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings
from tests.conftest import shared_path

pytestmark = pytest.mark.ray
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYIAKQR", "GSHMLEDPVDAFQLRHQ", "MDEKRRAQHNEVERRRRDKINNWIVQLSKII"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("models")
    src = shared_path("fixtures", "esm2")
    shutil.copy(src / "esm2_tiny.pt", d / "esm2_t6_8M_UR50D.pt")
    shutil.copy(src / "esm2_tiny-contact-regression.pt", d / "esm2_t6_8M_UR50D-contact-regression.pt")
    return Settings(model_dir=d, data_dir=d / "data", device="cpu", dtype="float32", ray_address=ray_cluster.address,
                    model_replicas={"esm2-8m": 2}, ray_actor_num_cpus=0.5)


@pytest.fixture(scope="module")
def pool(settings, ray_driver):
    p = ModelPool(settings)
    p.start()
    yield p
    p.stop(kill=True)


def _infos(pool, ray):
    return [ray.get(a.info.remote()) for a in pool._actors["esm2-8m"]]


def test_calls_spread_over_replicas_and_match_the_engine(pool, settings, ray_driver):
    engine = ModelManager(settings).get("esm2-8m", "esm2")
    expected = engine.encode(SEQS, include=("mean", "contacts"), repr_layers=(engine.resolve_layers([-1])[0],))

    async def many():
        return await asyncio.gather(*[pool.run("esm2-8m", "encode", SEQS, include=("mean", "contacts"),
                                               repr_layers=tuple(engine.resolve_layers([-1])))
                                      for _ in range(6)])

    before = [i["calls"] for i in _infos(pool, ray_driver)]
    results = asyncio.run(many())
    for outs in results:
        for got, exp in zip(outs, expected):
            for key in exp:
                if isinstance(exp[key], dict):
                    for layer in exp[key]:
                        np.testing.assert_allclose(got[key][layer], exp[key][layer], rtol=1e-5, atol=1e-6)
                else:
                    np.testing.assert_allclose(got[key], exp[key], rtol=1e-5, atol=1e-6)
    infos = _infos(pool, ray_driver)
    assert len({i["pid"] for i in infos}) == 2
    assert [i["calls"] - b for i, b in zip(infos, before)] == [3, 3]  # 6 concurrent calls, 3 each
    assert pool.load("esm2-8m") == [0, 0]


def test_least_loaded_replica_is_chosen(settings):
    p = ModelPool(settings, replicas={"m": 3})
    p._inflight["m"] = [2, 0, 1]
    assert p._pick("m") == 1 and p.load("m") == [2, 1, 1]
    assert p._pick("m") in (1, 2)
    p._release("m", 0)
    assert p._pick("m") == 0
    with pytest.raises(PlmserveError, match="no replica"):
        p._pick("other")


def test_model_errors_keep_their_type(pool):
    with pytest.raises(InvalidInputError) as exc:
        asyncio.run(pool.run("esm2-8m", "validate", ["MKT*AY"]))
    assert "position" in str(exc.value)
    with pytest.raises(AttributeError):
        asyncio.run(pool.run("esm2-8m", "_private"))


def test_a_killed_replica_is_restarted(pool, ray_driver):
    infos = _infos(pool, ray_driver)
    os.kill(infos[0]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    outs = [asyncio.run(pool.run("esm2-8m", "log_prob", SEQS[:2])) for _ in range(4)]
    assert all(np.allclose(o, outs[0]) for o in outs)
    new = _infos(pool, ray_driver)
    assert new[0]["pid"] != infos[0]["pid"] and new[1]["pid"] == infos[1]["pid"]


def test_biolm_routes_served_by_the_pool_answer_like_in_process(pool, settings, ray_driver):
    from fastapi.testclient import TestClient

    from plmserve.api.app import create_app

    body = {"params": {"include": ["mean", "per_token", "contacts", "logits"]}, "items": [{"sequence": s} for s in SEQS[:3]]}
    auth = {"Authorization": "Token k"}
    answers, extra = [], []
    before = sum(i["calls"] for i in _infos(pool, ray_driver))
    for replicas in ({"esm2-8m": 2}, {}):
        s = settings.model_copy(update={"api_keys": ["k"], "model_replicas": replicas})
        with TestClient(create_app(s)) as client:
            enc = client.post("/api/v2/esm2-8m/encode/", json=body, headers=auth)
            lp = client.post("/api/v2/esm2-8m/log_prob/", json={"items": body["items"]}, headers=auth)
            bad = client.post("/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKT*"}]}, headers=auth)
            assert enc.status_code == lp.status_code == 200 and bad.status_code == 400
            answers.append((enc.json(), lp.json(), bad.json()))
            # BioLM v3 and score_variants take the same path (pool, or the in-process scheduler)
            v3 = client.post("/api/v3/esm2-8m/encode/", json=body, headers=auth)
            sv = client.post("/api/v2/esm2-8m/score_variants/", headers=auth, json={
                "params": {"wild_type": SEQS[0]}, "items": [{"mutant": "M1A"}, {"mutant": "K2W:T3C"}]})
            assert v3.status_code == sv.status_code == 200, (v3.text, sv.text)
            extra.append((v3.json(), sv.json()))
            if replicas:  # the pool did the work; the API process loaded no model
                assert client.app.state.models.loaded() == []
    assert sum(i["calls"] for i in _infos(pool, ray_driver)) > before
    (enc_pool, lp_pool, bad_pool), (enc_local, lp_local, bad_local) = answers
    (v3_pool, sv_pool), (v3_local, sv_local) = extra
    np.testing.assert_allclose([r["score"] for r in sv_pool["results"]], [r["score"] for r in sv_local["results"]],
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(v3_pool["results"], v3_local["results"]):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["contacts"], b["contacts"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["embeddings"][0]["embedding"], b["embeddings"][0]["embedding"], rtol=1e-5,
                                   atol=1e-6)
    assert bad_pool == bad_local
    np.testing.assert_allclose([r["log_prob"] for r in lp_pool["results"]],
                               [r["log_prob"] for r in lp_local["results"]], rtol=1e-5)
    for a, b in zip(enc_pool["results"], enc_local["results"]):
        assert a.keys() == b.keys()
        for key in ("contacts", "logits"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
        for layer in b["mean_representations"]:
            np.testing.assert_allclose(a["mean_representations"][layer], b["mean_representations"][layer],
                                       rtol=1e-5, atol=1e-6)
