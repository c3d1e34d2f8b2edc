"""Serving limits of the ESM3 engine behind the Forge routes (issue 14): a bounded number of queued
or running requests (503 + Retry-After naming the setting), admission fair between principals,
a disconnected client's session no longer stepped, Prometheus metrics by model slug.

The engine is held busy deterministically with a blocking call (a ``threading.Event``), so the
tests assert orderings and counters, never wall-clock thresholds."""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.api.forge import _engine_for
from plmserve.errors import ServiceUnavailableError
from plmserve.models.esm3.engine import GenerationEngine
from plmserve.models.esm3.sampler import GenerationConfig, generate_tensor
from plmserve.serving.ops import key_label
from plmserve.settings import Settings
from tests.models.esm3.test_generate_fixtures import load_fixture_model
from tests.models.esm3.test_sampler import masked_sequence

SLUG = "esm3-open-2024-03"
KEYS = ["aaaa-key-one", "bbbb-key-two"]
A, B = ({"Authorization": f"Bearer {k}"} for k in KEYS)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _body(length: int = 20, **extra) -> dict:
    return {"model": SLUG, "track": "sequence", "inputs": {"sequence": [0] + [32] * length + [2]}, **extra}


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0.0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def _wait_until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _hold(engine: GenerationEngine) -> threading.Event:
    """Keep the engine's worker busy in a call until the returned event is set."""
    gate = threading.Event()
    started = threading.Event()

    def block(model):
        started.set()
        gate.wait(60)

    engine.submit_call(block, principal="holder", method="test_hold")
    assert started.wait(30)
    return gate


@pytest.fixture(scope="module")
def model():
    return load_fixture_model()


@pytest.fixture
def app(model):
    app = create_app(Settings(api_keys=KEYS, esm3_batch_window_ms=0, esm3_max_sessions=3, esm3_max_batch_size=1))
    app.state.models.put(SLUG, model)
    return app


# ---------------------------------------------------------------------------------------------
# bounded queue
# ---------------------------------------------------------------------------------------------


def test_full_engine_is_503_with_retry_after_naming_the_limit(app, model):
    with TestClient(app) as client:
        ok = client.post("/api/v1/generate_tensor", json=_body(num_steps=4, seed=1), headers=A)
        assert ok.status_code == 200, ok.text
        engine = _engine_for(app, model, SLUG)
        gate = _hold(engine)  # 1 running call
        try:
            pending = [engine.submit(masked_sequence(20), GenerationConfig(track="sequence", num_steps=2),
                                     principal="other") for _ in range(2)]  # 3 = the limit
            for path, body in (("/api/v1/generate_tensor", _body(num_steps=4)),
                               ("/api/v1/generate", {"model": SLUG, "inputs": {"sequence": "MK__A"}}),
                               ("/api/v1/logits", {"model": SLUG, "inputs": {"sequence": [0, 20, 15, 2]}})):
                r = client.post(path, json=body, headers=A)
                assert r.status_code == 503, (path, r.text)
                assert int(r.headers["Retry-After"]) >= 1
                detail = r.json()["detail"]
                assert "PLMSERVE_ESM3_MAX_SESSIONS" in detail and "limit is 3" in detail and "3 ESM3 requests" in detail
        finally:
            gate.set()
        for f in pending:
            f.result(timeout=30)
        _wait_until(lambda: engine.sessions == 0, "the engine to drain")
        again = client.post("/api/v1/generate_tensor", json=_body(num_steps=4, seed=1), headers=A)
        assert again.status_code == 200 and again.json() == ok.json()
        assert engine.stats.rejected == 3
        text = client.get("/metrics").text
        assert _metric(text, "plmserve_model_requests_total", model=SLUG, method="generate_tensor",
                       outcome="rejected") >= 1
        assert _metric(text, "plmserve_model_requests_total", model=SLUG, method="logits", outcome="rejected") >= 1
        assert _metric(text, "plmserve_model_requests_total", model=SLUG, method="generate_tensor",
                       outcome="ok") >= 2
        assert _metric(text, "plmserve_batches_total", model=SLUG, method="esm3_step") >= 8
        assert _metric(text, "plmserve_batch_size_count", model=SLUG) >= 8
        assert f'plmserve_queue_depth{{model="{SLUG}"}} 0.0' in text


def test_engine_limit_counts_running_and_waiting_requests(model):
    engine = GenerationEngine(model, batch_window_ms=0, max_batch_size=1, max_sessions=2, name="limit-test")
    try:
        gate = _hold(engine)
        f = engine.submit(masked_sequence(12), GenerationConfig(track="sequence", num_steps=2), principal="x")
        assert engine.sessions == 2 and engine.queued == 1
        with pytest.raises(ServiceUnavailableError) as exc:
            engine.submit(masked_sequence(12), GenerationConfig(track="sequence", num_steps=2))
        assert exc.value.status_code == 503 and "limit is 2" in str(exc.value)
        gate.set()
        f.result(timeout=30)
        _wait_until(lambda: engine.sessions == 0, "the engine to drain")
        engine.submit(masked_sequence(12), GenerationConfig(track="sequence", num_steps=2)).result(timeout=30)
    finally:
        engine.close()


# ---------------------------------------------------------------------------------------------
# fairness between principals
# ---------------------------------------------------------------------------------------------


def _finish_order(engine: GenerationEngine, futures: dict) -> list[str]:
    order: list[str] = []
    lock = threading.Lock()

    def done(name, _):
        with lock:
            order.append(name)

    for fut, name in futures.items():
        fut.add_done_callback(functools.partial(done, name))
    return order


@pytest.mark.parametrize("batch", [1, 2])
def test_single_request_is_not_starved_by_a_backlog(model, batch):
    """A's 6 requests are queued before B's single one; B finishes with A's first admitted ones,
    not after A's backlog (FIFO would finish it last)."""
    cfg = GenerationConfig(track="sequence", num_steps=6, temperature=1.0)
    engine = GenerationEngine(model, batch_window_ms=0, max_batch_size=batch, name="fair-test")
    try:
        gate = _hold(engine)
        futures = {engine.submit(masked_sequence(20, seed=i), cfg, seed=i, principal="A"): f"A{i}" for i in range(6)}
        futures[engine.submit(masked_sequence(20, seed=9), cfg, seed=9, principal="B")] = "B"
        order = _finish_order(engine, futures)
        assert engine.queued == 7
        gate.set()
        results = {name: f.result(timeout=60) for f, name in futures.items()}
    finally:
        engine.close()
    assert sorted(order) == sorted(futures.values())
    assert order.index("B") <= 1, order  # B runs in the first admission round
    assert order[-1].startswith("A") and order.index("B") < order.index("A1")
    assert engine.stats.max_batch == batch  # never more sessions stepped at once than the limit
    # fairness changes only when a request runs, not its tokens
    expected = generate_tensor(model, masked_sequence(20, seed=9), cfg, seed=9)
    assert results["B"].tokens.to_lists() == expected.tokens.to_lists()


def test_http_principals_are_admitted_round_robin(app, model):
    """Over HTTP, the principal of the API key is the fairness key: key B's request, sent after
    key A's backlog, completes second."""
    with TestClient(app) as client:
        engine = _engine_for(app, model, SLUG)
        engine.max_sessions = 20
        gate = _hold(engine)
        threads = []
        try:
            for i, auth in enumerate([A] * 5 + [B]):
                t = threading.Thread(target=client.post, args=("/api/v1/generate_tensor",),
                                     kwargs={"json": _body(num_steps=5, seed=i), "headers": auth})
                t.start()
                threads.append(t)
                _wait_until(lambda i=i: engine.queued == i + 1, f"request {i} to be queued")
            snap = [s for s in engine.snapshot() if s["state"] == "waiting"]
            principals = {s["principal"] for s in snap}
            assert len(principals) == 2, principals  # one key per principal
            key_b = key_label(KEYS[1])  # the principal of key B (a digest of the key)
            assert key_b in principals, principals
            order = _finish_order(engine, {s["future"]: s["principal"] for s in snap})
        finally:
            gate.set()
            for t in threads:
                t.join(60)
    assert len(order) == 6 and order.index(key_b) <= 1, order


# ---------------------------------------------------------------------------------------------
# client disconnects: the session is dropped, its remaining steps never computed
# ---------------------------------------------------------------------------------------------


class _UvicornThread:
    """The app served by uvicorn in a thread of this process (real sockets, real disconnects)."""

    def __init__(self, app):
        import uvicorn

        from tests.serving._live import free_port

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        _wait_until(lambda: self.server.started, "uvicorn to start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def test_disconnected_client_session_stops_being_stepped(model):
    slow = load_fixture_model()
    inner = slow.forward

    @functools.wraps(inner)
    def slow_forward(*args, **kwargs):
        time.sleep(0.02)
        return inner(*args, **kwargs)

    slow.forward = slow_forward
    app = create_app(Settings(api_keys=KEYS, esm3_batch_window_ms=0))
    app.state.models.put(SLUG, slow)
    engine = _engine_for(app, slow, SLUG)
    with _UvicornThread(app) as base:
        before = httpx.get(f"{base}/metrics").text
        canceled0 = _metric(before, "plmserve_model_requests_total", model=SLUG, method="generate_tensor",
                            outcome="canceled")
        body = json.dumps(_body(120, num_steps=100, seed=3)).encode()
        head = (f"POST /api/v1/generate_tensor HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {A['Authorization']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=30) as sock:
            sock.sendall(head + body)  # 100 steps of >= 20 ms; the client leaves after a few
            _wait_until(lambda: any(s["steps_run"] >= 3 for s in engine.snapshot()), "the session to be stepped")
        # the socket is closed here, the response unread
        _wait_until(lambda: engine.sessions == 0, "the canceled session to be dropped")
        passes = engine.stats.forward_passes
        assert 3 <= passes < 100, passes
        assert engine.stats.canceled == 1 and engine.stats.requests == 0
        # no step is computed for it any more (the worker is idle: nothing queued or running)
        engine.submit_call(lambda m: None, method="barrier").result(timeout=30)
        assert engine.stats.forward_passes == passes + 1  # just the barrier call
        after = httpx.get(f"{base}/metrics").text
        assert _metric(after, "plmserve_model_requests_total", model=SLUG, method="generate_tensor",
                       outcome="canceled") == canceled0 + 1


def test_model_with_esm3_requests_in_flight_is_not_evicted(app, model):
    with TestClient(app) as client:
        assert client.post("/api/v1/generate_tensor", json=_body(num_steps=2), headers=A).status_code == 200
        engine = _engine_for(app, model, SLUG)
        gate = _hold(engine)
        try:
            assert app.state.models._busy(SLUG)  # the memory manager skips it
        finally:
            gate.set()
        _wait_until(lambda: engine.sessions == 0, "the engine to drain")
        assert not app.state.models._busy(SLUG)
        assert app.state.models.evict(SLUG)
        assert id(model) not in app.state.esm3_engines  # the evicted model's engine is dropped
        _wait_until(lambda: not engine._thread.is_alive(), "the engine's worker to stop")
