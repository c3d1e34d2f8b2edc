"""The OpenAPI document is complete (file fields, form login, error statuses) and ``plmserve serve``
passes keep-alive, the shut-down drain and the allowlist to uvicorn / the settings."""

from __future__ import annotations

import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from plmserve.api.app import create_app
from plmserve.cli import app as cli_app
from plmserve.settings import Settings


def test_openapi_has_file_fields_form_login_and_error_statuses(tmp_path):
    doc = TestClient(create_app(Settings(api_keys=["k"], data_dir=tmp_path))).get("/openapi.json").json()
    paths = doc["paths"]
    for path, field in (("/api/v1/poet/align/msa", "msa_file"), ("/api/v1/align/upload_prompt", "prompt_file"),
                        ("/api/v1/poet/score", "variant_file")):
        schema = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["properties"][field]["format"] == "binary", path
    login = paths["/api/v1/login/user-access-token"]["post"]["requestBody"]["content"]
    assert set(login["application/x-www-form-urlencoded"]["schema"]["properties"]) == {"username", "password"}
    assert {"401", "413", "429"} <= set(paths["/api/v1/login/user-access-token"]["post"]["responses"])
    encode = paths["/api/v2/{slug}/encode/"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "422", "503"} <= set(encode)
    assert {"409", "429"} <= set(paths["/api/v1/poet/score"]["post"]["responses"])
    assert "503" in paths["/ready"]["get"]["responses"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["detail"]


def test_serve_flags_reach_uvicorn(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append((application, kw)))
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path))
    r = CliRunner().invoke(cli_app, ["serve", "--api-key", "k", "--models", "esm2_t6_8M_UR50D,poet",
                                     "--shutdown-timeout", "7"])
    assert r.exit_code == 0, r.output
    application, kw = calls[0]
    assert kw["timeout_keep_alive"] >= 75 and kw["timeout_graceful_shutdown"] == 7
    assert application.state.settings.served_models == ["esm2_t6_8M_UR50D", "poet"]
    assert application.state.models.allowlist() == ["esm2-8m", "poet"]
    r = CliRunner().invoke(cli_app, ["serve", "--api-key", "k", "--models", "esm2-8m,nope"])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output
