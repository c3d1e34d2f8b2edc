"""Every synchronous ESM-2 / ESM C route goes through the model's batching scheduler.

For BioLM v3 (ESM-2 and ESM C), BioLM v2 ``score_variants`` and the Forge ESM C calls (``logits``,
``forward_and_sample``):

* concurrent requests share one batch (the scheduler's counters prove it), and each answer equals
  the engine's unbatched answer (1e-5);
* a full queue answers 503 with ``Retry-After`` before any work;
* a client that disconnects has its queued units dropped (never computed).

The model's worker is held busy by a blocking unit while requests queue, so the batches formed
are deterministic.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.esm2.engine import ESM2Engine
from plmserve.models.esmc.alphabet import tokenize
from plmserve.models.esmc.engine import ESMCEngine
from plmserve.models.registry import ModelManager
from plmserve.serving import metrics
from plmserve.serving.scheduler import BatchMethod, Unit, get_scheduler
from plmserve.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key"
AUTH = {"Authorization": f"Token {KEY}"}
MAX_QUEUE = 300
CANON = list("ACDEFGHIKLMNPQRSTVWY")
FAMILY = {"esm2-8m": "esm2", "esmc-300m": "esmc"}


def seq(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(CANON, n))


SEQS = [seq(n, i) for i, n in enumerate((23, 9, 31, 17))]
WT = seq(30, 99)


@pytest.fixture(scope="module")
def engines():
    esm2 = ESM2Engine.dummy({"num_layers": 2, "embed_dim": 32, "attention_heads": 4}, slug="esm2-8m", device="cpu")
    esmc = ESMCEngine.dummy({"num_layers": 2, "embed_dim": 64, "attention_heads": 4}, slug="esmc-300m",
                            device="cpu")
    return {"esm2-8m": esm2, "esmc-300m": esmc}


@pytest.fixture(scope="module")
def client(engines, tmp_path_factory):
    # no short-request lane and no latency cap: every unit goes to the main worker's batches
    settings = Settings(api_keys=[KEY], device="cpu", data_dir=tmp_path_factory.mktemp("data"),
                        express_max_tokens=0, batch_target_s=None, max_queue_items=MAX_QUEUE)
    models = ModelManager(settings)
    for slug, engine in engines.items():
        models.put(slug, engine)
    with TestClient(create_app(settings, models)) as c:
        yield c


class Held:
    """Holds the worker of ``slug``'s scheduler with a blocking unit while requests queue."""

    def __init__(self, client: TestClient, slug: str):
        app = client.app
        self.engine = app.state.models.get(slug, FAMILY[slug])
        self.sched = get_scheduler(app, slug, self.engine)
        self.started, self.release = threading.Event(), threading.Event()

    def _block(self, engine, payloads, params):
        self.started.set()
        self.release.wait(60)
        return list(payloads)

    def __enter__(self) -> "Held":
        self.batches0, self.units0 = self.sched.batches_computed, self.sched.units_computed
        self.blocker = self.sched.submit("blocker", "block", BatchMethod(expand=lambda *a: [], run=self._block),
                                         [Unit(1, 0, "x")], 1, {})
        assert self.started.wait(30)
        return self

    def wait_queued(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.sched.queued_units != n:
            assert time.monotonic() < deadline, f"{self.sched.queued_units} units queued, expected {n}"
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.release.set()
        assert self.blocker.future.result(timeout=30) == ["x"]

    @property
    def batches(self) -> int:
        """Batches computed since the hold began, the blocker's excluded."""
        return self.sched.batches_computed - self.batches0 - 1

    @property
    def units(self) -> int:
        return self.sched.units_computed - self.units0 - 1


def concurrently(held: Held, calls, units: int) -> list:
    """Run ``calls`` in threads while the worker is held; release once ``units`` are queued."""
    out: list = [None] * len(calls)

    def run(i):
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    with held:
        for t in threads:
            t.start()
        held.wait_queued(units)
    for t in threads:
        t.join(120)
    return out


def post(client, path, body):
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------------------- batched == unbatched


@pytest.mark.parametrize("slug", ["esm2-8m", "esmc-300m"])
def test_v3_encode_requests_share_a_batch(client, engines, slug):
    engine = engines[slug]
    held = Held(client, slug)
    calls = [lambda s=s: post(client, f"/api/v3/{slug}/encode/",
                              {"items": [{"sequence": s}], "params": {"include": ["mean", "per_token", "logits"]}})
             for s in SEQS]  # fmt: skip
    outs = concurrently(held, calls, units=len(SEQS))
    assert held.batches == 1 and held.units == len(SEQS)  # the four requests in one batch
    for s, out in zip(SEQS, outs):
        (alone,) = engine.encode([s], include=["mean", "per_token", "logits"], repr_layers=[-1])
        (res,) = out["results"]
        layer = res["embeddings"][0]["layer"]
        close(res["embeddings"][0]["embedding"], alone["mean_representations"][layer])
        close(res["per_token_embeddings"][0]["embeddings"], alone["representations"][layer])
        close(res["logits"], alone["logits"])


@pytest.mark.parametrize("slug,method", [("esm2-8m", "biolm"), ("esmc-300m", "biolm"), ("esmc-300m", "pll"),
                                         ("esm2-8m", "pll")])
def test_v3_log_prob_requests_share_a_batch(client, engines, slug, method):
    engine = engines[slug]
    held = Held(client, slug)
    seqs = SEQS[:3]
    calls = [lambda s=s: post(client, f"/api/v3/{slug}/log_prob/", {"items": [{"sequence": s}],
                                                                    "params": {"method": method}}) for s in seqs]
    units = len(seqs) if method == "biolm" else sum(len(s) for s in seqs)  # pll: one masked copy per residue
    outs = concurrently(held, calls, units=units)
    assert held.batches == 1 and held.units == units
    for s, out in zip(seqs, outs):
        close(out["results"][0]["log_prob"], engine.log_prob([s], method=method)[0], atol=1e-4 if method == "pll" else 1e-5)


def test_v3_predict_esmc_requests_share_a_batch(client, engines):
    engine = engines["esmc-300m"]
    held = Held(client, "esmc-300m")
    masked = [s[:4] + "<mask>" + s[5:] for s in SEQS]
    calls = [lambda s=s: post(client, "/api/v3/esmc-300m/predict/", {"items": [{"sequence": s}]}) for s in masked]
    outs = concurrently(held, calls, units=len(masked))
    assert held.batches == 1
    for s, out in zip(masked, outs):
        (alone,) = engine.predict([s])
        close(out["results"][0]["logits"], alone["logits"])
        assert out["results"][0]["sequence_tokens"][4] == "_"


@pytest.mark.parametrize("method", ["masked_marginals", "wt_marginals"])
def test_score_variants_requests_share_a_batch(client, engines, method):
    engine = engines["esm2-8m"]
    held = Held(client, "esm2-8m")
    sets = [[f"{WT[0]}1A", f"{WT[4]}5W"], [f"{WT[9]}10C:{WT[19]}20D", f"{WT[0]}1G"], [f"{WT[29]}30K"]]
    calls = [lambda m=m: post(client, "/api/v2/esm2-8m/score_variants/",
                              {"params": {"wild_type": WT, "method": method}, "items": [{"mutant": c} for c in m]})
             for m in sets]  # fmt: skip
    # masked marginals: one pass per distinct set of mutated positions; wt marginals: one per request
    units = sum(len(m) for m in sets) if method == "masked_marginals" else len(sets)
    outs = concurrently(held, calls, units=units)
    assert held.batches == 1 and held.units == units
    for m, out in zip(sets, outs):
        assert [r["mutant"] for r in out["results"]] == m
        close([r["score"] for r in out["results"]], engine.score_mutants(WT, m, method=method))


def test_forge_esmc_logits_requests_share_a_batch(client, engines):
    engine = engines["esmc-300m"]
    held = Held(client, "esmc-300m")
    cfg = {"sequence": True, "return_embeddings": True, "return_hidden_states": True, "ith_hidden_layer": 1}
    calls = [lambda s=s: post(client, "/api/v1/logits", {"model": "esmc-300m", "inputs": {"sequence": tokenize(s)},
                                                        "logits_config": cfg}) for s in SEQS]
    outs = concurrently(held, calls, units=len(SEQS))
    assert held.batches == 1 and held.units == len(SEQS)
    for s, out in zip(SEQS, outs):
        (alone,) = engine.forward_tokens([tokenize(s)], logits=True, embeddings=True, hidden_states="hf",
                                         ith_hidden_layer=1)
        close(out["logits"]["sequence"], alone["logits"][None])
        close(out["embeddings"], alone["embeddings"][None])
        close(out["hidden_states"], alone["hidden_states"][:, None])


def test_forge_esmc_forward_and_sample_requests_share_a_batch(client, engines):
    import torch

    from plmserve.models.esm3.forward_sample import SamplingTrackConfig, sample_sequence_logits

    engine = engines["esmc-300m"]
    held = Held(client, "esmc-300m")
    prompts = [tokenize(s[:3] + "___" + s[6:]) for s in SEQS]
    body = lambda ids: {"model": "esmc-300m", "inputs": {"sequence": ids}, "seed": 7,  # noqa: E731
                        "sampling_config": {"sequence": {"temperature": 1.0}},
                        "embedding_config": {"sequence": True, "per_residue": True}}
    calls = [lambda ids=ids: post(client, "/api/v1/forward_and_sample", body(ids)) for ids in prompts]
    outs = concurrently(held, calls, units=len(prompts))
    assert held.batches == 1 and held.units == len(prompts)
    for ids, out in zip(prompts, outs):
        (alone,) = engine.forward_tokens([ids], logits=True, embeddings=True)
        close(out["embeddings"]["per_residue"], alone["embeddings"])
        close(out["embeddings"]["sequence"], alone["embeddings"].mean(0))
        smp = sample_sequence_logits(torch.from_numpy(alone["logits"]), torch.tensor(ids),
                                     SamplingTrackConfig(temperature=1.0), seed=7)
        close(out["sequence"]["logprobs"], smp.logprobs.numpy())
        assert out["sequence"]["tokens"] == smp.tokens.tolist()


# ---------------------------------------------------------------------------- full queue, disconnect

ROUTES = {  # name: (slug, path, body, units the request queues)
    "v3-esm2-encode": ("esm2-8m", "/api/v3/esm2-8m/encode/", {"items": [{"sequence": SEQS[0]}]}, 1),
    "v3-esmc-encode": ("esmc-300m", "/api/v3/esmc-300m/encode/", {"items": [{"sequence": SEQS[0]}]}, 1),
    "v3-esmc-log_prob-pll": ("esmc-300m", "/api/v3/esmc-300m/log_prob/",
                             {"items": [{"sequence": SEQS[1]}], "params": {"method": "pll"}}, len(SEQS[1])),
    "v2-score_variants": ("esm2-8m", "/api/v2/esm2-8m/score_variants/",
                          {"params": {"wild_type": WT}, "items": [{"mutant": f"{WT[0]}1A"}, {"mutant": f"{WT[2]}3C"}]},
                          2),
    "forge-esmc-logits": ("esmc-300m", "/api/v1/logits",
                          {"model": "esmc-300m", "inputs": {"sequence": tokenize(SEQS[0])}}, 1),
    "forge-esmc-forward_and_sample": ("esmc-300m", "/api/v1/forward_and_sample",
                                      {"model": "esmc-300m", "inputs": {"sequence": tokenize("MK___A")},
                                       "sampling_config": {"sequence": {}}}, 1),
}  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
def test_full_queue_is_503_with_retry_after(client, route):
    slug, path, body, _ = ROUTES[route]
    held = Held(client, slug)
    with held:
        filler = held.sched.submit("filler", "fill", BatchMethod(expand=lambda *a: [], run=lambda e, p, k: list(p)),
                                   [Unit(1, i, i) for i in range(MAX_QUEUE)], MAX_QUEUE, {})
        try:
            r = client.post(path, json=body, headers=AUTH)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "PLMSERVE_MAX_QUEUE_ITEMS" in r.json()["detail"] and str(MAX_QUEUE) in r.json()["detail"]
            assert held.sched.queued_units == MAX_QUEUE  # nothing of the refused request was queued
        finally:
            held.sched.cancel(filler)


async def _asgi_post(app, path: str, body: dict, gone: asyncio.Event) -> list[dict]:
    """POST through the ASGI app as a server would, the client disconnecting when ``gone`` is set."""
    data = json.dumps(body).encode()
    sent: list[dict] = []
    first = True

    async def receive() -> dict:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(data)).encode()), (b"authorization", AUTH["Authorization"].encode())],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}  # fmt: skip
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("route", list(ROUTES))
def test_disconnected_client_units_are_dropped(client, route):
    slug, path, body, units = ROUTES[route]
    held = Held(client, slug)
    label = {"esm2-8m": "esm2-8m", "esmc-300m": "esmc-300m"}[slug]
    canceled0 = sum(s.value for m in metrics.MODEL_REQUESTS.collect() for s in m.samples
                    if s.name.endswith("_total") and s.labels.get("model") == label
                    and s.labels.get("outcome") == "canceled")  # fmt: skip

    async def scenario() -> list[dict]:
        gone = asyncio.Event()
        task = asyncio.ensure_future(_asgi_post(client.app, path, body, gone))
        deadline = time.monotonic() + 60
        while held.sched.queued_units != units:
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, held.sched.queued_units
            await asyncio.sleep(0.02)
        gone.set()  # the client goes away while its units wait
        return await asyncio.wait_for(task, 30)

    with held:
        asyncio.run(scenario())
        assert held.sched.queued_units == 0  # dropped at once
    time.sleep(0.3)
    assert held.units == 0 and held.batches == 0  # never computed
    canceled = sum(s.value for m in metrics.MODEL_REQUESTS.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels.get("model") == label
                   and s.labels.get("outcome") == "canceled")  # fmt: skip
    assert canceled == canceled0 + 1


@pytest.mark.parametrize("slug", ["esm2-8m", "esmc-300m"])
@pytest.mark.parametrize("method", ["masked_marginals", "wt_marginals"])
def test_scheduled_variant_scores_equal_the_engine(client, engines, slug, method):
    """:func:`score_mutants_batched` (both families; ESM C has no HTTP scoring route yet) equals the
    engine's own ``score_mutants``, and concurrent scorings share a batch."""
    from types import SimpleNamespace

    from plmserve.serving.methods_marginals import score_mutants_batched

    engine = engines[slug]
    held = Held(client, slug)
    mutants = [[f"{WT[0]}1A", f"{WT[4]}5W:{WT[6]}7P"], [f"{WT[29]}30K", f"{WT[4]}5Y"]]

    async def never() -> dict:
        await asyncio.Event().wait()
        return {}

    async def both():
        request = SimpleNamespace(app=client.app, receive=never)
        return await asyncio.gather(*[score_mutants_batched(request, slug, engine, WT, m, method,
                                                            family=FAMILY[slug]) for m in mutants])

    units = 4 if method == "masked_marginals" else 2  # distinct position sets per call / one pass per call
    box: list = []
    worker = threading.Thread(target=lambda: box.append(asyncio.run(both())))
    with held:
        worker.start()
        held.wait_queued(units)
    worker.join(60)
    assert held.batches == 1 and held.units == units
    for m, got in zip(mutants, box[0]):
        close(got, engine.score_mutants(WT, m, method=method))
