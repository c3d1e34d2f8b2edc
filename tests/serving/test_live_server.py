"""A real ``plmserve serve`` (uvicorn, esm2-8m dummy): cancellation on disconnect, limits that answer
before any work, request ids and access logs, keep-alive, readiness, metrics, bounded shut-down."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serving._live import AUTH, KEY, LiveServer

AA = list("LAGVSERTIDPKQNFYMHWC")


def seq(n: int, seed: int = 0) -> str:
    return "".join(np.random.default_rng(seed).choice(AA, n))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = LiveServer(tmp_path_factory.mktemp("live"), "--models", "esm2-8m,poet", env={
        "PLMSERVE_MAX_BODY_BYTES": "200000", "PLMSERVE_MAX_QUEUE_ITEMS": "1500",
        "PLMSERVE_MAX_FORWARD_PASSES": "2500"})
    r = httpx.post(f"{s.base}/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKTAYIAKQR"}]},
                   headers=AUTH, timeout=120)  # load the model once
    assert r.status_code == 200, r.text
    yield s
    s.stop()


def _pll(server, sequences, read_timeout):
    return httpx.post(f"{server.base}/api/v2/esm2-8m/log_prob/", json={"items": [{"sequence": q} for q in sequences]},
                      headers=AUTH, timeout=httpx.Timeout(10.0, read=read_timeout))


def test_disconnected_client_work_stops(server):
    before = server.metric("plmserve_batches_total", model="esm2-8m", method="log_prob")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        _pll(server, [seq(1000, 1)], read_timeout=3)
    time.sleep(2.0)
    a = server.metric("plmserve_batches_total", model="esm2-8m", method="log_prob")
    time.sleep(2.0)
    b = server.metric("plmserve_batches_total", model="esm2-8m", method="log_prob")
    assert a > before, "the request was being computed"
    assert b == a, f"batches still computed after the client left ({a} -> {b})"
    assert b - before < 200  # the whole request is ~250 batches of 4 masked copies
    assert server.metric("plmserve_queue_depth", model="esm2-8m") == 0
    assert server.metric("plmserve_model_requests_total", model="esm2-8m", method="log_prob", outcome="canceled") >= 1


def test_health_answers_in_milliseconds_under_load(server):
    threads = [threading.Thread(target=lambda i=i: _pll(server, [seq(300, 10 + i)], read_timeout=120))
               for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    worst = 0.0
    for _ in range(10):
        t0 = time.perf_counter()
        assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert worst < 0.5, f"/health took {worst:.3f} s under load"


def test_full_queue_is_503_with_retry_after(server):
    bg = threading.Thread(target=lambda: pytest.raises(httpx.ReadTimeout, _pll, server, [seq(1000, 2)], 4))
    bg.start()
    time.sleep(1.0)  # ~1000 masked copies queued; the limit is 1500
    r = _pll(server, [seq(800, 3)], read_timeout=30)
    bg.join()
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "PLMSERVE_MAX_QUEUE_ITEMS" in r.json()["detail"] and "1500" in r.json()["detail"]


def test_forward_pass_limit(server):
    r = _pll(server, [seq(1000, 4), seq(1000, 5), seq(1000, 6)], read_timeout=30)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "3000 forward passes" in detail and "2500" in detail and "PLMSERVE_MAX_FORWARD_PASSES" in detail
    assert server.metric("plmserve_queue_depth", model="esm2-8m") == 0


def test_body_limit_before_parsing_and_auth(server):
    big = json.dumps({"items": [{"sequence": "A" * 300_000}]})
    r = httpx.post(f"{server.base}/api/v2/esm2-8m/encode/", content=big,
                   headers={"content-type": "application/json"}, timeout=30)  # no credentials
    assert r.status_code == 413, r.text
    assert "300" in r.json()["detail"] and "200000" in r.json()["detail"] and "max_body_bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the stream is counted
        for _ in range(30):
            yield b"x" * 10_000

    r = httpx.post(f"{server.base}/api/v2/esm2-8m/encode/", content=chunks(),
                   headers={"content-type": "application/json", **AUTH}, timeout=30)
    assert r.status_code == 413, r.text


def test_model_allowlist(server):
    r = httpx.post(f"{server.base}/api/v2/esm2-35m/encode/", json={"items": [{"sequence": "MKT"}]}, headers=AUTH,
                   timeout=30)
    assert r.status_code == 404
    assert "esm2-8m, poet" in r.json()["detail"]
    assert "esm2-35m" not in httpx.get(f"{server.base}/health", timeout=5).json()["models_loaded"]


def test_request_id_and_access_log(server):
    r = httpx.get(f"{server.base}/health", headers={"X-Request-ID": "probe-42"}, timeout=5)
    assert r.headers["x-request-id"] == "probe-42"
    r = httpx.post(f"{server.base}/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKTW"}]},
                   headers={**AUTH, "X-Request-ID": "rid-encode-1"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "rid-encode-1"
    generated = httpx.get(f"{server.base}/ready", timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    bad = httpx.get(f"{server.base}/health", headers={"X-Request-ID": "x" * 500}, timeout=5)
    assert bad.headers["x-request-id"] != "x" * 500
    time.sleep(0.3)
    log = server.log.read_text()
    line = next(ln for ln in log.splitlines() if "[rid-encode-1]" in ln and "plmserve.access" in ln)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line)  # timestamp
    assert "POST /api/v2/esm2-8m/encode/ 200" in line and re.search(r" \d+\.\d{4}s ", line)
    assert "principal=key:" in line
    assert KEY not in log and KEY[:4] + "…" not in log  # never credentials


def test_keep_alive_longer_than_sdk_polling(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        req = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        for _ in range(2):
            sock.sendall(req)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the idle keep-alive connection"
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            while len(body) < length:
                body += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
            assert b"keep-alive" in head.lower() or b"connection: close" not in head.lower()
            time.sleep(6.5)  # the official openprotein SDK polls every 5 s; uvicorn's default is 5 s


def test_ready_and_metrics(server):
    r = httpx.get(f"{server.base}/ready", timeout=10)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"] == "ok" and checks["batch_workers"] == "ok"
    assert checks["models_loadable"] == ["esm2-8m", "poet"]
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    for name in ("plmserve_http_requests_total", "plmserve_http_request_duration_seconds_bucket",
                 "plmserve_queue_depth", "plmserve_batch_size_bucket", "plmserve_tokens_total",
                 "plmserve_tokens_per_second", "plmserve_model_memory_bytes", "plmserve_jobs"):
        assert name in text, name
    assert server.metric("plmserve_model_memory_bytes", model="esm2-8m") > 1e6


def test_bad_input_is_never_5xx(server):
    raw = '{"params": {"include": ["mean"], "repr_layers": [NaN]}, "items": [{"sequence": Infinity}]}'
    r = httpx.post(f"{server.base}/api/v2/esm2-8m/encode/", content=raw,
                   headers={**AUTH, "content-type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()
    r = httpx.get(f"{server.base}/api/v1/jobs", params={"page_offset": "9" * 40}, headers=AUTH, timeout=30)
    assert r.status_code == 422, r.text
    r = httpx.post(f"{server.base}/api/v1/generate_tensor", headers=AUTH, timeout=30, json={
        "model": "esm3-open-2024-03", "track": "sequence", "temperature": 1e200,
        "inputs": {"sequence": [0, 32, 32, 2]}})
    assert r.status_code == 400 and "temperature" in r.json()["detail"], r.text


def test_shutdown_drain_is_bounded(tmp_path):
    s = LiveServer(tmp_path, "--shutdown-timeout", "2")
    try:
        results = {}

        def long_request():
            try:
                results["r"] = _pll(s, [seq(1000, 7), seq(1000, 8)], read_timeout=300)
            except httpx.HTTPError as exc:
                results["e"] = exc

        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.monotonic() + 120
        while s.metric("plmserve_batches_total", model="esm2-8m", method="log_prob") < 1:
            assert time.monotonic() < deadline, "the request never started computing"
            time.sleep(0.5)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=60)
        took = time.monotonic() - t0
        t.join(30)
        assert took < 15, f"shut-down took {took:.1f} s with --shutdown-timeout 2"
    finally:
        s.stop()
