"""The CLI's small edges (issue 12 item 6): --version, doctor, on/off flags, the serve banner and
--help, the dummy-weights warning printed once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import uvicorn
from typer.testing import CliRunner

from plmserve import __version__
from plmserve.cli import app
from plmserve.settings import Settings
from tests.conftest import shared_path
from tests.datafiles import REPO_ROOT

runner = CliRunner()


def _subprocess(*args: str, env_extra: dict | None = None, code: str | None = None):
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "plmserve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_version_flag():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"plmserve {__version__}"


def test_flags_have_no_value_in_help_and_take_no_value(tmp_path):
    r = runner.invoke(app, ["msa", "info", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    assert "<bool>" not in r.stdout
    assert re.search(r"--json\s+--no-json\s+print one JSON object", r.stdout), r.stdout
    for args in (["prompt", "sample", "--help"], ["jobs", "list", "--help"], ["poet", "score", "--help"]):
        out = runner.invoke(app, args, env={"COLUMNS": "160"}).stdout
        assert "<bool>" not in out, args
    msa = tmp_path / "x.a3m"
    msa.write_text(">q\nACDE\n>h\nAC-E\n")
    assert json.loads(runner.invoke(app, ["msa", "info", str(msa), "--json"]).stdout)["rows"] == 2
    assert runner.invoke(app, ["msa", "info", str(msa), "--no-json"]).stdout.startswith("file")


@pytest.fixture()
def fake_uvicorn(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PLMSERVE_DATABASE_URL", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append((application, kw)))
    for var in ("PLMSERVE_API_KEYS", "PLMSERVE_NO_AUTH", "PLMSERVE_HOST", "PLMSERVE_PORT", "PLMSERVE_LOAD_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_banner_counts_users_when_there_are_no_api_keys(fake_uvicorn, tmp_path):
    from tests.client.support import add_users

    add_users(f"sqlite:///{tmp_path / 'data' / 'plmserve.db'}")  # alice and bob
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 0, r.output
    assert "auth: 0 API key(s), 2 job-service user(s)" in r.output
    r = runner.invoke(app, ["serve", "--api-key", "k1"])
    assert "auth: 1 API key(s), 2 job-service user(s)" in r.output


def test_serve_help_lists_every_setting():
    r = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for name in Settings.model_fields:
        assert f"PLMSERVE_{name.upper()}" in r.stdout, name
    assert "PLMSERVE_LOAD_FORMAT: auto: real weights; dummy: RANDOM weights" in r.stdout


def test_dummy_warning_printed_once_by_the_cli(tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKTAYIAK\n")
    proc = _subprocess("encode", str(fasta), "-o", str(tmp_path / "o.npz"), "-m", "esm2-8m",
                       "--load-format", "dummy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("RANDOM") == 1, proc.stderr


def test_dummy_warning_printed_once_by_serve(tmp_path):
    code = ("import sys, uvicorn; uvicorn.run = lambda *a, **k: None; sys.argv = ['plmserve'] + sys.argv[1:];"
            "from plmserve.cli import main; main()")
    proc = _subprocess("serve", "--no-auth", "--load-format", "dummy", code=code,
                       env_extra={"PLMSERVE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("RANDOM") == 1, proc.stderr
    assert "load-format: dummy" in proc.stderr


def test_doctor_reports_weights_database_and_backends(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(shared_path("fixtures", "poet", "model.ckpt"), models / "poet.ckpt")
    data = tmp_path / "data"
    from tests.client.support import add_users

    add_users(f"sqlite:///{data / 'plmserve.db'}", {"alice": "alice-password"})
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(data))
    monkeypatch.delenv("PLMSERVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PLMSERVE_MSA_DATABASE", raising=False)
    r = runner.invoke(app, ["doctor", "--json", "--model-dir", str(models)])
    assert r.exit_code == 0, r.output
    checks = {(c["area"], c["name"]): c for c in json.loads(r.stdout)}
    assert checks[("runtime", "torch")]["status"] == "ok"
    assert checks[("runtime", "device")]["detail"].startswith(("cpu", "cuda"))
    assert checks[("models", "poet")] == {"area": "models", "name": "poet", "status": "ok",
                                          "detail": f"file: {models / 'poet.ckpt'}"}
    assert checks[("models", "esm2-650m")]["status"] == "warn"
    assert checks[("network", "Hugging Face hub")]["detail"].startswith("offline mode")
    assert checks[("database", "job database")]["status"] == "ok"
    assert checks[("database", "job database")]["detail"].endswith("reachable, 1 user(s)")
    assert checks[("search", "pyhmmer")]["status"] == "ok"
    assert checks[("search", "sequence database")]["status"] == "warn"
    assert "GiB free" in checks[("resources", "disk (data dir)")]["detail"]
    assert "GiB available" in checks[("resources", "memory")]["detail"]
    # the table form, and a database that cannot be reached: exit 1
    monkeypatch.setenv("PLMSERVE_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/none")
    r = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "cannot connect" in r.stdout and "pw@" not in r.stdout
