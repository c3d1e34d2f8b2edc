"""v1 auth of the current OpenProtein API (openprotein-python 0.17): login, refresh, timing parity
and credentials kept out of the access log (spec ``openprotein-v1-api.md`` §1.2)."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import plmserve.jobs.store as store_mod
from plmserve.api.access_log import RedactCredentials, redact
from plmserve.jobs.store import JobStore
from plmserve.settings import Settings
from tests.client.support import LiveServer, add_users, make_app


@pytest.fixture
def app(tmp_path):
    return make_app(Settings(data_dir=tmp_path, api_keys=["admin-key"]), users={"alice": "alice-password"})


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def login(client, password="alice-password"):
    return client.post("/api/v1/auth/login", data={"username": "alice", "password": password},
                       headers={"X-Token-Delivery": "body"})


def test_login_returns_a_token_pair_that_works(client):
    r = login(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["access_token"] and body["refresh_token"] and body["access_token"] != body["refresh_token"]
    assert 0 < body["expires_in"] <= 86400 and body["token_type"] == "bearer"
    auth = {"authorization": f"Bearer {body['access_token']}"}
    assert client.get("/api/v1/jobs", headers=auth).status_code == 200
    # a refresh token is not an access token
    assert client.get("/api/v1/jobs", headers={"authorization": f"Bearer {body['refresh_token']}"}).status_code == 401


def test_login_errors_are_4xx(client):
    assert login(client, "wrong-password").status_code == 401
    r = client.post("/api/v1/auth/login", data={"username": "nobody", "password": "whatever-pw"})
    assert r.status_code == 401 and r.json() == {"detail": "invalid username or password"}
    assert client.post("/api/v1/auth/login", data={"username": "alice"}).status_code == 400
    assert client.post("/api/v1/auth/login").status_code == 400


def test_refresh_rotates_and_rejects_unknown_used_and_expired_tokens(client, app):
    first = login(client).json()
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["access_token"] != first["access_token"]
    assert client.get("/api/v1/jobs", headers={"authorization": f"Bearer {second['access_token']}"}).status_code == 200
    # one use only
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
    # forgotten (e.g. another server's), missing, malformed
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": "not-a-token"}).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={}).status_code == 401
    assert client.post("/api/v1/auth/refresh", content=b"{not json",
                       headers={"content-type": "application/json"}).status_code == 401
    # expired
    from datetime import timedelta

    store = app.state.job_service.store
    user = store.authenticate("alice", "alice-password")
    stale = store.issue_refresh_token(user.id, lifetime=timedelta(seconds=-1))
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": stale}).status_code == 401
    # a password change revokes refresh tokens too
    live = login(client).json()["refresh_token"]
    store.set_password("alice", "new-password-1")
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": live}).status_code == 401


def test_unknown_user_and_wrong_password_cost_one_scrypt_each(tmp_path, monkeypatch):
    store = JobStore(f"sqlite:///{tmp_path}/t.db")
    store.add_user("alice", "alice-password")
    store_mod._dummy_hash()  # computed once, ahead of time
    calls = []
    real = store_mod.hashlib.scrypt

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(store_mod.hashlib, "scrypt", counting)
    assert store.authenticate("alice", "wrong-password") is None
    wrong = len(calls)
    calls.clear()
    assert store.authenticate("nobody", "wrong-password") is None
    assert len(calls) == wrong == 1
    store.close()


def test_redact():
    assert redact("/api/v1/login/user-access-token?username=alice&password=s3cr%26t") == \
        "/api/v1/login/user-access-token?username=***&password=***"
    assert redact("/api/v1/jobs?status=SUCCESS&page_size=5") == "/api/v1/jobs?status=SUCCESS&page_size=5"


def test_no_credential_reaches_the_uvicorn_access_log(app):
    """A real uvicorn server, real requests to every login route; the access log records are
    captured as formatted by uvicorn's own formatter."""
    from uvicorn.logging import AccessFormatter

    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record)

    access = logging.getLogger("uvicorn.access")
    handler = Capture()
    old_level, old_disabled = access.level, access.disabled
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.disabled = False
    try:
        with LiveServer(app) as srv:
            # uvicorn's dictConfig replaced the handlers and set log_level=warning: capture from here
            access.addHandler(handler)
            access.setLevel(logging.INFO)
            base = srv.url + "/api/v1"
            secret_user, secret_pw = "alice", "alice-password"
            r1 = httpx.post(f"{base}/login/user-access-token",
                               params={"username": secret_user, "password": secret_pw}, timeout=30)
            r2 = httpx.post(f"{base}/login/access-token",
                               params={"username": secret_user, "password": "wrong-password"}, timeout=30)
            r3 = httpx.post(f"{base}/auth/login", data={"username": secret_user, "password": secret_pw},
                               timeout=30)
            r4 = httpx.post(f"{base}/auth/refresh", json={"refresh_token": r3.json()["refresh_token"]},
                               timeout=30)
            assert (r1.status_code, r2.status_code, r3.status_code, r4.status_code) == (200, 401, 200, 200)
            deadline = time.monotonic() + 5
            while len(records) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
        access.disabled = old_disabled
    assert any(isinstance(f, RedactCredentials) for f in access.filters)
    fmt = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    lines = [fmt.format(r) for r in records]
    assert len([ln for ln in lines if "/login/" in ln]) == 2, lines
    assert any("username=***&password=***" in ln for ln in lines), lines
    for ln in lines:
        assert "alice-password" not in ln and "wrong-password" not in ln and "username=alice" not in ln, ln
        assert r4.json()["refresh_token"] not in ln


def test_plmserve_serve_log_has_no_credentials(tmp_path):
    """The real ``plmserve serve`` process (its own uvicorn logging configuration): every login
    route is called with a real password; the server's whole output is then searched for it."""
    from tests.serving._live import LiveServer as ServeProcess

    add_users(f"sqlite:///{tmp_path}/data/plmserve.db", {"carol": "carol-secret-pw"})
    srv = ServeProcess(tmp_path, "--api-key", "admin-key", env={"PYTHONUNBUFFERED": "1"}, load_format=None)
    try:
        base = f"{srv.base}/api/v1"
        creds = {"username": "carol", "password": "carol-secret-pw"}
        assert httpx.post(f"{base}/login/user-access-token", params=creds, timeout=30).status_code == 200
        assert httpx.post(f"{base}/login/access-token", params=creds, timeout=30).status_code == 200
        r = httpx.post(f"{base}/auth/login", data=creds, timeout=30)
        assert r.status_code == 200
        assert httpx.post(f"{base}/auth/refresh", json={"refresh_token": r.json()["refresh_token"]},
                          timeout=30).status_code == 200
        assert httpx.post(f"{base}/auth/login", params=creds, data=creds, timeout=30).status_code == 200
    finally:
        srv.stop(timeout=60)
    log = srv.log
    text = log.read_text()
    assert "/api/v1/login/user-access-token?username=***&password=***" in text, text  # the access log is on
    assert "carol-secret-pw" not in text and "username=carol" not in text
    assert r.json()["refresh_token"] not in text
