"""PoET scoring through the model's batching scheduler (issue 14): batched == unbatched against
the PoET fixture, fairness between a long single-site scan and a 1-variant score (scheduler
level and as jobs), a canceled job's queued chunks never computed, a full queue makes jobs wait.

Ordering is asserted from the scheduler's counters and completion order, never from wall-clock
thresholds: a "plug" request holds the worker while the test arranges what is queued.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from plmserve.jobs import poet as pj
from plmserve.jobs.service import JobService
from plmserve.jobs.store import CANCELED, RUNNING, SUCCESS
from plmserve.serving import poet_batching as pb
from plmserve.serving.scheduler import BatchMethod, ModelScheduler, Unit
from plmserve.settings import Settings
from tests.models.poet._helpers import fixture_json, fixture_model, loglik_close

PROMPT = fixture_json("inputs.json")["prompt"]
VARIANTS = fixture_json("inputs.json")["variants"]
WT = VARIANTS[0]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def engine():
    return fixture_model()


class Plug:
    """A request that holds the model's worker until :meth:`release` (cost above any batch
    budget and any express lane: it is a batch of its own on the main worker)."""

    def __init__(self, sched: ModelScheduler, principal: str = "plug"):
        self.entered = threading.Event()
        self.gate = threading.Event()

        def run(engine, payloads, params):
            self.entered.set()
            assert self.gate.wait(120)
            return list(payloads)

        self.req = sched.submit(principal, "plug", BatchMethod(expand=None, run=run),
                                [Unit(cost=10**7, item=0, payload=None)], 1, {})

    def wait_running(self):
        assert self.entered.wait(120), "the plug never ran"

    def release(self):
        self.gate.set()
        self.req.future.result(timeout=120)


def wait_until(pred, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def hold_with_scan_queued(sched: ModelScheduler, start, principal: str = "alice", minimum: int = 1000) -> "Plug":
    """Start a single-site scan (``start()``) and return a running :class:`Plug` with more than
    ``minimum`` of the scan's substitution units queued behind it."""
    first = Plug(sched)
    first.wait_running()
    start()
    wait_until(lambda: queued_for(sched, principal, "poet_site") == 1, "the scan's first unit")
    first.release()  # the wild type is decoded, then the substitutions are queued
    plug = Plug(sched)
    plug.wait_running()
    wait_until(lambda: queued_for(sched, principal, "poet_single_site") > minimum, "the scan's chunks")
    return plug


def queued_for(sched: ModelScheduler, principal: str, method: str | None = None) -> int:
    """Units waiting in the scheduler's queue (either lane) of ``principal``, or of every
    principal starting with ``principal + "/"`` (jobs: ``owner/job id``)."""
    with sched._cv:
        reqs = [r for p, rs in sched._principals.items() for r in rs if p == principal or p.startswith(principal + "/")]
        reqs += [r for r in sched._express if r.principal == principal or r.principal.startswith(principal + "/")]
        return sum(r.pending_units for r in reqs if method is None or r.method_name == method)


# ------------------------------------------------------------------ batched == unbatched
def test_scheduled_scores_equal_unbatched_scores_and_the_fixture(engine):
    sched = ModelScheduler("poet", engine, toks_per_batch=4096)
    try:
        got = pb.score(sched, "alice", [PROMPT, PROMPT[:3]], VARIANTS)
        assert got.shape == (2, len(VARIANTS))
        assert sched.units_computed == 2 * 2 * (len(VARIANTS) + 1)  # + one prompt unit per replicate/direction
        assert sched.batches_computed < sched.units_computed  # variants really shared batches
        # unbatched: every variant alone, per direction
        for i, v in enumerate(VARIANTS):
            alone = engine.score([PROMPT, PROMPT[:3]], [v])[:, 0]
            np.testing.assert_allclose(got[:, i], alone, atol=1e-4, rtol=0)
        # the official numbers (fixture README tolerance for log-likelihoods)
        exp = fixture_json("expected.json")
        ref = (np.asarray(exp["forward_loglik"]) + np.asarray(exp["backward_loglik"])) / 2
        assert loglik_close(got[0], ref)
        fwd = pb.score(sched, "alice", [PROMPT], VARIANTS, reverse=False)[0]
        assert loglik_close(fwd, exp["forward_loglik"])
    finally:
        sched.stop()


def test_scheduled_single_site_equals_the_engine_and_full_scoring(engine):
    wt = WT[:40]
    sched = ModelScheduler("poet", engine, toks_per_batch=512)
    try:
        rows = pb.single_site(sched, "alice", [PROMPT, PROMPT[2:]], wt)
        direct = engine.single_site([PROMPT, PROMPT[2:]], wt)
        assert [c for c, _ in rows] == [c for c, _ in direct] and len(rows) == 1 + 19 * len(wt)
        np.testing.assert_allclose(np.stack([v for _, v in rows]), np.stack([v for _, v in direct]), atol=1e-4, rtol=0)
        assert sched.batches_computed < sched.units_computed
        # absolute scores = the mutant sequences scored in full
        picks = [1, 19, 200, len(rows) - 1]
        muts = []
        for r in picks:
            code = rows[r][0]
            p, aa = int(code[1:-1]), code[-1]
            muts.append(wt[: p - 1] + aa + wt[p:])
        full = engine.score([PROMPT, PROMPT[2:]], [wt] + muts)
        assert loglik_close(rows[0][1], full[:, 0])
        for k, r in enumerate(picks):
            assert loglik_close(rows[r][1], full[:, k + 1])
    finally:
        sched.stop()


def test_requests_with_the_same_prompt_share_batches_others_do_not(engine):
    sched = ModelScheduler("poet", engine, toks_per_batch=4096)
    try:
        cache = engine.embed(PROMPT)
        other = engine.embed(PROMPT[:2])
        seen: list[list] = []

        def run(eng, payloads, params):
            seen.append([id(c) for c, _ in payloads])
            return pb.SCORE.run(eng, payloads, params)

        method = BatchMethod(expand=None, run=run)
        plug = Plug(sched)
        plug.wait_running()
        reqs = [sched.submit(who, "poet_score", method, [Unit(len(v) + 2, i, (c, v)) for i, v in enumerate(VARIANTS[:4])],
                             4, {"prompt": key, "reverse": False})
                for who, c, key in (("alice", cache, "p1"), ("bob", cache, "p1"), ("carol", other, "p2"))]
        plug.release()
        outs = [r.future.result(timeout=120) for r in reqs]
        # alice's and bob's units (same prompt key) were computed together; carol's apart
        assert any(len(b) == 8 for b in seen) and any(len(b) == 4 and set(b) == {id(other)} for b in seen)
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
        np.testing.assert_allclose(outs[0], engine.score_direction(cache, VARIANTS[:4]), atol=1e-4)
        np.testing.assert_allclose(outs[2], engine.score_direction(other, VARIANTS[:4]), atol=1e-4)
    finally:
        sched.stop()


# ------------------------------------------------------------------ fairness (scheduler level)
@pytest.mark.parametrize("small_principal", ["bob", "alice"])
def test_one_variant_score_is_served_between_the_chunks_of_a_long_scan(engine, small_principal):
    """A 1-variant score submitted while a long scan's chunks are queued finishes first, whether
    it comes from another user (round-robin) or from the same one (least attained service)."""
    sched = ModelScheduler("poet", engine, toks_per_batch=256, express_max_tokens=0)
    finished: list[tuple[str, int, int]] = []  # (who, batches computed, units still queued)
    try:
        def scan():
            pb.single_site(sched, "alice", [PROMPT], WT[:80], reverse=False)
            finished.append(("scan", sched.batches_computed, sched.queued_units))

        def one():
            pb.score(sched, small_principal, [PROMPT], [VARIANTS[3]])
            finished.append(("one", sched.batches_computed, sched.queued_units))

        t_scan = threading.Thread(target=scan)
        plug = hold_with_scan_queued(sched, t_scan.start)  # hold the worker while the 1-variant request arrives
        queued_scan = queued_for(sched, "alice", "poet_single_site")
        t_one = threading.Thread(target=one)
        t_one.start()
        wait_until(lambda: queued_for(sched, small_principal, "poet_prompt") == 1, "the 1-variant request")
        plug.release()
        t_one.join(120)
        t_scan.join(300)
        assert [w for w, _, _ in finished] == ["one", "scan"]
        (_, one_batches, left), (_, scan_batches, _) = finished
        assert left > 0.5 * queued_scan  # most of the scan was still queued when the 1-variant result came
        assert one_batches < scan_batches
    finally:
        sched.stop()


# ------------------------------------------------------------------ queue full: jobs wait
def test_run_sync_waits_when_the_queue_is_full_and_splits_large_groups():
    sched = ModelScheduler("fake", object(), toks_per_batch=100, max_queue_items=4, express_max_tokens=0)
    try:
        double = BatchMethod(expand=None, run=lambda e, payloads, p: [2 * x for x in payloads])
        plug = Plug(sched)
        plug.wait_running()
        filler = sched.submit("bob", "double", double, [Unit(10, i, i) for i in range(4)], 4, {})
        assert sched.queued_units == 4
        result: dict = {}
        checks: list[tuple[int, int]] = []

        def job():
            result["out"] = sched.run_sync("alice", [("double", double, [Unit(10, i, i) for i in range(7)], {})],
                                           check=lambda d, n: checks.append((d, n)), poll_s=0.01)

        t = threading.Thread(target=job)
        t.start()
        time.sleep(0.2)  # the job keeps retrying (no exception) while the queue is full
        assert t.is_alive() and "out" not in result
        plug.release()
        t.join(60)
        assert result["out"] == [[0, 2, 4, 6, 8, 10, 12]]  # 7 units > max_queue_items: split in pieces of 2
        assert filler.future.result(timeout=10) == [0, 2, 4, 6]
        assert checks[-1] == (7, 7)
    finally:
        sched.stop()


def test_run_sync_cancels_its_queued_units_when_check_raises():
    sched = ModelScheduler("fake", object(), toks_per_batch=20, express_max_tokens=0)
    computed: list[int] = []
    try:
        method = BatchMethod(expand=None, run=lambda e, payloads, p: [computed.extend(payloads) or x for x in payloads])
        plug = Plug(sched)
        plug.wait_running()

        class Stop(Exception):
            pass

        def check(done, total):
            raise Stop

        with pytest.raises(Stop):
            sched.run_sync("alice", [("m", method, [Unit(10, i, i) for i in range(50)], {})], check=check,
                           poll_s=0.01, check_every_s=0.0)
        assert sched.queued_units == 0
        plug.release()
        time.sleep(0.1)
        assert computed == [] and sched.units_computed == 1  # only the plug
    finally:
        sched.stop()


# ------------------------------------------------------------------ as jobs
class _Models:
    def __init__(self, engine):
        self.engine = engine

    def get(self, name, family=None):
        return self.engine


@pytest.fixture
def service(tmp_path, engine):
    svc = JobService(Settings(data_dir=tmp_path, workers=2), _Models(engine))
    svc.start()
    yield svc
    svc.stop()


def _prompt_job(svc, owner):
    return svc.store.create_job(pj.JOB_PROMPT, owner, {}, status=SUCCESS,
                                artifacts={pj.ART_PROMPT: pj.prompt_json([[(f"p{i}", s) for i, s in enumerate(PROMPT)]])})


def _single_site_job(svc, owner, wt):
    prompt = _prompt_job(svc, owner)
    return svc.submit(pj.JOB_SINGLE_SITE, owner, {"prompt_id": prompt.job_id, "variant": wt})


def _score_job(svc, owner, seqs):
    prompt = _prompt_job(svc, owner)
    rows = [[f"s{i}", s] for i, s in enumerate(seqs)]
    return svc.submit(pj.JOB_SCORE, owner, {"prompt_id": prompt.job_id},
                      artifacts={pj.ART_INPUT: json.dumps(rows).encode()})


def _status(svc, job):
    return svc.store.get_job(job.job_id).status


@pytest.mark.parametrize("small_owner", ["bob", "alice"])
def test_a_small_score_job_finishes_during_a_long_single_site_job(service, engine, small_owner):
    sched = service.resources.scheduler(engine)
    assert service.executor.workers == 2
    started = {}
    plug = hold_with_scan_queued(sched, lambda: started.update(job=_single_site_job(service, "alice", WT[:100])))
    long_job = started["job"]
    small = _score_job(service, small_owner, [VARIANTS[1]])
    wait_until(lambda: queued_for(sched, f"{small_owner}/{small.job_id}", "poet_prompt") == 1,
               "the small job's first unit")
    plug.release()
    wait_until(lambda: _status(service, small) == SUCCESS, "the small job")
    assert _status(service, long_job) == RUNNING
    assert queued_for(sched, f"alice/{long_job.job_id}", "poet_single_site") > 0
    rows = pj.read_result(service.store, service.store.get_job(small.job_id))
    assert loglik_close(rows[0]["score"], engine.score([PROMPT], [VARIANTS[1]])[:, 0])
    service.cancel(long_job.job_id, "alice")
    wait_until(lambda: sched.queued_units == 0 and not sched.busy, "the canceled scan to leave the queue")


def test_a_canceled_jobs_queued_chunks_are_not_computed(service, engine):
    sched = service.resources.scheduler(engine)
    started = {}
    plug = hold_with_scan_queued(sched, lambda: started.update(job=_single_site_job(service, "alice", WT[:100])))
    job = started["job"]
    before = sched.units_computed
    queued = queued_for(sched, "alice", "poet_single_site")
    service.cancel(job.job_id, "alice")
    wait_until(lambda: queued_for(sched, "alice") == 0, "the canceled job's units to be dropped")
    plug.release()
    wait_until(lambda: not service.executor._running, "the job thread to end")
    time.sleep(0.2)
    assert sched.units_computed == before + 1  # the plug; none of the job's queued units
    assert queued > 1000 and _status(service, job) == CANCELED
    assert service.store.get_artifact(job.job_id, pj.ART_RESULT) is None


def test_scheduled_embeddings_and_logits_equal_the_direct_pass(engine):
    from plmserve.jobs.poet_v1 import poet_arrays

    sched = ModelScheduler("poet", engine, toks_per_batch=4096)
    try:
        seqs = [VARIANTS[10], VARIANTS[1], VARIANTS[11]]
        got = pb.arrays(sched, "alice", [PROMPT, PROMPT[:2]], seqs)
        assert sched.units_computed == 2 * (1 + len(seqs))  # one prompt embedding per replicate
        for (logits, hidden), s in zip(got, seqs):
            ref_logits, ref_hidden = poet_arrays(engine, [PROMPT, PROMPT[:2]], s)
            assert logits.shape == (2, len(s), 24) and hidden.shape == (2, len(s), engine.config.hidden_dim)
            np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
            np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=0)
        exp = fixture_json("expected.json")  # official logits of variant 0 (the WT) given the prompt
        (wt_logits, _), = pb.arrays(sched, "alice", [PROMPT], [WT])
        np.testing.assert_allclose(wt_logits[0], np.asarray(exp["logits_variant0"])[: len(WT)], atol=1e-4, rtol=0)
    finally:
        sched.stop()
