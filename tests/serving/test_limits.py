"""Limits checked before any work (TestClient): uploads, PoET sequence length, single-site positions,
concurrent jobs per user, login attempts, memory budget with LRU eviction."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.api.auth import Principal
from plmserve.errors import ModelLoadError, ModelNotFoundError
from plmserve.models.registry import ModelManager, estimated_bytes, get_spec
from plmserve.settings import Settings

KEY = "limits-key"
AUTH = {"Authorization": f"Token {KEY}"}


@pytest.fixture
def make_client(tmp_path):
    clients = []

    def make(client_addr=("10.0.0.1", 5000), **overrides):
        settings = Settings(api_keys=[KEY], data_dir=tmp_path, load_format="dummy", **overrides)
        c = TestClient(create_app(settings), client=client_addr)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_upload_over_the_limit_is_413(make_client):
    c = make_client(max_upload_bytes=2000)
    r = c.post("/api/v1/poet/align/upload_prompt", headers=AUTH,
               files={"prompt_file": ("p.fasta", b">a\n" + b"A" * 5000 + b"\n")})
    assert r.status_code == 413, r.text
    assert "2000" in r.json()["detail"] and "PLMSERVE_MAX_UPLOAD_BYTES" in r.json()["detail"]


def test_poet_sequence_length_limit(make_client):
    c = make_client(poet_max_sequence_length=100)
    r = c.post("/api/v1/poet/score", params={"prompt_id": "nope"}, headers=AUTH,
               files={"variant_file": ("v.fasta", b">ok\nMKT\n>long\n" + b"A" * 150 + b"\n")})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "150 residues" in detail and "100" in detail and "PLMSERVE_POET_MAX_SEQUENCE_LENGTH" in detail


def test_single_site_positions_limit(make_client):
    c = make_client(poet_max_single_site_positions=50)
    r = c.post("/api/v1/poet/single_site", params={"variant": "A" * 60, "prompt_id": "nope"}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert "60 positions" in r.json()["detail"] and "PLMSERVE_POET_MAX_SINGLE_SITE_POSITIONS" in r.json()["detail"]
    # under the limit the request goes on (here: to the unknown prompt)
    r = c.post("/api/v1/poet/single_site", params={"variant": "A" * 40, "prompt_id": "nope"}, headers=AUTH)
    assert r.status_code == 400 and "invalid prompt" in r.json()["detail"]


def test_concurrent_jobs_per_user_is_429(make_client):
    from plmserve.api.openprotein import get_service, owner_of

    c = make_client(max_active_jobs_per_user=2)
    store = get_service(c.app).store
    owner = owner_of(Principal(name="k", kind="key"), KEY)
    for _ in range(2):
        store.create_job("/test/held", owner, status="RUNNING")
    r = c.post("/api/v1/poet/align/upload_prompt", headers=AUTH, files={"prompt_file": ("p.fasta", b">a\nMKT\n")})
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "10"
    assert "2 unfinished jobs" in r.json()["detail"] and "PLMSERVE_MAX_ACTIVE_JOBS_PER_USER" in r.json()["detail"]
    # another key's jobs do not count
    assert store.count_jobs(owner) == 2


def test_login_rate_limit_per_address_and_per_user(make_client, tmp_path):
    c1 = make_client(login_attempts_per_minute=3)
    from plmserve.api.openprotein import get_service

    get_service(c1.app).store.add_user("alice", "secret-pw-1")
    for _ in range(5):  # successful logins do not count
        assert c1.post("/api/v1/login/user-access-token",
                       data={"username": "alice", "password": "secret-pw-1"}).status_code == 200
    for _ in range(3):
        assert c1.post("/api/v1/login/user-access-token",
                       data={"username": "alice", "password": "wrong"}).status_code == 401
    r = c1.post("/api/v1/login/user-access-token", data={"username": "bob", "password": "x"})
    assert r.status_code == 429 and "address 10.0.0.1" in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    # from another address the user 'alice' is still limited (3 attempts this minute)
    c2 = TestClient(c1.app, client=("10.0.0.2", 5000))
    r = c2.post("/api/v1/login/user-access-token", params={"username": "alice", "password": "secret-pw-1"})
    assert r.status_code == 429 and "user 'alice'" in r.json()["detail"]
    assert "PLMSERVE_LOGIN_ATTEMPTS_PER_MINUTE" in r.json()["detail"]


def test_memory_budget_evicts_least_recently_used(tmp_path):
    small, mid = get_spec("esm2-8m"), get_spec("esm2-35m")
    budget = int(estimated_bytes(mid) * 1.1)  # esm2-35m fits, not beside esm2-8m (~30 MB)
    m = ModelManager(Settings(load_format="dummy", device="cpu", data_dir=tmp_path, memory_budget_bytes=budget))
    m.get("esm2-8m")
    assert m.loaded() == ["esm2-8m"] and m.used_bytes() > 0
    m.get("esm2-35m")  # does not fit beside esm2-8m: the least recently used model goes
    assert m.loaded() == ["esm2-35m"]
    with pytest.raises(ModelLoadError) as err:  # larger than the whole budget: 503 with sizes
        m.get("esm2-150m")
    assert err.value.status_code == 503
    assert "GiB" in str(err.value) and "memory budget" in str(err.value) and "PLMSERVE_MEMORY_BUDGET_BYTES" in str(err.value)
    assert m.loaded() == ["esm2-35m"]
    assert small.slug not in m.loaded()


def test_busy_model_is_not_evicted(tmp_path):
    budget = int(estimated_bytes(get_spec("esm2-35m")) * 1.1)
    m = ModelManager(Settings(load_format="dummy", device="cpu", data_dir=tmp_path, memory_budget_bytes=budget))
    m.get("esm2-8m")
    m.busy_checks.append(lambda slug: slug == "esm2-8m")
    with pytest.raises(ModelLoadError, match="taken by models in use"):
        m.get("esm2-35m")
    assert m.loaded() == ["esm2-8m"]


def test_allowlist_refuses_other_models(tmp_path):
    m = ModelManager(Settings(load_format="dummy", data_dir=tmp_path, served_models=["esm2_t6_8M_UR50D", "poet"]))
    assert m.allowlist() == ["esm2-8m", "poet"] and m.loadable() == ["esm2-8m", "poet"]
    with pytest.raises(ModelNotFoundError, match="not served by this server; served models: esm2-8m, poet"):
        m.get("esm2-3b")
