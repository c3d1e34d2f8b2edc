"""No network: one fast check of the hub, one message naming the cause (issue 12 item 3).

The suite's autouse fixture sets HF_HUB_OFFLINE=1; these tests remove it and point the hub at a
closed local port (or an unresolvable host) instead, as on a machine without a network."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import pytest

from plmserve.errors import WeightsNotFoundError
from plmserve.models import hub
from plmserve.models.registry import get_spec
from plmserve.settings import Settings
from tests.datafiles import REPO_ROOT


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    port = closed_port()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("PLMSERVE_OFFLINE", raising=False)
    monkeypatch.delenv("PLMSERVE_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub.clear_cache()
    yield port
    hub.clear_cache()


def test_closed_port_is_refused_quickly(no_network):
    t0 = time.monotonic()
    reason = hub.hub_unreachable()
    assert reason == f"http://127.0.0.1:{no_network} unreachable: connection to 127.0.0.1:{no_network} refused"
    assert time.monotonic() - t0 < 3


def test_unresolvable_host_blames_dns():
    reason = hub.check_reachable("https://no-such-host.invalid")
    # "failed (Name or service not known)", or "took longer than 1.5 s" where DNS itself hangs
    assert reason is not None and reason.startswith("DNS lookup of no-such-host.invalid ")


def test_reachable_endpoint_answers_none():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub.check_reachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None


def test_the_answer_is_remembered(no_network, monkeypatch):
    first = hub.hub_unreachable()
    monkeypatch.setattr(hub, "check_reachable", lambda *a, **k: pytest.fail("checked the network twice"))
    assert hub.hub_unreachable() == first


def test_offline_setting_and_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PLMSERVE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not hub.hub_offline(Settings(offline=False))
    assert hub.hub_offline(Settings(offline=True))
    monkeypatch.setenv("PLMSERVE_OFFLINE", "1")
    assert hub.hub_offline(None)


def test_esm2_blames_the_network(no_network):
    from plmserve.models.esm2.weights import locate_weights

    t0 = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(get_spec("esm2-8m"), Settings(model_dir=None))
    message = str(info.value)
    assert time.monotonic() - t0 < 5
    assert f"The network is the cause: http://127.0.0.1:{no_network} unreachable" in message
    assert "no weights in the repository" not in message
    assert "PLMSERVE_OFFLINE=1" in message and "plmserve models pull" in message
    assert "Hugging Face cache" in message  # the places searched are named


def test_esm3_blames_the_network(no_network):
    from plmserve.models.esm3.loader import locate_weights

    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(get_spec("esm3-open-2024-03"), Settings(model_dir=None))
    message = str(info.value)
    assert "the network is the cause" in message and "refused" in message
    assert "PLMSERVE_OFFLINE=1" in message


def _cli(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PLMSERVE_OFFLINE", "PLMSERVE_MODEL_DIR")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])
    return subprocess.run([sys.executable, "-m", "plmserve", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_esm3_generate_fails_at_once_with_one_message(no_network, tmp_path):
    """Before: ~50 s and ~40 'Retrying in 8s' warnings from huggingface_hub, then the error."""
    t0 = time.monotonic()
    proc = _cli({}, "esm3", "generate", "--length", "8", "--num-steps", "1")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "Retry" not in proc.stderr and "WARNING" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: weights of model 'esm3-open-2024-03' not found")
    assert f"127.0.0.1:{no_network} refused" in lines[0]
    assert elapsed < 30  # process start + imports; the hub check itself is ~1 ms against a closed port


def test_models_pull_fails_fast_without_network(no_network, tmp_path):
    proc = _cli({}, "models", "pull", "esm2-8m", "--dir", str(tmp_path / "new" / "models"))
    assert proc.returncode == 2
    assert "unreachable" in proc.stderr and "PLMSERVE_OFFLINE=1" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_failed_single_file_pull_leaves_no_folder(tmp_path, monkeypatch):
    """A failed ``models pull --dir`` removes the folders it created (issue 12 item 6)."""
    import http.server
    import threading

    from plmserve.models import registry
    from typer.testing import CliRunner

    from plmserve.cli import app

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = dataclasses.replace(get_spec("poet"),
                                   download_url=f"http://127.0.0.1:{server.server_port}/poet.ckpt")
        monkeypatch.setitem(registry._BY_NAME, "poet", spec)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        target = tmp_path / "fresh" / "weights"
        res = CliRunner().invoke(app, ["models", "pull", "poet", "--dir", str(target)])
        assert res.exit_code == 2 and "404" in res.output
        assert not (tmp_path / "fresh").exists()
        existing = tmp_path / "kept"
        existing.mkdir()
        res = CliRunner().invoke(app, ["models", "pull", "poet", "--dir", str(existing)])
        assert res.exit_code == 2 and existing.is_dir() and list(existing.iterdir()) == []
    finally:
        server.shutdown()


def test_esm2_blames_dns_when_the_name_does_not_resolve(no_network, monkeypatch):
    from plmserve.models.esm2.weights import locate_weights

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.no-such-host.invalid")
    hub.clear_cache()
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(get_spec("esm2-35m"), Settings(model_dir=None))
    assert "The network is the cause: https://hub.no-such-host.invalid unreachable: DNS lookup of " \
        "hub.no-such-host.invalid " in str(info.value)
