"""Operations: request ids, access logs, metrics, body-size limit, health/readiness, error
handlers that never fail, login rate limiting.

:func:`install` wires everything into an app (called once from :func:`plmserve.api.app.create_app`).

* :class:`ServingMiddleware` (pure ASGI, outermost): takes ``X-Request-ID`` from the request (1-128
  characters ``[A-Za-z0-9._:-]``) or generates one, returns it on every response and binds it to
  every log record of the request (:class:`RequestIdFilter`); refuses bodies larger than
  ``max_body_bytes`` (``max_upload_bytes`` for multipart) with 413 **before** they are read, parsed
  or authenticated (``Content-Length``, and a byte count of the stream for chunked bodies); counts
  and times requests per route template for Prometheus; writes one access-log line per request
  (``plmserve.access``: method, path, status, latency, principal, client address, request id;
  never credentials).
* ``GET /health``: liveness, answered on the event loop without touching a model or the database.
* ``GET /ready``: 200 when the database answers, the job workers and batching workers are alive
  and at least one allowed model is loadable; 503 with the failing checks otherwise.
* ``GET /metrics``: Prometheus text format (:mod:`plmserve.serving.metrics`).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from plmserve.api.access_log import RedactCredentials, redact
from plmserve.errors import LimitExceededError
from plmserve.serving import metrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("plmserve.access")
access_logger.addFilter(RedactCredentials())  # defence in depth: no credential in any access line

#: the id of the request being served in this context ("-" outside requests)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("plmserve_request_id", default="-")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id, or ``-``) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def principal_label(principal: Any) -> str:
    """A log-safe name of a :class:`plmserve.api.auth.Principal`: ``user:<name>``, ``key:<8 hex of
    the key's hash>`` or ``local`` -- never the credential itself."""
    if principal is None:
        return "-"
    kind = getattr(principal, "kind", None)
    if kind == "user":
        return f"user:{principal.name}"
    if kind == "key":
        return getattr(principal, "log_name", None) or "key"
    return str(getattr(principal, "name", principal))


def key_label(token: str) -> str:
    """``key:<first 8 hex of sha256(key)>``: identifies an API key in logs without revealing it."""
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:8]


class ServingMiddleware:
    """Request ids, body-size limits, metrics and access logs (see the module docstring)."""

    def __init__(self, app, settings: Any):
        self.app = app
        self.settings = settings

    def _limit(self, headers: dict[bytes, bytes]) -> tuple[int, str]:
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        if ctype.startswith("multipart/"):
            return int(self.settings.max_upload_bytes), "max_upload_bytes (PLMSERVE_MAX_UPLOAD_BYTES)"
        return int(self.settings.max_body_bytes), "max_body_bytes (PLMSERVE_MAX_BODY_BYTES)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _REQUEST_ID_RE.match(rid):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = {"code": 500, "started": False}
        limit, limit_name = self._limit(headers)

        async def send_wrapper(message):
            if status.get("refused"):
                return  # the 413 was sent; whatever the app answers after it is dropped
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        async def refuse(detail: str, code: int = 413) -> None:
            body = json.dumps({"detail": detail}).encode()
            await send_wrapper({"type": "http.response.start", "status": code,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        try:
            length = headers.get(b"content-length")
            declared = None
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = None
            if declared is not None and declared > limit:
                await refuse(f"request body too large: {declared} bytes; the limit is {limit} bytes "
                             f"(server setting {limit_name})")
                return
            received = {"n": 0}

            async def receive_wrapper():
                if status.get("refused"):
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.request":
                    received["n"] += len(message.get("body", b""))
                    if received["n"] > limit and not status["started"]:
                        # answer 413 now and show the app a disconnected client (it stops reading)
                        await refuse(f"request body too large: more than {limit} bytes; the limit is {limit} "
                                     f"bytes (server setting {limit_name})")
                        status["refused"] = True
                        return {"type": "http.disconnect"}
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "-")
            metrics.HTTP_REQUESTS.labels(method, template, str(status["code"])).inc()
            metrics.HTTP_LATENCY.labels(method, template).observe(elapsed)
            state = scope.get("state") or {}
            client = scope.get("client")
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            if query:  # credentials in a query string (legacy OpenProtein login) are redacted
                path = redact(f"{path}?{query}")
            if template not in ("/health", "/metrics"):
                access_logger.info(
                    '%s %s %s %d %.4fs principal=%s',
                    client[0] if client else "-", method, path, status["code"], elapsed,
                    state.get("principal_log") or principal_label(state.get("principal")))
            request_id_var.reset(token)


# ------------------------------------------------------------------------------------------------
# error handlers that never fail


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy: non-finite floats and unknown objects become strings, bytes are
    decoded, deep nesting is cut."""
    if depth > 20:
        return "..."
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, bytes):
        return value[:1000].decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v, depth + 1) for v in list(value)[:100]]
    return str(value)[:1000]


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 ``{"detail": [...]}`` like FastAPI's own handler, but with the errors made JSON-safe
    (``NaN``/``Infinity`` in the input, bytes, exceptions in ``ctx``), so it can never fail."""
    try:
        detail = []
        for err in exc.errors():
            item = {"type": err.get("type"), "loc": list(err.get("loc", ())), "msg": err.get("msg")}
            if "input" in err:
                item["input"] = err["input"]
            if "ctx" in err:
                item["ctx"] = err["ctx"]
            detail.append(_json_safe(item))
        body = json.dumps({"detail": detail}, allow_nan=False)
    except Exception:  # pragma: no cover - defensive: never a 500 from the error handler
        body = json.dumps({"detail": "the request does not match the expected schema"})
    return Response(body, status_code=422, media_type="application/json")


# ------------------------------------------------------------------------------------------------
# login rate limiting


class RateLimiter:
    """Sliding one-minute windows of failed attempts per key (user name, client address)."""

    def __init__(self, per_minute: int):
        self.per_minute = int(per_minute)
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, key: str, now: float | None = None) -> int | None:
        """None when ``key`` is under the limit, else the seconds until it is again."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits.get(key)
            if not q:
                return None
            while q and now - q[0] >= 60.0:
                q.popleft()
            if len(q) >= self.per_minute:
                return max(1, int(math.ceil(60.0 - (now - q[0]))))
            return None

    def hit(self, key: str, now: float | None = None) -> None:
        """Record one (failed) attempt of ``key``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._hits) > 100_000:  # bound the memory: forget the oldest keys
                for k in list(self._hits)[:50_000]:
                    del self._hits[k]
            q = self._hits[key]
            while q and now - q[0] >= 60.0:
                q.popleft()
            q.append(now)


async def login_rate_limit(request: Request):
    """FastAPI dependency (with ``yield``) of the login routes: after
    ``login_attempts_per_minute`` failed attempts within a minute for a user name, or from a client
    address, further attempts get 429 with ``Retry-After`` (before the password is checked)."""
    from plmserve.errors import AuthenticationError

    settings = request.app.state.settings
    limiter: RateLimiter = request.app.state.login_limiter
    username = request.query_params.get("username")
    if username is None and "form" in request.headers.get("content-type", ""):
        form = await request.form()
        value = form.get("username")
        username = value if isinstance(value, str) else None
    client = request.client.host if request.client else "-"
    keys = [(f"addr:{client}", f"address {client}")]
    if username is not None:
        keys.append((f"user:{username}", f"user '{username}'"))
    for key, what in keys:
        wait = limiter.blocked(key)
        if wait is not None:
            metrics.LOGIN_REFUSALS.labels(key.split(":", 1)[0]).inc()
            raise LimitExceededError(
                f"too many failed login attempts for {what}: at most {settings.login_attempts_per_minute} per "
                f"minute (server setting PLMSERVE_LOGIN_ATTEMPTS_PER_MINUTE); retry in {wait} s",
                status_code=429, retry_after=wait)
    try:
        yield
    except AuthenticationError:
        for key, _ in keys:
            limiter.hit(key)
        raise


# ------------------------------------------------------------------------------------------------
# health, readiness, metrics


def _model_bytes(model: Any) -> int | None:
    try:
        import torch

        module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
        if not isinstance(module, torch.nn.Module):
            return None
        return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    except Exception:  # pragma: no cover - a model without tensors
        return None


def _readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    ok = True
    svc = getattr(app.state, "job_service", None)
    if svc is not None:
        try:
            from sqlalchemy import text

            with svc.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
            ok = False
        executor = getattr(svc, "executor", None)
        running = getattr(executor, "running", None)
        alive = running() if callable(running) else running
        if alive is False:
            checks["job_workers"] = "not running"
            ok = False
        else:
            checks["job_workers"] = "ok"
    schedulers = dict(getattr(app.state, "schedulers", None) or {})
    owned = getattr(getattr(svc, "resources", None), "batch_schedulers", None)
    if callable(owned):  # the job service's own: PoET (and ESM without an app), issue 14
        schedulers.update(owned())
    dead = [name for name, s in schedulers.items() if not s.alive()]
    checks["batch_workers"] = f"stopped: {', '.join(dead)}" if dead else "ok"
    ok = ok and not dead
    models = app.state.models
    loadable = models.loadable() if hasattr(models, "loadable") else None
    if loadable is not None:
        checks["models_loadable"] = loadable
        if not loadable:
            ok = False
    checks["models_loaded"] = models.loaded()
    return ok, checks


def _refresh_gauges(app: FastAPI) -> None:
    models = app.state.models
    for slug in models.loaded():
        model = getattr(models, "_models", {}).get(slug)
        size = _model_bytes(model) if model is not None else None
        if size is not None:
            metrics.MODEL_MEMORY.labels(slug).set(size)
    svc = getattr(app.state, "job_service", None)
    if svc is not None:
        try:
            from sqlalchemy import func, select

            from plmserve.jobs.models import Job

            with svc.store.engine.connect() as conn:
                rows = conn.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            for status in ("PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELED"):
                metrics.JOBS.labels(status).set(0)
            for status, n in rows:
                metrics.JOBS.labels(status).set(n)
        except Exception:  # the database is down: /ready says so
            pass


def _scheduler_busy(app: FastAPI, slug: str) -> bool:
    sched = (getattr(app.state, "schedulers", None) or {}).get(slug)
    return sched is not None and (sched.busy or sched.queued_units > 0)


def _stop_scheduler(app: FastAPI, slug: str) -> None:
    sched = (getattr(app.state, "schedulers", None) or {}).pop(slug, None)
    if sched is not None:
        sched.stop(timeout=0)


def install(app: FastAPI) -> None:
    """Add the middleware, the error handler, the login limiter and ``/health``, ``/ready``,
    ``/metrics`` to ``app``; stop the batching workers at shut-down."""
    from starlette.concurrency import run_in_threadpool

    from plmserve import __version__
    from plmserve.serving.openapi import install_openapi
    from plmserve.serving.scheduler import stop_schedulers

    settings = app.state.settings
    app.state.models.allow_download = False  # without --models: only weights already present
    app.state.models.busy_checks.append(lambda slug: _scheduler_busy(app, slug))
    app.state.models.on_evict.append(lambda slug, model: _stop_scheduler(app, slug))
    app.add_middleware(ServingMiddleware, settings=settings)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.state.login_limiter = RateLimiter(settings.login_attempts_per_minute)
    app.state.shutdown.append(stop_schedulers)

    @app.get("/health", tags=["meta"], summary="Liveness: answers at once, never waits for a model")
    async def health() -> dict:
        return {"status": "ok", "version": __version__, "load_format": settings.load_format,
                "models_loaded": app.state.models.loaded()}

    @app.get("/ready", tags=["meta"], summary="Readiness: database, workers, loadable models",
             responses={503: {"description": "not ready; the body names the failing checks"}})
    async def ready() -> JSONResponse:
        ok, checks = await run_in_threadpool(_readiness, app)
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["meta"], summary="Prometheus metrics (text format)",
             response_class=Response, responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        await run_in_threadpool(_refresh_gauges, app)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app)
