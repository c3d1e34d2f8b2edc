"""Batching engine for ESM3 ``generate_tensor``: concurrent requests share forward passes.

One worker thread per model owns the trunk. Requests are validated on the caller's thread
(:class:`~plmserve.models.esm3.sampler.GenerationSession`; bad requests fail immediately) and
queued. The worker runs *step-level* (continuous) batching:

- when idle, it waits for a request, then keeps collecting for ``batch_window_ms`` so that
  requests arriving together start together;
- at every decoding step, the active sessions are grouped by their length N and each group
  (at most ``max_batch_size`` sessions) runs **one** trunk forward pass on the stacked inputs;
  every session then samples from its own row of logits with its own ``torch.Generator``;
- requests that arrive while others are running join at the next step boundary.

Serving limits (issue 14):

- at most ``max_sessions`` requests (generation sessions and single forward-pass calls) are
  queued or running; :meth:`GenerationEngine.submit` refuses more with
  :class:`~plmserve.errors.ServiceUnavailableError` (HTTP 503 with ``Retry-After``);
- at most ``max_batch_size`` sessions are stepped at once; the others wait and are **admitted
  round-robin between principals** (the principal with the fewest running sessions first, then
  the one served longest ago), so one client's 50 requests do not starve another's single one;
- :meth:`GenerationEngine.cancel` (a client that disconnected) drops a waiting request at once
  and a running one at the next step boundary: its remaining steps are never computed;
- Prometheus metrics (:mod:`plmserve.serving.metrics`, label ``model`` = the engine's name):
  ``plmserve_queue_depth`` (requests waiting for admission), ``plmserve_batch_size`` (rows per
  forward pass), ``plmserve_batches_total{method="esm3_step"}``, ``plmserve_tokens_total`` and
  ``plmserve_model_requests_total`` by ``method`` and ``outcome`` (ok, error, canceled, rejected).

Only sessions of equal length share a pass, so no padding is ever added and the attention of a
row covers exactly its own N tokens: every row's logits are those of an unbatched call (checked
bit for bit on CPU in the tests). The official local ``batch_generate`` instead right-pads
prompts without an attention mask, which changes their logits (esm3-api.md §6). With a fixed
seed a request therefore gives the same tokens batched or alone.

Usage::

    engine = GenerationEngine(model, batch_window_ms=5, max_sessions=1024, name="esm3-open-2024-03")
    result = engine.generate(tokens, GenerationConfig(track="sequence", num_steps=20), seed=1)
    future = engine.submit(tokens, config, principal="alice")   # concurrent.futures.Future
    engine.cancel(future)                                        # the client left
    engine.close()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Callable

import torch

from plmserve.errors import ServiceUnavailableError
from plmserve.models.esm3.sampler import (
    GenerationConfig,
    GenerationResult,
    GenerationSession,
    ProteinTokens,
    _residue_vocab_size,
    run_trunk,
    track_logits,
)
from plmserve.serving import metrics

logger = logging.getLogger(__name__)

__all__ = ["GenerationEngine", "EngineStats", "stack_forward_inputs"]


@dataclass
class EngineStats:
    """Counters of an engine (for logs, tests and benchmarks).

    Attributes:
        requests: requests finished (successfully or not).
        forward_passes: trunk forward passes run.
        rows: sum of batch sizes over all passes (rows / forward_passes = mean batch size).
        max_batch: largest batch seen.
        canceled: requests dropped by :meth:`GenerationEngine.cancel` before they finished.
        rejected: requests refused because ``max_sessions`` were queued or running.
    """

    requests: int = 0
    forward_passes: int = 0
    rows: int = 0
    max_batch: int = 0
    canceled: int = 0
    rejected: int = 0


def stack_forward_inputs(sessions: list[GenerationSession]) -> dict[str, torch.Tensor]:
    """Stack the trunk inputs of sessions of equal length N along a new batch dimension B.

    Returns:
        keyword arguments of the trunk: token tracks [B, N] / [B, N, 8] / [B, N, 16] int64,
        ``structure_coords`` [B, N, 3, 3], ``per_res_plddt`` [B, N], ``average_plddt`` 0-dim 1.0.

    Raises:
        ValueError: sessions of different lengths (a programming error).
    """
    lengths = {s.length for s in sessions}
    if len(lengths) != 1:
        raise ValueError(f"cannot stack sessions of different lengths {sorted(lengths)}")
    parts = [s.forward_inputs() for s in sessions]
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        if key == "average_plddt":
            out[key] = torch.tensor(1.0)
        else:
            out[key] = torch.cat([p[key] for p in parts], dim=0)
    return out


@dataclass(eq=False)
class _Job:
    session: GenerationSession | None
    future: Future
    call: Callable[[Any], Any] | None = None
    principal: str = "anonymous"
    method: str = "generate_tensor"
    canceled: bool = False
    running: bool = False  # admitted (a session being stepped, or a call about to run)
    #: decoding steps computed for this request (forward passes it took part in)
    steps_run: int = 0


class GenerationEngine:
    """Runs ``generate_tensor`` requests for one ESM3 model, batching concurrent ones.

    Args:
        model: the ESM3 trunk (:func:`plmserve.models.esm3.sampler.run_trunk` interface).
        batch_window_ms: how long an idle engine keeps collecting requests before the first step
            (``Settings.esm3_batch_window_ms``). 0 = start immediately.
        max_batch_size: most sessions stepped at once (``Settings.esm3_max_batch_size``), hence
            most rows per forward pass; more sessions wait for admission (fair between principals).
        max_sessions: most requests queued or running (``Settings.esm3_max_sessions``); None =
            unbounded (the CLI). Beyond it :meth:`submit` raises ``ServiceUnavailableError``.
        name: the model's slug: worker thread name, logs, metrics label ``model``.
        setting_name: how the 503 message names the ``max_sessions`` limit.

    Thread-safe: :meth:`submit` may be called from any thread (FastAPI's thread pool, asyncio).
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 16,
        max_sessions: int | None = None,
        name: str = "esm3",
        setting_name: str = "PLMSERVE_ESM3_MAX_SESSIONS",
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.model = model
        self.batch_window_s = max(0.0, float(batch_window_ms)) / 1000.0
        self.max_batch_size = int(max_batch_size)
        self.max_sessions = None if max_sessions is None else int(max_sessions)
        self.setting_name = setting_name
        self.name = name
        self.residue_vocab_size = _residue_vocab_size(model)
        self.stats = EngineStats()
        self._cv = threading.Condition()
        self._waiting: OrderedDict[str, deque[_Job]] = OrderedDict()  # principal -> its waiting jobs
        self._active: list[_Job] = []  # sessions being stepped (the worker's list)
        self._jobs: dict[Future, _Job] = {}  # every queued or running job
        self._served: dict[str, int] = {}  # principal -> admission counter of its last admission
        self._admissions = 0
        self._step_s = 0.0  # moving average of one step's duration (Retry-After estimate)
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        """Requests queued or running (what ``max_sessions`` bounds)."""
        return len(self._jobs)

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        with self._cv:
            return sum(len(q) for q in self._waiting.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """The requests queued or running now, for operations and tests: one dict per request with
        ``principal``, ``method``, ``state`` (``waiting`` | ``running``), ``steps_run`` (forward
        passes computed for it so far) and ``future`` (the one :meth:`submit` returned)."""
        with self._cv:
            return [{"principal": j.principal, "method": j.method, "steps_run": j.steps_run, "future": j.future,
                     "state": "running" if j.running else "waiting"} for j in self._jobs.values()]

    def submit(
        self,
        tokens: ProteinTokens,
        config: GenerationConfig,
        *,
        seed: int | None = None,
        principal: str = "anonymous",
        method: str = "generate_tensor",
    ) -> "Future[GenerationResult]":
        """Validate and queue one request of ``principal`` (the fairness key: user or API key).

        Returns:
            a ``concurrent.futures.Future`` resolving to a
            :class:`~plmserve.models.esm3.sampler.GenerationResult`, or failing with the
            request's :class:`~plmserve.errors.PlmserveError` (e.g. "Cannot sample ... no masks").

        Raises:
            InvalidParameterError / InvalidInputError: immediately, for a bad config or prompt.
            ServiceUnavailableError: ``max_sessions`` requests are already queued or running (503;
                the message names the setting and the numbers, ``Retry-After`` estimates the drain).
            RuntimeError: the engine is closed.
        """
        session = GenerationSession(tokens, config, seed=seed, residue_vocab_size=self.residue_vocab_size)
        return self._enqueue(_Job(session, Future(), principal=str(principal), method=method))

    def submit_call(self, fn: Callable[[Any], Any], *, principal: str = "anonymous", method: str = "logits") -> Future:
        """Run ``fn(model)`` on the worker thread between two decoding steps (e.g. a plain
        forward pass for the ``logits`` endpoint), so the model is never used by two threads
        at once. Returns a Future with ``fn``'s result or exception. Calls count towards
        ``max_sessions`` and are admitted round-robin between principals like sessions (at most
        ``max_batch_size`` calls per step boundary; they take no session slot).

        Raises:
            ServiceUnavailableError: ``max_sessions`` requests are queued or running.
            RuntimeError: the engine is closed."""
        return self._enqueue(_Job(None, Future(), call=fn, principal=str(principal), method=method))

    def generate(
        self, tokens: ProteinTokens, config: GenerationConfig, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`submit` and wait for the result (re-raises the request's error)."""
        return self.submit(tokens, config, seed=seed).result()

    def cancel(self, future: Future) -> bool:
        """Drop the request of ``future`` (its client disconnected): a waiting request is removed
        at once, a running session at the next step boundary (no further step is computed for
        it). Returns False when the request had already finished or its call is running."""
        with self._cv:
            job = self._jobs.get(future)
            if job is None or job.canceled or not future.cancel():
                return False
            job.canceled = True
            q = self._waiting.get(job.principal)
            if q is not None and job in q:
                q.remove(job)
                if not q:
                    del self._waiting[job.principal]
                self._forget_locked(job)
            self._depth_locked()
            self._cv.notify_all()
        self.stats.canceled += 1
        metrics.MODEL_REQUESTS.labels(self.name, job.method, "canceled").inc()
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after the queued and running requests finish; later :meth:`submit`
        calls fail."""
        with self._cv:
            self._closed = True
            thread = self._thread
            self._cv.notify_all()
        if thread is not None:
            thread.join(timeout)

    # -- queue --------------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> Future:
        with self._cv:
            if self._closed:
                raise RuntimeError("the ESM3 generation engine is closed")
            if self.max_sessions is not None and len(self._jobs) >= self.max_sessions:
                self.stats.rejected += 1
                metrics.MODEL_REQUESTS.labels(self.name, job.method, "rejected").inc()
                raise ServiceUnavailableError(
                    f"model {self.name} is busy: {len(self._jobs)} ESM3 requests are queued or running, the limit "
                    f"is {self.max_sessions} (server setting {self.setting_name}); retry later",
                    retry_after=self._retry_after_locked())
            self._jobs[job.future] = job
            self._waiting.setdefault(job.principal, deque()).append(job)
            self._depth_locked()
            self._ensure_thread()
            self._cv.notify_all()
        return job.future

    def _retry_after_locked(self) -> int:
        """Seconds until about ``max_batch_size`` slots free up: remaining steps of the running
        and waiting sessions / sessions per step x the measured step duration (1..120)."""
        if self._step_s <= 0:
            return 5
        remaining = sum(j.session.num_steps - j.session.t for j in self._active if j.session is not None)
        remaining += sum(j.session.num_steps if j.session is not None else 1
                         for q in self._waiting.values() for j in q)
        return int(min(120, max(1, math.ceil(remaining / self.max_batch_size * self._step_s))))

    def _depth_locked(self) -> None:
        metrics.QUEUE_DEPTH.labels(self.name).set(sum(len(q) for q in self._waiting.values()))

    def _forget_locked(self, job: _Job) -> None:
        self._jobs.pop(job.future, None)

    def _forget(self, job: _Job) -> None:
        with self._cv:
            self._forget_locked(job)

    def _admit_locked(self) -> list[_Job]:
        """Move waiting jobs into the running set, round-robin between principals: sessions while
        fewer than ``max_batch_size`` run, calls up to ``max_batch_size`` per boundary. Among the
        principals whose next job can be admitted, the one with the fewest running sessions goes
        first, ties to the one admitted longest ago (new principals first). Returns the calls to
        run now (sessions are appended to ``self._active``)."""
        free = self.max_batch_size - len(self._active)
        call_budget = self.max_batch_size
        running: dict[str, int] = {}
        for job in self._active:
            running[job.principal] = running.get(job.principal, 0) + 1
        calls: list[_Job] = []
        while self._waiting:
            candidates = [p for p, q in self._waiting.items()
                          if (call_budget > 0 if q[0].call is not None else free > 0)]
            if not candidates:
                break
            principal = min(candidates, key=lambda p: (running.get(p, 0), self._served.get(p, -1)))
            q = self._waiting[principal]
            job = q.popleft()
            if not q:
                del self._waiting[principal]
            self._admissions += 1
            self._served[principal] = self._admissions
            job.running = True
            if job.call is not None:
                call_budget -= 1
                calls.append(job)
            else:
                free -= 1
                running[principal] = running.get(principal, 0) + 1
                self._active.append(job)
        if len(self._served) > 4096:  # forget principals with nothing queued or running
            keep = set(self._waiting) | {j.principal for j in self._active}
            self._served = {p: n for p, n in self._served.items() if p in keep}
        self._depth_locked()
        return calls

    # -- worker -------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=f"plmserve-{self.name}-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._active:
                    while not self._waiting and not self._closed:
                        self._cv.wait()
                    if not self._waiting:  # closed and nothing left
                        return
                    # collect companions for the batch window
                    deadline = time.monotonic() + self.batch_window_s
                    while not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cv.wait(remaining)
                # join whatever arrived meanwhile (continuous batching), fairly
                calls = self._admit_locked()
            for job in calls:
                self._run_call(job)
            try:
                self._advance()
            except Exception as exc:  # a bug: fail the running requests, keep serving
                logger.exception("ESM3 engine step failed")
                with self._cv:
                    active, self._active = self._active, []
                for job in active:
                    self._fail(job, exc)

    def _advance(self) -> None:
        """One decoding step for every running session (canceled ones are dropped first)."""
        with self._cv:
            for job in self._active:
                if job.canceled or job.future.cancelled():
                    self._forget_locked(job)
            self._active = [j for j in self._active if not j.canceled and not j.future.cancelled()]
            active = list(self._active)
        if not active:
            return
        t0 = time.perf_counter()
        for group in self._groups(active):
            self._step_group(group)
        dt = time.perf_counter() - t0
        self._step_s = dt if self._step_s == 0 else 0.8 * self._step_s + 0.2 * dt
        still: list[_Job] = []
        for job in active:
            if job.future.done():
                self._forget(job)
                continue
            if job.session.done:
                self._finish(job)
            else:
                still.append(job)
        with self._cv:
            self._active = still

    def _run_call(self, job: _Job) -> None:
        try:
            if not job.future.set_running_or_notify_cancel():
                return
            try:
                result = job.call(self.model)
            except BaseException as exc:
                self.stats.requests += 1
                metrics.MODEL_REQUESTS.labels(self.name, job.method, "error").inc()
                job.future.set_exception(exc)
                return
            self.stats.requests += 1
            self.stats.forward_passes += 1
            self.stats.rows += 1
            job.steps_run += 1
            metrics.BATCHES.labels(self.name, job.method).inc()
            metrics.BATCH_SIZE.labels(self.name).observe(1)
            metrics.MODEL_REQUESTS.labels(self.name, job.method, "ok").inc()
            job.future.set_result(result)
        finally:
            self._forget(job)

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        by_length: dict[int, list[_Job]] = {}
        for job in jobs:
            by_length.setdefault(job.session.length, []).append(job)
        groups = []
        for same in by_length.values():
            for i in range(0, len(same), self.max_batch_size):
                groups.append(same[i : i + self.max_batch_size])
        return groups

    def _step_group(self, group: list[_Job]) -> None:
        sessions = [j.session for j in group]
        try:
            tracks = sorted({s.track for s in sessions})
            output = run_trunk(self.model, stack_forward_inputs(sessions), tracks=tracks)
        except Exception as exc:  # the trunk failed: fail every request of this pass
            logger.exception("ESM3 forward pass failed")
            for job in group:
                self._fail(job, exc)
            return
        self.stats.forward_passes += 1
        self.stats.rows += len(group)
        self.stats.max_batch = max(self.stats.max_batch, len(group))
        metrics.BATCHES.labels(self.name, "esm3_step").inc()
        metrics.BATCH_SIZE.labels(self.name).observe(len(group))
        metrics.TOKENS.labels(self.name).inc(len(group) * sessions[0].length)
        cache: dict[str, torch.Tensor] = {}
        for row, job in enumerate(group):
            job.steps_run += 1
            track = job.session.track
            if track not in cache:
                cache[track] = track_logits(output, track)
            try:
                job.session.step(cache[track][row])
            except Exception as exc:
                self._fail(job, exc)

    def _finish(self, job: _Job) -> None:
        try:
            result = job.session.result()
        except Exception as exc:  # pragma: no cover - defensive
            self._fail(job, exc)
            return
        self.stats.requests += 1
        self._forget(job)
        try:
            job.future.set_result(result)
        except InvalidStateError:  # canceled meanwhile
            return
        metrics.MODEL_REQUESTS.labels(self.name, job.method, "ok").inc()

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self.stats.requests += 1
        self._forget(job)
        if not job.future.done():
            try:
                job.future.set_exception(exc)
            except InvalidStateError:  # canceled meanwhile
                return
            metrics.MODEL_REQUESTS.labels(self.name, job.method, "error").inc()
