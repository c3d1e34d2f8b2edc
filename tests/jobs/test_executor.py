"""InProcessExecutor: running, progress, failures, prerequisites, cancellation, restart recovery.

The work functions here are small test handlers (the executor does not care what a job does).
"""

from __future__ import annotations

import threading
import time

import pytest

from plmserve.errors import InvalidInputError
from plmserve.jobs import (
    CANCELED,
    FAILURE,
    PENDING,
    SUCCESS,
    InProcessExecutor,
    JobOutput,
    JobStore,
)


@pytest.fixture
def store(tmp_path):
    st = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    yield st
    st.close()


def echo(ctx):
    """Copies the job's args into its result; reports progress in 4 steps."""
    for i in range(4):
        ctx.progress(i, 4, f"step {i}")
    return JobOutput({"result": repr(sorted(ctx.args.items())).encode()}, num_records=len(ctx.args))


def boom(ctx):
    raise InvalidInputError(f"variant {ctx.args['row']}: invalid character 'J' at position 3")


def crash(ctx):
    return 1 / 0


def wait_status(store, job_id, statuses, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} stayed {store.get_job(job_id).status}")


def test_runs_jobs_and_records_results(store):
    ex = InProcessExecutor(store, {"/echo": echo}, workers=2)
    ex.start()
    try:
        ids = [store.create_job("/echo", "u", {"i": i}).job_id for i in range(5)]
        for jid in ids:
            ex.submit(jid)
        assert ex.wait_idle(10)
        for i, jid in enumerate(ids):
            job = store.get_job(jid)
            assert job.status == SUCCESS and job.progress_counter == 100 and job.num_records == 1
            assert store.get_artifact(jid, "result") == repr([("i", i)]).encode()
    finally:
        ex.stop()


def test_progress_is_visible_while_running(store):
    gate = threading.Event()
    seen = []

    def slow(ctx):
        ctx.progress(1, 2, "half way")
        seen.append(ctx.store.get_job(ctx.job.job_id).progress_counter)
        gate.wait(5)
        return JobOutput({})

    ex = InProcessExecutor(store, {"/slow": slow})
    ex.start()
    try:
        jid = store.create_job("/slow", "u", {}).job_id
        ex.submit(jid)
        job = wait_status(store, jid, {"RUNNING"})
        deadline = time.monotonic() + 5
        while store.get_job(jid).progress_counter != 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        job = store.get_job(jid)
        assert job.progress_counter == 50 and job.progress_message == "half way"
        gate.set()
        assert wait_status(store, jid, {SUCCESS}).progress_counter == 100
    finally:
        gate.set()
        ex.stop()


def test_failure_message_and_other_jobs_go_on(store):
    ex = InProcessExecutor(store, {"/boom": boom, "/crash": crash, "/echo": echo})
    ex.start()
    try:
        bad = store.create_job("/boom", "u", {"row": 7}).job_id
        worse = store.create_job("/crash", "u", {}).job_id
        good = store.create_job("/echo", "u", {}).job_id
        unknown = store.create_job("/nope", "u", {}).job_id
        for jid in (bad, worse, good, unknown):
            ex.submit(jid)
        assert ex.wait_idle(10)
        assert store.get_job(bad).status == FAILURE
        assert store.get_job(bad).failure_message == "variant 7: invalid character 'J' at position 3"
        assert store.get_job(worse).failure_message == "ZeroDivisionError: division by zero"
        assert "no worker for job type '/nope'" in store.get_job(unknown).failure_message
        assert store.get_job(good).status == SUCCESS
    finally:
        ex.stop()


def test_prerequisite_runs_first_and_failure_cascades(store):
    gate = threading.Event()
    order = []

    def first(ctx):
        gate.wait(5)
        order.append("first")
        return JobOutput({"result": b"msa"})

    def second(ctx):
        order.append("second")
        pre = ctx.store.get_artifact(ctx.job.prerequisite_job_id, "result")
        return JobOutput({"result": pre + b"+prompt"})

    ex = InProcessExecutor(store, {"/first": first, "/second": second, "/boom": boom}, workers=2)
    ex.start()
    try:
        a = store.create_job("/first", "u", {}).job_id
        b = store.create_job("/second", "u", {}, prerequisite_job_id=a).job_id
        ex.submit(a)
        ex.submit(b)
        time.sleep(0.2)
        assert store.get_job(b).status == PENDING  # waits although a worker is free
        gate.set()
        assert ex.wait_idle(10)
        assert order == ["first", "second"]
        assert store.get_artifact(b, "result") == b"msa+prompt"

        c = store.create_job("/boom", "u", {"row": 1}).job_id
        d = store.create_job("/second", "u", {}, prerequisite_job_id=c).job_id
        ex.submit(d)  # submitted before its prerequisite
        ex.submit(c)
        assert ex.wait_idle(10)
        dj = store.get_job(d)
        assert dj.status == FAILURE
        assert dj.failure_message == f"prerequisite job {c} ended FAILURE: variant 1: invalid character 'J' at position 3"
    finally:
        gate.set()
        ex.stop()


def test_cancel_running_and_pending_jobs(store):
    started = threading.Event()

    def forever(ctx):
        started.set()
        while True:
            ctx.progress(1, 2)
            time.sleep(0.01)

    ex = InProcessExecutor(store, {"/forever": forever, "/echo": echo})
    ex.start()
    try:
        run = store.create_job("/forever", "u", {}).job_id
        queued = store.create_job("/echo", "u", {}).job_id
        ex.submit(run)
        ex.submit(queued)
        assert started.wait(5)
        store.cancel(queued)  # still PENDING behind the running job (1 worker)
        store.cancel(run)      # via the database only: the worker notices at its next progress
        assert ex.wait_idle(10)
        assert store.get_job(run).status == CANCELED
        assert store.get_job(queued).status == CANCELED
        assert store.get_artifact(queued, "result") is None
        # the worker is free again
        nxt = store.create_job("/echo", "u", {}).job_id
        ex.submit(nxt)
        assert ex.wait_idle(10) and store.get_job(nxt).status == SUCCESS
    finally:
        ex.stop()


def test_restart_recovery_reruns_running_and_pending_jobs(store):
    runs = []

    def counted(ctx):
        runs.append(ctx.job.job_id)
        return JobOutput({"result": b"done"}, num_records=1)

    # a previous process died: one job RUNNING (claimed), one PENDING, one waiting on the first
    crashed = store.create_job("/count", "u", {}).job_id
    store.claim(crashed)
    pending = store.create_job("/count", "u", {}).job_id
    dependent = store.create_job("/count", "u", {}, prerequisite_job_id=crashed).job_id
    ex = InProcessExecutor(store, {"/count": counted})
    ex.start()
    try:
        assert ex.wait_idle(10)
        for jid in (crashed, pending, dependent):
            job = store.get_job(jid)
            assert job.status == SUCCESS and store.get_artifact(jid, "result") == b"done"
        assert sorted(runs) == sorted([crashed, pending, dependent])
        assert runs.index(dependent) > runs.index(crashed)
        assert store.get_job(crashed).attempts == 2
        assert store.artifact_names(crashed) == ["result"]  # re-run wrote one result, not two
    finally:
        ex.stop()


def test_shutdown_interrupts_and_job_reruns_after_restart(store):
    started = threading.Event()
    calls = []

    def long(ctx):
        calls.append(1)
        started.set()
        for i in range(100):
            ctx.progress(i, 100)
            time.sleep(0.01)
        return JobOutput({"result": b"finished"})

    ex = InProcessExecutor(store, {"/long": long})
    ex.start()
    jid = store.create_job("/long", "u", {}).job_id
    ex.submit(jid)
    assert started.wait(5)
    ex.stop()
    assert store.get_job(jid).status == PENDING
    ex2 = InProcessExecutor(store, {"/long": long})
    ex2.start()
    try:
        assert ex2.wait_idle(30)
        assert store.get_job(jid).status == SUCCESS and len(calls) == 2
        assert store.get_artifact(jid, "result") == b"finished"
    finally:
        ex2.stop()
