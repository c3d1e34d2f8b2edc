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

Only sessions of equal length share a pass, so no padding is ever added and the attention of a
row covers exactly its own N tokens: every row's logits are those of an unbatched call (checked
bit for bit on CPU in the tests). The official local ``batch_generate`` instead right-pads
prompts without an attention mask, which changes their logits (esm3-api.md §6). With a fixed
seed a request therefore gives the same tokens batched or alone.

Usage::

    engine = GenerationEngine(model, batch_window_ms=5)
    result = engine.generate(tokens, GenerationConfig(track="sequence", num_steps=20), seed=1)
    future = engine.submit(tokens, config)          # concurrent.futures.Future
    engine.close()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import torch

from plmserve.models.esm3.sampler import (
    GenerationConfig,
    GenerationResult,
    GenerationSession,
    ProteinTokens,
    _residue_vocab_size,
    run_trunk,
    track_logits,
)

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
    """

    requests: int = 0
    forward_passes: int = 0
    rows: int = 0
    max_batch: int = 0


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


@dataclass
class _Job:
    session: GenerationSession | None
    future: Future
    call: Callable[[Any], Any] | None = None


class GenerationEngine:
    """Runs ``generate_tensor`` requests for one ESM3 model, batching concurrent ones.

    Args:
        model: the ESM3 trunk (:func:`plmserve.models.esm3.sampler.run_trunk` interface).
        batch_window_ms: how long an idle engine keeps collecting requests before the first step
            (``Settings.esm3_batch_window_ms``). 0 = start immediately.
        max_batch_size: most rows per forward pass.
        name: for the worker thread's name and logs.

    Thread-safe: :meth:`submit` may be called from any thread (FastAPI's thread pool, asyncio).
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 16,
        name: str = "esm3",
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        self.batch_window_s = max(0.0, float(batch_window_ms)) / 1000.0
        self.max_batch_size = int(max_batch_size)
        self.name = name
        self.residue_vocab_size = _residue_vocab_size(model)
        self.stats = EngineStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    def submit(
        self, tokens: ProteinTokens, config: GenerationConfig, *, seed: int | None = None
    ) -> "Future[GenerationResult]":
        """Validate and queue one request.

        Returns:
            a ``concurrent.futures.Future`` resolving to a
            :class:`~plmserve.models.esm3.sampler.GenerationResult`, or failing with the
            request's :class:`~plmserve.errors.PlmserveError` (e.g. "Cannot sample ... no masks").

        Raises:
            InvalidParameterError / InvalidInputError: immediately, for a bad config or prompt.
            RuntimeError: the engine is closed.
        """
        session = GenerationSession(tokens, config, seed=seed, residue_vocab_size=self.residue_vocab_size)
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the ESM3 generation engine is closed")
            self._ensure_thread()
            self._queue.put(_Job(session, future))
        return future

    def submit_call(self, fn: Callable[[Any], Any]) -> Future:
        """Run ``fn(model)`` on the worker thread between two decoding steps (e.g. a plain
        forward pass for the ``logits`` endpoint), so the model is never used by two threads
        at once. Returns a Future with ``fn``'s result or exception."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the ESM3 generation engine is closed")
            self._ensure_thread()
            self._queue.put(_Job(None, future, call=fn))
        return future

    def generate(
        self, tokens: ProteinTokens, config: GenerationConfig, *, seed: int | None = None
    ) -> GenerationResult:
        """:meth:`submit` and wait for the result (re-raises the request's error)."""
        return self.submit(tokens, config, seed=seed).result()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker after the running requests finish; later :meth:`submit` calls fail."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    # -- worker -------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=f"plmserve-{self.name}-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        active: list[_Job] = []
        stop = False
        while True:
            if not active:
                if stop:
                    return
                job = self._queue.get()
                if job is None:
                    return
                active.append(job)
                # collect companions for the batch window
                deadline = time.monotonic() + self.batch_window_s
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    active.append(job)
            # join whatever arrived meanwhile (continuous batching)
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    continue
                active.append(job)
            try:
                active = self._advance(active)
            except Exception as exc:  # a bug: fail the running requests, keep serving
                logger.exception("ESM3 engine step failed")
                for job in active:
                    self._fail(job, exc)
                active = []

    def _advance(self, active: list[_Job]) -> list[_Job]:
        """Run pending calls, one decoding step for every active request; return those left."""
        calls = [j for j in active if j.call is not None]
        active = [j for j in active if j.call is None and not j.future.cancelled()]
        for job in calls:
            self._run_call(job)
        for group in self._groups(active):
            self._step_group(group)
        still: list[_Job] = []
        for job in active:
            if job.future.done():
                continue
            if job.session.done:
                self._finish(job)
            else:
                still.append(job)
        return still

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call(self.model))
        except BaseException as exc:
            job.future.set_exception(exc)

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
        cache: dict[str, torch.Tensor] = {}
        for row, job in enumerate(group):
            track = job.session.track
            if track not in cache:
                cache[track] = track_logits(output, track)
            try:
                job.session.step(cache[track][row])
            except Exception as exc:
                self._fail(job, exc)

    def _finish(self, job: _Job) -> None:
        self.stats.requests += 1
        try:
            result = job.session.result()
        except Exception as exc:  # pragma: no cover - defensive
            self._fail(job, exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self.stats.requests += 1
        if not job.future.done():
            job.future.set_exception(exc)
