"""Authentication: Token / Bearer API keys, token validators, --no-auth only on loopback."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.api.auth import Principal, add_token_validator, check_auth_config, is_loopback, parse_authorization
from plmserve.errors import InvalidParameterError
from plmserve.settings import Settings

# An unknown slug answers 404 once the caller is authenticated, and 401 before: the route checks
# credentials first, so no model needs to exist for these tests.
URL = "/api/v2/esm2-nope/encode/"
BODY = {"items": [{"sequence": "MKT"}]}


@pytest.fixture()
def client() -> TestClient:
    return TestClient(create_app(Settings(api_keys=["s3cret", "other-key"])))


@pytest.mark.parametrize("header", ["Token s3cret", "Bearer s3cret", "token other-key", "BEARER  s3cret "])
def test_valid_key_passes(client, header):
    r = client.post(URL, json=BODY, headers={"Authorization": header})
    assert r.status_code == 404, r.text
    assert "esm2-nope" in r.json()["detail"]


def test_missing_credentials_is_401(client):
    r = client.post(URL, json=BODY)
    assert r.status_code == 401
    assert "Authorization: Token" in r.json()["detail"]
    assert r.headers["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("header", ["Token wrong", "Bearer s3cre", "Basic s3cret", "s3cret", "Token "])
def test_wrong_credentials_are_401(client, header):
    r = client.post(URL, json=BODY, headers={"Authorization": header})
    assert r.status_code == 401, header


def test_no_auth_accepts_anonymous():
    c = TestClient(create_app(Settings(no_auth=True)))
    assert c.post(URL, json=BODY).status_code == 404


def test_token_validator_hook():
    app = create_app(Settings(api_keys=["k"]))
    seen = []

    def validator(request, token):
        seen.append(token)
        return Principal(name="alice", kind="user", user_id=7) if token == "user-token" else None

    add_token_validator(app, validator)
    c = TestClient(app)
    assert c.post(URL, json=BODY, headers={"Authorization": "Bearer user-token"}).status_code == 404
    assert c.post(URL, json=BODY, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert seen == ["user-token", "nope"]


def test_parse_authorization():
    assert parse_authorization("Token abc") == "abc"
    assert parse_authorization("bearer abc") == "abc"
    assert parse_authorization("Basic abc") is None
    assert parse_authorization(None) is None


@pytest.mark.parametrize("host,ok", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                     ("0.0.0.0", False), ("192.168.1.5", False), ("::", False)])
def test_is_loopback(host, ok):
    assert is_loopback(host) is ok


def test_check_auth_config_rules():
    check_auth_config(Settings(no_auth=True, host="127.0.0.1"))
    check_auth_config(Settings(api_keys=["k"], host="0.0.0.0"))
    with pytest.raises(InvalidParameterError, match="only allowed when the server binds to 127.0.0.1"):
        check_auth_config(Settings(no_auth=True, host="0.0.0.0"))
    with pytest.raises(InvalidParameterError, match="PLMSERVE_API_KEYS"):
        check_auth_config(Settings(host="127.0.0.1"))


def test_api_keys_with_a_common_prefix_are_distinct_principals():
    """The principal name is the batching schedulers' fairness key: two keys sharing their first
    characters must not count as one client, and the name never contains the key."""
    from types import SimpleNamespace

    from plmserve.api.auth import require_principal

    keys = ["abcdefgh-key-one", "abcdefgh-key-two"]
    settings = SimpleNamespace(api_keys=keys, no_auth=False)
    names = []
    for key in keys:
        request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(settings=settings, token_validators=[])),
                                  headers={"authorization": f"Token {key}"}, state=SimpleNamespace())
        principal = require_principal(request)
        assert principal.kind == "key" and key[:4] not in principal.name.removeprefix("key:")
        names.append(principal.name)
    assert names[0] != names[1]
