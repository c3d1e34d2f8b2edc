"""The Ray executor on a real local Ray cluster (head + second node) with a PostgreSQL store,
using the small handlers of :mod:`tests.cluster.handlers` (the PoET workflow over HTTP is in
``test_poet_on_ray.py``)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from sqlalchemy import func, select

from plmserve.jobs.models import JobArtifact
from plmserve.jobs.ray_executor import RayExecutor, RayUnavailableError, connect
from plmserve.jobs.store import CANCELED, FAILURE, RUNNING, SUCCESS, JobStore
from plmserve.settings import Settings

pytestmark = [pytest.mark.ray, pytest.mark.postgres]
HANDLERS = "tests.cluster.handlers:handlers"


@pytest.fixture
def env(tmp_path, postgres_url, ray_cluster, ray_driver):
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, executor="ray",
                        ray_address=ray_cluster.address, job_max_attempts=2)
    store = JobStore(postgres_url)
    ex = RayExecutor(store, settings, handlers_ref=HANDLERS)
    ex.start()
    try:
        yield store, ex
    finally:
        ex.shutdown_dispatcher()
        store.close()


def submit(store, ex, job_type, args=None, **kw):
    job = store.create_job(job_type, "me", args or {}, **kw)
    ex.submit(job.job_id)
    return job


def history(ex, job_id):
    import ray

    return [(what, detail) for j, what, detail in ray.get(ex.dispatcher.history.remote()) if j == job_id]


def wait_running_pid(store, ex, job_id, timeout=120):
    """The worker pid of a job once its handler has reported progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = ex.running_jobs().get(job_id, {}).get("pid")
        job = store.get_job(job_id)
        if pid and job.status == RUNNING and (job.progress_counter or 0) > 0:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start: {store.get_job(job_id)}")


def n_artifacts(store, job_id):
    with store._session() as s:
        return s.scalar(select(func.count()).select_from(JobArtifact).where(JobArtifact.job_id == job_id))


def test_jobs_spread_over_both_nodes_and_results_are_written_once(env):
    store, ex = env
    jobs = [submit(store, ex, "/test/sleep", {"value": i, "steps": 4, "delay": 0.3}) for i in range(6)]
    assert ex.wait_idle(180)
    nodes = set()
    for i, job in enumerate(jobs):
        done = store.get_job(job.job_id)
        assert (done.status, done.attempts, done.progress_counter) == (SUCCESS, 1, 100)
        assert json.loads(store.get_artifact(job.job_id, "result.json"))["value"] == i
        assert n_artifacts(store, job.job_id) == 1
        nodes |= {d.split(" on node ")[1] for what, d in history(ex, job.job_id) if what == "started"}
    assert len(nodes) == 2  # both nodes' CPUs were used


def test_killed_worker_job_is_retried_on_another_worker(env):
    store, ex = env
    job = submit(store, ex, "/test/sleep", {"value": "x", "steps": 30, "delay": 0.2})
    pid = wait_running_pid(store, ex, job.job_id)
    os.kill(pid, signal.SIGKILL)
    assert ex.wait_idle(180)
    done = store.get_job(job.job_id)
    assert done.status == SUCCESS and done.attempts == 2
    result = json.loads(store.get_artifact(job.job_id, "result.json"))
    assert result["pid"] != pid and result["attempt"] == 2
    assert n_artifacts(store, job.job_id) == 1
    events = [what for what, _ in history(ex, job.job_id)]
    assert events.count("retry") == 1 and events[-1] == "success"


def test_a_job_that_kills_its_worker_gives_up_after_job_max_attempts(env):
    store, ex = env
    job = submit(store, ex, "/test/crash")
    assert ex.wait_idle(180)
    done = store.get_job(job.job_id)
    assert done.status == FAILURE and done.attempts == 2
    assert "died 2 times (job_max_attempts=2)" in done.failure_message
    assert store.get_artifact(job.job_id, "result.json") is None


def test_bad_input_fails_once_without_retry(env):
    store, ex = env
    job = submit(store, ex, "/test/bad")
    assert ex.wait_idle(120)
    done = store.get_job(job.job_id)
    assert (done.status, done.attempts, done.failure_message) == (FAILURE, 1, "bad input in row 3")


def test_cancel_running_and_queued_jobs(env):
    store, ex = env
    running = submit(store, ex, "/test/sleep", {"steps": 200, "delay": 0.1})
    wait_running_pid(store, ex, running.job_id)
    store.cancel(running.job_id)
    ex.cancel(running.job_id)
    assert ex.wait_idle(60)
    assert store.get_job(running.job_id).status == CANCELED
    assert store.get_artifact(running.job_id, "result.json") is None
    assert history(ex, running.job_id)[-1][0] == "canceled"
    # a job waiting for its prerequisite is canceled before it ever starts
    first = submit(store, ex, "/test/sleep", {"steps": 3, "delay": 0.2})
    second = submit(store, ex, "/test/sleep", {"steps": 3}, prerequisite_job_id=first.job_id)
    store.cancel(second.job_id)
    ex.cancel(second.job_id)
    assert ex.wait_idle(120)
    assert store.get_job(first.job_id).status == SUCCESS
    second_done = store.get_job(second.job_id)
    assert second_done.status == CANCELED and second_done.attempts == 0


def test_prerequisites_run_in_order_and_failures_propagate(env):
    store, ex = env
    a = submit(store, ex, "/test/sleep", {"steps": 3, "delay": 0.3})
    b = submit(store, ex, "/test/sleep", {"steps": 1}, prerequisite_job_id=a.job_id)
    bad = submit(store, ex, "/test/bad")
    c = submit(store, ex, "/test/sleep", {"steps": 1}, prerequisite_job_id=bad.job_id)
    assert ex.wait_idle(120)
    ja, jb = store.get_job(a.job_id), store.get_job(b.job_id)
    assert ja.status == jb.status == SUCCESS and jb.start_date >= ja.end_date
    jc = store.get_job(c.job_id)
    assert jc.status == FAILURE and jc.attempts == 0
    assert jc.failure_message == f"prerequisite job {bad.job_id} ended FAILURE: bad input in row 3"


def test_sqlite_store_is_refused_when_a_node_is_on_another_machine(tmp_path, ray_cluster, ray_driver, monkeypatch):
    settings = Settings(data_dir=tmp_path, executor="ray", ray_address=ray_cluster.address)
    connect(settings)  # every node is on this machine: SQLite is fine
    real_nodes = ray_driver.nodes
    monkeypatch.setattr(ray_driver, "nodes", lambda: real_nodes() + [{"Alive": True, "NodeManagerAddress": "10.9.8.7"}])
    with pytest.raises(RayUnavailableError) as exc:
        connect(settings)
    msg = str(exc.value)
    assert "10.9.8.7" in msg and "SQLite" in msg and "PLMSERVE_DATABASE_URL" in msg and "PostgreSQL" in msg


def test_a_job_type_without_handler_fails_with_its_name(env):
    store, ex = env
    job = submit(store, ex, "/test/unknown")
    assert ex.wait_idle(60)
    done = store.get_job(job.job_id)
    assert done.status == FAILURE and done.attempts == 0
    assert "no handler for job type '/test/unknown'" in done.failure_message


def test_a_killed_dispatcher_is_restarted_and_reruns_the_running_job(env):
    import ray

    store, ex = env
    job = submit(store, ex, "/test/sleep", {"value": "d", "steps": 25, "delay": 0.2})
    wait_running_pid(store, ex, job.job_id)
    old = ray.get(ex.dispatcher.pid.remote())
    os.kill(old, signal.SIGKILL)  # Ray restarts the detached actor (max_restarts=-1)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if ray.get(ex.dispatcher.pid.remote(), timeout=30) != old:
                break
        except ray.exceptions.RayError:
            time.sleep(0.5)
    assert ex.wait_idle(180)
    done = store.get_job(job.job_id)
    assert done.status == SUCCESS and done.attempts == 2  # re-queued by the new dispatcher, run once more
    result = json.loads(store.get_artifact(job.job_id, "result.json"))
    assert result["attempt"] == 2 and n_artifacts(store, job.job_id) == 1
    # the new incarnation found the job RUNNING without a task of its own and re-queued it
    assert ("requeued", "the job dispatcher restarted") in history(ex, job.job_id)
