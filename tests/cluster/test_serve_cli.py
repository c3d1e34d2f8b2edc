"""``plmserve serve --executor ... --ray-address ...``: bad values are refused with one clear line
(exit code 2) before anything is served."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from tests.client.support import free_port
from tests.cluster.support import cluster_env, ray_available

runner = CliRunner()


def test_unknown_executor_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMSERVE_DATA_DIR", str(tmp_path))
    res = runner.invoke(app, ["serve", "--no-auth", "--executor", "celery"])
    assert res.exit_code == 2
    assert "--executor must be 'inprocess' or 'ray', not 'celery'" in res.output


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (the dev extra installs it)")
def test_unreachable_ray_head_fails_fast_with_the_address(tmp_path):
    # a fresh process: this one may already be a Ray driver of another test's cluster
    addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    res = subprocess.run([sys.executable, "-c", "from plmserve.cli import main; main()", "serve", "--no-auth",
                          "--executor", "ray", "--ray-address", addr, "--port", str(free_port())],
                         env=cluster_env({"PLMSERVE_DATA_DIR": str(tmp_path)}), capture_output=True, text=True,
                         timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert f"no Ray head answers at {addr}" in out and "ray start --head" in out
    assert "Traceback" not in out
