"""The per-model batching scheduler: batched == unbatched, fairness, cancellation, bounded queue."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from plmserve.errors import ServiceUnavailableError
from plmserve.models.esm2.engine import ESM2Engine
from plmserve.serving.scheduler import BatchMethod, ModelScheduler, Unit, get_method

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MKV", "GSHMLEDPVDAFQENLQK", "ACDEFGHIKLMNPQRSTVWY" * 3, "WW"]


@pytest.fixture(scope="module")
def engine():
    return ESM2Engine.dummy({"num_layers": 2, "embed_dim": 32, "attention_heads": 4}, slug="tiny",
                            toks_per_batch=128)


def _submit(sched, principal, method, items, /, **params):
    bm = get_method("esm2", method)
    units = bm.expand(sched.engine, items, params)
    return sched.submit(principal, method, bm, units, len(items), params)


def test_batched_equals_unbatched(engine):
    sched = ModelScheduler("tiny", engine, toks_per_batch=2048)
    try:
        include, layers = ["mean", "per_token", "logits", "contacts"], [0, 2]
        reqs = [_submit(sched, f"user{i % 2}", "encode", [s, SEQS[(i + 1) % len(SEQS)]], include=include,
                        repr_layers=layers) for i, s in enumerate(SEQS)]
        pll = [_submit(sched, "user2", "log_prob", [s], method="pll") for s in SEQS[:3]]
        outs = [r.future.result(timeout=120) for r in reqs]
        plls = [r.future.result(timeout=120)[0] for r in pll]
        assert sched.batches_computed < len(reqs) + sum(len(r.units) for r in pll)  # really batched
        for i, (s, out) in enumerate(zip(SEQS, outs)):
            alone = engine.encode([s, SEQS[(i + 1) % len(SEQS)]], include=include, repr_layers=layers)
            for a, b in zip(out, alone):
                for key in ("contacts", "logits"):
                    np.testing.assert_allclose(a[key], b[key], atol=1e-5)
                for layer in (0, 2):
                    np.testing.assert_allclose(a["mean_representations"][layer], b["mean_representations"][layer],
                                               atol=1e-5)
                    np.testing.assert_allclose(a["representations"][layer], b["representations"][layer], atol=1e-5)
        np.testing.assert_allclose(plls, engine.log_prob(SEQS[:3], method="pll"), atol=1e-4)
    finally:
        sched.stop()


class _Recorder:
    """A fake model whose batches record (principal-tagged) payloads and can be held."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()

    def run(self, engine, payloads, params):
        self.gate.wait(30)
        self.batches.append(list(payloads))
        time.sleep(0.01)
        return [p for p in payloads]


def _fake_submit(sched, rec, principal, n, cost=10, tag=None):
    bm = BatchMethod(expand=lambda e, items, p: [], run=rec.run)
    units = [Unit(cost=cost, item=i, payload=(tag or principal, i)) for i in range(n)]
    return sched.submit(principal, "fake", bm, units, n, {})


def test_small_request_is_not_starved():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=100)  # 10 units of cost 10 per batch
    try:
        rec.gate.clear()
        big = _fake_submit(sched, rec, "bulk", 2_000)
        time.sleep(0.1)  # the worker holds the first batch of the big request
        small = _fake_submit(sched, rec, "alice", 1)
        same_user_small = _fake_submit(sched, rec, "bulk", 1, tag="bulk-small")
        rec.gate.set()
        assert small.future.result(timeout=30) == [("alice", 0)]
        assert same_user_small.future.result(timeout=30) == [("bulk-small", 0)]
        # both small requests were in the batch right after the one that was running
        second = rec.batches[1]
        assert ("alice", 0) in second and ("bulk-small", 0) in second, second
        # results come back per request in order
        assert big.future.result(timeout=60) == [("bulk", i) for i in range(2_000)]
    finally:
        sched.stop()


def test_round_robin_between_principals():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=40)  # 4 units per batch
    try:
        rec.gate.clear()
        _fake_submit(sched, rec, "warmup", 1)
        time.sleep(0.1)
        a = _fake_submit(sched, rec, "a", 8)
        b = _fake_submit(sched, rec, "b", 8)
        rec.gate.set()
        a.future.result(timeout=30), b.future.result(timeout=30)
        for batch in rec.batches[1:]:
            owners = [p[0] for p in batch]
            assert owners.count("a") == owners.count("b") == 2, owners
    finally:
        sched.stop()


def test_cancel_drops_queued_units():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=20)  # 2 units per batch
    try:
        rec.gate.clear()
        req = _fake_submit(sched, rec, "gone", 100)
        time.sleep(0.1)
        assert sched.cancel(req) == 98  # the first batch (2 units) was already taken
        assert sched.queued_units == 0
        rec.gate.set()
        time.sleep(0.3)
        assert sched.batches_computed == 1  # only the batch already running; its results are discarded
        assert len(rec.batches) == 1 and req.future.cancelled()
    finally:
        sched.stop()


def test_full_queue_is_refused_with_retry_after():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=20, max_queue_items=50)
    try:
        rec.gate.clear()
        _fake_submit(sched, rec, "a", 40)
        with pytest.raises(ServiceUnavailableError) as ei:
            _fake_submit(sched, rec, "b", 20)
        assert ei.value.status_code == 503 and int(ei.value.headers["Retry-After"]) >= 1
        assert "50" in str(ei.value) and "PLMSERVE_MAX_QUEUE_ITEMS" in str(ei.value)
        rec.gate.set()
    finally:
        sched.stop()


def test_failed_batch_fails_its_requests_only():
    sched = ModelScheduler("fake", object(), toks_per_batch=100)
    try:
        def boom(engine, payloads, params):
            raise ValueError("bad batch")

        bm = BatchMethod(expand=lambda *a: [], run=boom)
        req = sched.submit("a", "boom", bm, [Unit(5, 0, 0)], 1, {})
        with pytest.raises(ValueError):
            req.future.result(timeout=10)
        rec = _Recorder()
        assert _fake_submit(sched, rec, "a", 3).future.result(timeout=10) == [("a", i) for i in range(3)]
    finally:
        sched.stop()


def test_long_waiting_request_gains_priority():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=10, aging_after_s=0.2)  # one unit per batch
    sched._tokens_per_s = 1e6  # a fast model: a second of extra waiting outweighs any attained service
    try:
        rec.gate.clear()
        _fake_submit(sched, rec, "warmup", 1)
        time.sleep(0.05)
        old = _fake_submit(sched, rec, "p", 3, tag="old")
        time.sleep(0.3)  # 'old' has waited past aging_after_s
        new = _fake_submit(sched, rec, "p", 1, tag="new")
        rec.gate.set()
        old.future.result(timeout=30), new.future.result(timeout=30)
        order = [b[0][0] for b in rec.batches[1:]]
        # 'old' got its first unit (attained > 0) and still goes before the fresh request
        assert order.index("new") > order.index("old") and order[:2] == ["old", "old"], order
    finally:
        sched.stop()


def test_short_request_runs_beside_a_long_batch(engine):
    """A short request is computed while a long batch holds the main worker (the express lane)."""
    started, release = threading.Event(), threading.Event()

    def slow(engine_, payloads, params):
        started.set()
        release.wait(30)
        return list(payloads)

    sched = ModelScheduler("tiny", engine, toks_per_batch=2048, express_max_tokens=64)
    try:
        long_req = sched.submit("bulk", "slow", BatchMethod(expand=lambda *a: [], run=slow),
                                [Unit(500, 0, "x")], 1, {})
        assert started.wait(10)
        short = _submit(sched, "alice", "encode", ["MKTAYIAKQR"], include=["mean"], repr_layers=[-1])
        out = short.future.result(timeout=30)  # while the long batch is still running
        assert not long_req.future.done()
        np.testing.assert_allclose(out[0]["mean_representations"][2],
                                   engine.encode(["MKTAYIAKQR"])[0]["mean_representations"][2], atol=1e-5)
        release.set()
        assert long_req.future.result(timeout=30) == ["x"]
    finally:
        release.set()
        sched.stop()


def _costed_submit(sched, rec, principal, costs, tag):
    bm = BatchMethod(expand=lambda e, items, p: [], run=rec.run)
    units = [Unit(cost=c, item=i, payload=(tag, i, c)) for i, c in enumerate(costs)]
    return sched.submit(principal, "fake", bm, units, len(units), {})


def test_sort_window_packs_a_round_by_length():
    """sort_window_passes=2: a round of two passes' worth of units is sorted by length and packed
    into passes within the padded-token budget; results still come back per request in order."""
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=400, sort_window_passes=2)
    try:
        rec.gate.clear()
        _costed_submit(sched, rec, "warmup", [10], "w")
        time.sleep(0.1)  # the worker holds the warm-up round; the next round sees all the units
        costs_a = [100, 20, 100, 20]
        costs_b = [20, 100, 20, 100]
        a = _costed_submit(sched, rec, "a", costs_a, "a")
        b = _costed_submit(sched, rec, "b", costs_b, "b")
        rec.gate.set()
        assert a.future.result(timeout=30) == [("a", i, c) for i, c in enumerate(costs_a)]
        assert b.future.result(timeout=30) == [("b", i, c) for i, c in enumerate(costs_b)]
        passes = [[p[2] for p in batch] for batch in rec.batches[1:]]
        # 480 tokens in one round: in arrival order (round robin) one pass would pad 8 x 100 = 800;
        # sorted, the four 100-token units share one pass (400) and the four 20-token units another (80)
        assert passes == [[100, 100, 100, 100], [20, 20, 20, 20]], passes
        assert sched.batches_computed == 3
    finally:
        sched.stop()


def test_sort_window_skips_a_canceled_request_between_passes():
    rec = _Recorder()
    sched = ModelScheduler("fake", object(), toks_per_batch=200, sort_window_passes=4)
    try:
        rec.gate.clear()
        keep = _costed_submit(sched, rec, "keep", [100, 100], "keep")  # the first pass of the round
        gone = _costed_submit(sched, rec, "gone", [50] * 8, "gone")  # two more passes of the same round
        time.sleep(0.1)  # the worker took the whole round and is held in its first pass
        assert sched.queued_units == 0
        sched.cancel(gone)
        rec.gate.set()
        assert keep.future.result(timeout=30) == [("keep", 0, 100), ("keep", 1, 100)]
        time.sleep(0.3)
        assert [[p[0] for p in batch] for batch in rec.batches] == [["keep", "keep"]]  # gone's passes never ran
        assert gone.future.cancelled()
    finally:
        sched.stop()
