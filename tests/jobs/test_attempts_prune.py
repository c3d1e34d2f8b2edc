"""Jobs: attempts capped then FAILURE with the reason; the interruption message cleared on re-run;
``plmserve jobs prune --older-than`` removes old finished jobs and their results."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from plmserve.cli import app as cli_app
from plmserve.jobs.executor import InProcessExecutor, JobOutput
from plmserve.jobs.models import Job, utcnow
from plmserve.jobs.store import JobStore
from plmserve.serving.limits import parse_age


@pytest.fixture
def store(tmp_path):
    s = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield s
    s.close()


def _wait(store, job_id, statuses, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stayed {store.get_job(job_id).status}")


def test_interrupted_job_fails_after_max_attempts(store):
    runs = []

    def handler(ctx):
        runs.append(ctx.job.progress_message)
        return JobOutput({"result": b"ok"})

    job = store.create_job("/t", "u")
    for _ in range(3):  # three runs, each interrupted by a shut-down
        assert store.claim(job.job_id) is not None
        assert store.requeue(job.job_id)
    assert store.get_job(job.job_id).attempts == 3
    ex = InProcessExecutor(store, {"/t": handler}, max_attempts=3)
    ex.start()
    try:
        done = _wait(store, job.job_id, {"FAILURE", "SUCCESS"})
    finally:
        ex.stop()
    assert done.status == "FAILURE" and runs == []
    assert "gave up after 3 attempts" in done.failure_message
    assert "PLMSERVE_JOB_MAX_ATTEMPTS" in done.failure_message and "interrupted" in done.failure_message


def test_rerun_clears_the_interruption_message(store):
    seen = []

    def handler(ctx):
        seen.append(store.get_job(ctx.job.job_id).progress_message)
        return JobOutput({"result": b"ok"})

    job = store.create_job("/t", "u")
    store.claim(job.job_id)
    store.requeue(job.job_id)
    assert "interrupted" in store.get_job(job.job_id).progress_message
    ex = InProcessExecutor(store, {"/t": handler}, max_attempts=3)
    ex.start()
    try:
        done = _wait(store, job.job_id, {"SUCCESS", "FAILURE"})
    finally:
        ex.stop()
    assert done.status == "SUCCESS" and done.attempts == 2
    assert seen == [None]  # the running job no longer says "interrupted"


def test_prune_removes_old_finished_jobs_and_results(store, tmp_path):
    old = store.create_job("/t", "u", status="SUCCESS", artifacts={"result": b"x" * 100})
    old_pending = store.create_job("/t", "u")
    recent = store.create_job("/t", "u", status="SUCCESS", artifacts={"result": b"y"})
    with store.engine.begin() as conn:
        long_ago = utcnow() - timedelta(days=40)
        conn.execute(update(Job).where(Job.job_id.in_([old.job_id, old_pending.job_id]))
                     .values(created_date=long_ago, end_date=None))
        conn.execute(update(Job).where(Job.job_id == old.job_id).values(end_date=long_ago))
    result = CliRunner().invoke(cli_app, ["jobs", "prune", "--older-than", "30d",
                                          "--database-url", store.url])
    assert result.exit_code == 0, result.output
    assert "deleted 1 job" in result.output
    ids = {j.job_id for j in store.list_jobs()}
    assert ids == {old_pending.job_id, recent.job_id}  # unfinished jobs are kept
    assert store.get_artifact(old.job_id, "result") is None
    assert store.get_artifact(recent.job_id, "result") == b"y"


def test_parse_age():
    assert parse_age("30d") == timedelta(days=30) and parse_age("12h") == timedelta(hours=12)
    result = CliRunner().invoke(cli_app, ["jobs", "prune", "--older-than", "soon", "--database-url", "sqlite://"])
    assert result.exit_code == 2 and "30d" in result.output
