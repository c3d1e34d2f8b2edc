"""JobStore: migrations, users and tokens, job state machine, artifacts -- on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from plmserve.errors import ConflictError, InvalidParameterError, NotFoundError
from plmserve.jobs.store import (
    CANCELED,
    FAILURE,
    PENDING,
    RUNNING,
    SUCCESS,
    JobStore,
    hash_password,
    verify_password,
)
from plmserve.settings import Settings


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    else:
        url = request.getfixturevalue("postgres_url")
        st = JobStore(url)
    yield st
    st.close()


def test_default_database_is_sqlite_file_in_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    st = JobStore.from_settings(settings)
    try:
        assert (tmp_path / "data" / "plmserve.db").is_file()
        tables = set(inspect(st.engine).get_table_names())
        assert {"users", "access_tokens", "jobs", "job_artifacts", "alembic_version"} <= tables
        with st.engine.connect() as c:
            from alembic.script import ScriptDirectory

            from plmserve.jobs.store import MIGRATIONS_DIR

            head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        st.close()


def test_migrations_are_idempotent_and_data_survives_reopen(tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    st = JobStore(url)
    job = st.create_job("/poet", "user:a", {"prompt_id": "p"})
    st.close()
    st2 = JobStore(url)  # runs `upgrade head` again
    assert st2.get_job(job.job_id).args == {"prompt_id": "p"}
    st2.close()


def test_password_hashing():
    h = hash_password("correct horse")
    assert h.startswith("scrypt$") and "correct horse" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("wrong horse", h)
    assert hash_password("correct horse") != h  # salted


def test_users_and_tokens(store):
    alice = store.add_user("alice", "password-a")
    assert alice.owner == "user:alice"
    with pytest.raises(ConflictError, match="already exists"):
        store.add_user("alice", "password-b")
    with pytest.raises(InvalidParameterError, match="at least 8"):
        store.add_user("bob", "short")
    with pytest.raises(InvalidParameterError, match="user name"):
        store.add_user("b ob", "password-b")
    assert store.authenticate("alice", "password-a").name == "alice"
    assert store.authenticate("alice", "nope-nope") is None
    assert store.authenticate("nobody", "password-a") is None
    token = store.issue_token(alice.id)
    assert store.user_for_token(token).name == "alice"
    assert store.user_for_token(token + "x") is None
    expired = store.issue_token(alice.id, lifetime=timedelta(seconds=-1))
    assert store.user_for_token(expired) is None
    store.set_password("alice", "password-new")
    assert store.user_for_token(token) is None  # tokens revoked
    assert store.authenticate("alice", "password-new") is not None
    assert [u.name for u in store.list_users()] == ["alice"]


def test_job_lifecycle_and_atomic_results(store):
    job = store.create_job("/poet", "user:a", {"prompt_id": "p1"}, artifacts={"input.json": b"[1]"})
    assert job.status == PENDING and job.start_date is None and len(job.job_id) == 36
    running = store.claim(job.job_id)
    assert running.status == RUNNING and running.start_date is not None and running.attempts == 1
    assert store.claim(job.job_id) is None  # only one worker gets it
    assert store.set_progress(job.job_id, 150, "half") == RUNNING
    got = store.get_job(job.job_id)
    assert got.progress_counter == 100 and got.progress_message == "half"
    assert store.complete(job.job_id, {"result.json": b"[2]"}, num_records=1)
    done = store.get_job(job.job_id)
    assert done.status == SUCCESS and done.end_date >= done.start_date and done.num_records == 1
    assert store.get_artifact(job.job_id, "result.json") == b"[2]"
    assert store.get_artifact(job.job_id, "input.json") == b"[1]"
    assert not store.complete(job.job_id, {"result.json": b"[3]"})  # not RUNNING any more
    assert store.get_artifact(job.job_id, "result.json") == b"[2]"
    wire = done.to_wire()
    assert wire["status"] == "SUCCESS" and wire["created_date"].endswith("+00:00")


def test_canceled_job_never_gets_results(store):
    job = store.create_job("/poet", "user:a", {})
    store.claim(job.job_id)
    store.cancel(job.job_id, owner="user:a")
    assert store.set_progress(job.job_id, 50) == CANCELED
    assert not store.complete(job.job_id, {"result.json": b"x"})
    assert store.get_artifact(job.job_id, "result.json") is None
    assert store.get_job(job.job_id).status == CANCELED
    with pytest.raises(ConflictError, match="already CANCELED"):
        store.cancel(job.job_id)


def test_failure_records_message(store):
    job = store.create_job("/poet", "user:a", {})
    store.claim(job.job_id)
    assert store.fail(job.job_id, "prompt job X failed: no sequences")
    got = store.get_job(job.job_id)
    assert got.status == FAILURE and got.failure_message == "prompt job X failed: no sequences"
    assert not store.fail(job.job_id, "again")


def test_ownership_hides_jobs(store):
    mine = store.create_job("/poet", "user:a", {})
    store.create_job("/poet", "user:b", {})
    assert store.get_job(mine.job_id, owner="user:a").job_id == mine.job_id
    with pytest.raises(NotFoundError):
        store.get_job(mine.job_id, owner="user:b")
    with pytest.raises(NotFoundError):
        store.cancel(mine.job_id, owner="user:b")
    with pytest.raises(NotFoundError):
        store.get_job("00000000-0000-0000-0000-000000000000")
    assert [j.job_id for j in store.list_jobs("user:a")] == [mine.job_id]
    assert store.count_jobs("user:b") == 1


def test_list_filters_and_paging(store):
    ids = [store.create_job("/poet" if i % 2 else "/align/align", "u", {"i": i}).job_id for i in range(5)]
    assert [j.job_id for j in store.list_jobs("u")] == ids[::-1]  # newest first
    assert [j.job_id for j in store.list_jobs("u", oldest_first=True, limit=2, offset=1)] == ids[1:3]
    assert {j.job_id for j in store.list_jobs("u", job_type="/poet")} == {ids[1], ids[3]}
    store.claim(ids[0])
    assert [j.job_id for j in store.list_jobs("u", status=RUNNING)] == [ids[0]]
    first = store.get_job(ids[0])
    assert ids[0] not in {j.job_id for j in store.list_jobs("u", more_recent_than=first.created_date)}


def test_requeue_unfinished_after_crash(store):
    a = store.create_job("/poet", "u", {})
    b = store.create_job("/poet", "u", {})
    c = store.create_job("/poet", "u", {})
    store.claim(a.job_id)  # "crashed" while running
    store.claim(c.job_id)
    store.complete(c.job_id, {})
    pending = store.requeue_unfinished()
    assert [j.job_id for j in pending] == [a.job_id, b.job_id]
    assert store.get_job(a.job_id).status == PENDING
    assert store.get_job(c.job_id).status == SUCCESS
    again = store.claim(a.job_id)
    assert again.attempts == 2


def test_create_finished_job(store):
    job = store.create_job("/align/align", "u", {}, status=SUCCESS, num_records=3,
                           artifacts={"msa.a3m": b">q\nAC\n"})
    assert job.status == SUCCESS and job.progress_counter == 100 and job.end_date is not None
    assert store.artifact_names(job.job_id) == ["msa.a3m"]
