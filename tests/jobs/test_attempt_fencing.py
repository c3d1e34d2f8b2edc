"""Attempt-fenced writes of the Ray executor (:class:`plmserve.jobs.ray_executor.AttemptStore`,
:func:`run_attempt`): only the attempt that owns a RUNNING job writes its progress, result or
failure; a retried or stale attempt writes nothing, so results are never duplicated."""

from __future__ import annotations

from sqlalchemy import func, select

from plmserve.errors import InvalidInputError
from plmserve.jobs.executor import JobOutput
from plmserve.jobs.models import JobArtifact
from plmserve.jobs.ray_executor import AttemptStore, run_attempt
from plmserve.jobs.store import CANCELED, FAILURE, PENDING, RUNNING, SUCCESS, JobStore


def _store(tmp_path):
    return JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")


def _n_artifacts(store, job_id):
    with store._session() as s:
        return s.scalar(select(func.count()).select_from(JobArtifact).where(JobArtifact.job_id == job_id))


def test_a_stale_attempt_writes_nothing(tmp_path):
    store = _store(tmp_path)
    job = store.create_job("/t", "me", {})
    first = store.claim(job.job_id)
    assert first.attempts == 1
    store.requeue(job.job_id)  # the worker of attempt 1 was declared dead
    second = store.claim(job.job_id)
    assert second.attempts == 2
    stale, current = AttemptStore(store, job.job_id, 1), AttemptStore(store, job.job_id, 2)
    assert stale.set_progress(job.job_id, 50, "zombie") == CANCELED  # told to stop
    assert current.set_progress(job.job_id, 40, "ok") == RUNNING
    assert store.get_job(job.job_id).progress_counter == 40
    assert not stale.complete({"result.json": b"stale"}, 1)
    assert not stale.fail("stale failure")
    assert store.get_job(job.job_id).status == RUNNING and store.get_artifact(job.job_id, "result.json") is None
    assert current.complete({"result.json": b"fresh"}, 1)
    assert not current.complete({"result.json": b"again"}, 1)  # written exactly once
    done = store.get_job(job.job_id)
    assert (done.status, done.num_records, done.attempts) == (SUCCESS, 1, 2)
    assert store.get_artifact(job.job_id, "result.json") == b"fresh" and _n_artifacts(store, job.job_id) == 1
    store.close()


def test_run_attempt_outcomes(tmp_path):
    store = _store(tmp_path)
    ok = store.create_job("/t", "me", {"x": 2})
    assert run_attempt(store, ok.job_id, lambda ctx: JobOutput({"r": bytes([ctx.args["x"]])}, 1), None,
                       max_attempts=3) == "success"
    assert store.get_artifact(ok.job_id, "r") == b"\x02"
    assert run_attempt(store, ok.job_id, lambda ctx: JobOutput({"r": b"x"}), None, max_attempts=3) == "skipped"

    def bad(ctx):
        raise InvalidInputError("row 4: invalid character 'J' at position 7")

    j = store.create_job("/t", "me", {})
    assert run_attempt(store, j.job_id, bad, None, max_attempts=3) == "failure"
    assert store.get_job(j.job_id).failure_message == "row 4: invalid character 'J' at position 7"

    def canceled_midway(ctx):
        store.cancel(ctx.job.job_id)
        ctx.progress(1, 2)
        raise AssertionError("progress must raise JobCanceled")

    c = store.create_job("/t", "me", {})
    assert run_attempt(store, c.job_id, canceled_midway, None, max_attempts=3) == "canceled"
    assert store.get_job(c.job_id).status == CANCELED and store.artifact_names(c.job_id) == []

    # a job already tried max_attempts times fails when claimed again, without running
    t = store.create_job("/t", "me", {})
    for _ in range(2):
        store.claim(t.job_id)
        store.requeue(t.job_id)
    ran = []
    assert run_attempt(store, t.job_id, lambda ctx: ran.append(1) or JobOutput(), None, max_attempts=2) == "failure"
    assert ran == [] and store.get_job(t.job_id).status == FAILURE
    assert "tried 2 times (job_max_attempts=2)" in store.get_job(t.job_id).failure_message
    assert store.status_of(store.create_job("/t", "me", {}).job_id) == PENDING
    store.close()
