"""``plmserve jobs list`` says which database it read (issue 12 item 5)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from plmserve.cli import app

runner = CliRunner()


def test_default_database_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PLMSERVE_DATA_DIR", raising=False)
    monkeypatch.delenv("PLMSERVE_DATABASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    r = runner.invoke(app, ["jobs", "list", "--json"])
    assert r.exit_code == 0, r.output
    db = tmp_path / ".local" / "share" / "plmserve" / "plmserve.db"
    assert (f"database: sqlite:///{db} (default SQLite file: neither PLMSERVE_DATABASE_URL nor "
            "PLMSERVE_DATA_DIR is set)") in r.stderr
    assert json.loads(r.stdout) == []  # stdout stays machine-readable


def test_data_dir_and_url_are_named_password_hidden(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path))
    r = runner.invoke(app, ["jobs", "list"])
    assert r.exit_code == 0, r.output
    assert f"database: sqlite:///{tmp_path}/plmserve.db (SQLite file in PLMSERVE_DATA_DIR)" in r.stderr
    r = runner.invoke(app, ["jobs", "list", "--database-url", f"sqlite:///{tmp_path}/other.db"])
    assert f"database: sqlite:///{tmp_path}/other.db (--database-url)" in r.stderr
    from plmserve.cli.jobs import describe_database
    from plmserve.settings import Settings

    line = describe_database(Settings(database_url="postgresql+psycopg://u:secret@db:5432/jobs"))
    assert line == "postgresql+psycopg://u:***@db:5432/jobs (PLMSERVE_DATABASE_URL)"
