"""``plmserve serve``: flags over env settings, auth refusals, uvicorn wiring (uvicorn.run faked)."""

from __future__ import annotations

import pytest
import uvicorn
from typer.testing import CliRunner

from plmserve.cli import app
from tests.cli._support import one_line_error as _one_line_error

runner = CliRunner()


@pytest.fixture()
def fake_uvicorn(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path / "data"))  # an empty job store: no users
    monkeypatch.delenv("PLMSERVE_DATABASE_URL", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append((application, kw)))
    for var in ("PLMSERVE_API_KEYS", "PLMSERVE_NO_AUTH", "PLMSERVE_HOST", "PLMSERVE_PORT", "PLMSERVE_LOAD_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_no_auth_refused_on_public_host(fake_uvicorn):
    line = _one_line_error(runner.invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0"]))
    assert "--no-auth" in line and "127.0.0.1" in line
    assert fake_uvicorn == []


def test_no_keys_refused_with_explanation(fake_uvicorn):
    line = _one_line_error(runner.invoke(app, ["serve"]))
    assert "PLMSERVE_API_KEYS" in line and "--no-auth" in line
    assert fake_uvicorn == []


def test_job_service_users_are_enough_without_api_keys(fake_uvicorn, tmp_path):
    from tests.client.support import add_users

    add_users(f"sqlite:///{tmp_path / 'data' / 'plmserve.db'}", {"alice": "alice-password"})
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 0, r.output
    assert fake_uvicorn and fake_uvicorn[0][0].state.settings.api_keys == []


def test_bad_load_format(fake_uvicorn):
    line = _one_line_error(runner.invoke(app, ["serve", "--no-auth", "--load-format", "fast"]))
    assert "--load-format" in line


def test_flags_start_uvicorn(fake_uvicorn, tmp_path):
    r = runner.invoke(app, ["serve", "--port", "8123", "--api-key", "k1", "--api-key", "k2",
                            "--load-format", "dummy", "--model-dir", str(tmp_path), "--host", "0.0.0.0"])
    assert r.exit_code == 0, r.output
    (application, kw) = fake_uvicorn[0]
    assert kw["host"] == "0.0.0.0" and kw["port"] == 8123
    s = application.state.settings
    assert s.api_keys == ["k1", "k2"] and s.load_format == "dummy" and s.model_dir == tmp_path
    assert "dummy" in r.output  # the random-weights warning


def test_env_settings_and_flag_override(fake_uvicorn, monkeypatch):
    monkeypatch.setenv("PLMSERVE_API_KEYS", '["from-env"]')
    monkeypatch.setenv("PLMSERVE_PORT", "9001")
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 0, r.output
    application, kw = fake_uvicorn[-1]
    assert kw["port"] == 9001 and kw["host"] == "127.0.0.1"
    assert application.state.settings.api_keys == ["from-env"]
    r = runner.invoke(app, ["serve", "--port", "9002"])
    assert r.exit_code == 0, r.output
    assert fake_uvicorn[-1][1]["port"] == 9002


def test_no_auth_env_on_public_host_refused(fake_uvicorn, monkeypatch):
    monkeypatch.setenv("PLMSERVE_NO_AUTH", "1")
    _one_line_error(runner.invoke(app, ["serve", "--host", "0.0.0.0"]))
    assert fake_uvicorn == []
