"""``plmserve users`` and ``plmserve jobs`` against the job database (and a live server)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from plmserve.cli import app
from plmserve.jobs.store import JobStore

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def test_users_add_list_and_errors(tmp_path):
    d = str(tmp_path)
    r = run("users", "add", "alice", "--data-dir", d, input="alice-password\nalice-password\n")
    assert r.exit_code == 0, r.output
    assert "user 'alice' created" in r.output
    r = run("users", "add", "bob", "--password-stdin", "--data-dir", d, input="bob-password\n")
    assert r.exit_code == 0, r.output
    r = run("users", "add", "alice", "--password", "another-pass", "--data-dir", d)
    assert r.exit_code == 2 and "user 'alice' already exists" in r.output
    r = run("users", "add", "carol", "--password", "short", "--data-dir", d)
    assert r.exit_code == 2 and "at least 8 characters" in r.output and "Traceback" not in r.output
    r = run("users", "list", "--data-dir", d)
    assert r.exit_code == 0 and "alice" in r.output and "bob" in r.output
    r = run("users", "passwd", "bob", "--password", "bob-new-password", "--data-dir", d)
    assert r.exit_code == 0 and "tokens were revoked" in r.output
    r = run("users", "passwd", "nobody", "--password", "whatever-pw", "--data-dir", d)
    assert r.exit_code == 2 and "no user named 'nobody'" in r.output
    store = JobStore(f"sqlite:///{tmp_path}/plmserve.db")
    try:
        assert store.authenticate("bob", "bob-password") is None
        assert store.authenticate("bob", "bob-new-password") is not None
        assert store.authenticate("alice", "alice-password") is not None
    finally:
        store.close()


def test_jobs_list_show_cancel(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path))
    store = JobStore(f"sqlite:///{tmp_path}/plmserve.db")
    a = store.create_job("/poet", "user:alice", {"prompt_id": "p"})
    b = store.create_job("/align/align", "user:bob", {})
    store.claim(b.job_id)
    store.fail(b.job_id, "no sequence database is configured")
    store.close()
    r = run("jobs", "list", "--json")
    assert r.exit_code == 0, r.output
    jobs = json.loads(r.stdout)
    assert [j["job_id"] for j in jobs] == [b.job_id, a.job_id]
    r = run("jobs", "list", "--user", "alice", "--json")
    assert [j["job_id"] for j in json.loads(r.stdout)] == [a.job_id]
    r = run("jobs", "list", "--status", "failure", "--json")
    assert [j["failure_message"] for j in json.loads(r.stdout)] == ["no sequence database is configured"]
    r = run("jobs", "list")
    assert r.exit_code == 0 and "FAILURE" in r.output
    r = run("jobs", "show", a.job_id)
    shown = json.loads(r.stdout)
    assert shown["status"] == "PENDING" and shown["args"] == {"prompt_id": "p"} and shown["owner"] == "user:alice"
    r = run("jobs", "cancel", a.job_id)
    assert r.exit_code == 0 and "CANCELED" in r.output
    r = run("jobs", "cancel", a.job_id)
    assert r.exit_code == 2 and "already CANCELED" in r.output
    r = run("jobs", "show", "no-such-job")
    assert r.exit_code == 2 and "job no-such-job not found" in r.output


def test_jobs_against_a_server(tmp_path):
    from plmserve.api.app import create_app
    from plmserve.settings import Settings
    from tests.client.support import LiveServer

    settings = Settings(data_dir=tmp_path, api_keys=["k"])
    store = JobStore(settings.resolved_database_url())
    store.add_user("alice", "alice-password")
    mine = store.create_job("/poet", "user:alice", {})
    store.create_job("/poet", "user:bob", {})
    store.close()
    with LiveServer(create_app(settings)) as srv:
        creds = ["--server", srv.url, "--username", "alice", "--password", "alice-password"]
        r = run("jobs", "list", "--json", *creds)
        assert r.exit_code == 0, r.output
        # the server re-queued the PENDING job on start-up; it fails (no worker for its prompt)
        assert [j["job_id"] for j in json.loads(r.stdout)] == [mine.job_id]
        r = run("jobs", "show", mine.job_id, *creds)
        assert json.loads(r.stdout)["job_id"] == mine.job_id
        r = run("jobs", "list", "--server", srv.url, "--username", "alice", "--password", "wrong-pass")
        assert r.exit_code == 2 and "invalid username or password" in r.output
