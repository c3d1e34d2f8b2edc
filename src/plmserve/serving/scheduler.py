"""A batching scheduler per loaded model: requests from many clients share forward passes.

Design (after Hugging Face text-embeddings-inference's queue/batching task and vLLM's scheduler;
no code taken from either):

* A request is expanded into **units**, one per forward-pass item (an ``encode`` item is one
  unit; a pseudo-log-likelihood over a sequence of L standard residues is L units, one masked
  copy each). Each unit has a cost in padded tokens (its length + BOS + EOS).
* Units wait in a **bounded queue** per model (``Settings.max_queue_items``); a request that does
  not fit is refused at once with :class:`~plmserve.errors.ServiceUnavailableError` (HTTP 503 with
  ``Retry-After``) before any work.
* One **worker thread** per model forms each batch under a token budget (``toks_per_batch``,
  padded positions counted as ``n_items x longest``, and at most about ``batch_target_s`` of
  compute at the measured speed): it takes units **round-robin between principals** (users / API
  keys) and, within a principal, from the request with the **least attained service** first
  (fewest tokens computed so far), so a 1-item request joins the very next batch instead of
  waiting for a 10,000-item request, or for twenty earlier requests, to finish; a request that has
  waited longer than ``aging_after_s`` (30 s) gains priority, so long requests are not starved. Units only share a batch when they ask for the same computation (same method and
  parameters). The engine sorts a batch by length and masks the padding, so batched outputs
  equal unbatched ones (to float rounding).
* Short requests (at most ``express_max_tokens`` padded tokens in all) take a second lane: a
  second worker computes them beside the running batch (the engine allows two passes at once),
  so a 50-residue request does not wait for a 4,000-token batch to finish.
* Results are split back per request, in the request's item order; the request's future
  completes when its last unit is done. The event loop only awaits futures: it never runs or
  waits for a model.
* **Cancellation**: :meth:`ModelScheduler.cancel` drops a request's queued units (a client that
  disconnected): its remaining batches are never computed.

The entry point for routes is :func:`run_batched`; for plain threads (job workers: PoET jobs,
:mod:`plmserve.serving.poet_batching`) it is :meth:`ModelScheduler.run_sync`, which waits
instead of failing when the queue is full and drops the queued units when its ``check`` raises
(a canceled job). The per-family computations are
:class:`BatchMethod` objects registered with :func:`register_method` (ESM-2's ``encode``,
``predict`` and ``log_prob`` are registered here; ESM C's in :mod:`plmserve.serving.methods_esmc`, the
variant-scoring passes in :mod:`plmserve.serving.methods_marginals`; other families add theirs the same
way). Routes reach it through :mod:`plmserve.serving.dispatch` (Ray model pool or this scheduler).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from plmserve.errors import PlmserveError, ServiceUnavailableError
from plmserve.serving import metrics

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# methods: how a request becomes units, how a batch of units is computed, how results recombine


@dataclass(frozen=True)
class Unit:
    """One forward-pass item: ``cost`` padded tokens, ``item`` the request item it belongs to,
    ``payload`` whatever :attr:`BatchMethod.run` needs."""

    cost: int
    item: int
    payload: Any


@dataclass(frozen=True)
class BatchMethod:
    """A computation the scheduler can batch.

    Attributes:
        expand: ``(engine, items, params) -> list[Unit]`` (validation errors raise here, before
            anything is queued).
        run: ``(engine, payloads, params) -> list[result]``, one result per payload, same order;
            runs in the model's worker thread.
        combine: ``(n_items, units, results) -> list[item result]``; default: one unit per item.
    """

    expand: Callable[[Any, Sequence[Any], dict], list[Unit]]
    run: Callable[[Any, list[Any], dict], list[Any]]
    combine: Callable[[int, list[Unit], list[Any]], list[Any]] | None = None


_METHODS: dict[tuple[str, str], BatchMethod] = {}


def register_method(family: str, name: str, method: BatchMethod) -> None:
    """Make ``name`` (e.g. ``encode``) of model family ``family`` schedulable by :func:`run_batched`."""
    _METHODS[(family, name)] = method


def get_method(family: str, name: str) -> BatchMethod:
    """The registered :class:`BatchMethod`; KeyError when none. ESM C's methods and the variant-
    scoring passes of both families live in ``methods_esmc`` / ``methods_marginals`` (imported here
    on first use)."""
    if (family, name) not in _METHODS:
        from plmserve.serving import methods_esmc, methods_marginals  # noqa: F401  (they register)
    return _METHODS[(family, name)]


def _freeze(value: Any) -> Any:
    """A hashable form of a params value (lists -> tuples, dicts -> sorted item tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# ------------------------------------------------------------------------------------------------
# the scheduler


class ClientDisconnected(PlmserveError):
    """The client went away before its results were ready (nobody reads this response)."""

    status_code = 499


@dataclass(eq=False)
class ScheduledRequest:
    """A request in a model's queue; ``future`` resolves to the per-item results."""

    principal: str
    method_name: str
    method: BatchMethod
    params: dict
    key: Any
    n_items: int
    units: list[Unit]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    next_unit: int = 0
    results: list[Any] = field(default_factory=list)
    done_units: int = 0
    canceled: bool = False
    queued_at: float = field(default_factory=time.monotonic)
    attained: int = 0  # padded tokens of this request already handed to batches

    @property
    def pending_units(self) -> int:
        """Units not yet handed to a batch."""
        return len(self.units) - self.next_unit


class ModelScheduler:
    """The batching queue and worker thread of one loaded model (see the module docstring).

    Args:
        slug: the model's public name (metrics label, thread name).
        engine: the loaded model object handed to :class:`BatchMethod` callables.
        toks_per_batch: padded-token budget of one batch (``n_items x longest``); a single longer
            unit forms a batch of its own.
        max_queue_items: units allowed to wait (all requests together); beyond it ``submit``
            raises :class:`ServiceUnavailableError` (503 with ``Retry-After``).
        batch_target_s: when set, the token budget of a batch is also capped at what the model
            computes in about this many seconds (measured tokens/s), so that a request arriving
            while a batch runs waits at most about two batch durations (slow CPUs); a GPU fast
            enough reaches ``toks_per_batch`` anyway.
        aging_after_s: a request that has waited longer than this gains priority over newer
            ones (least attained service alone could starve a long request among many short ones).
        express_max_tokens: requests of at most this many padded tokens in total go to a second
            worker (the short-request lane) that computes beside the running batch, so a short
            request never waits for a long batch (0: no such lane).
        sort_window_passes: a scheduling round takes units worth up to this many forward passes
            (their padded tokens summed), sorts them by length and packs them into passes of at
            most ``toks_per_batch`` padded tokens, run one after the other (units of a request
            that was canceled meanwhile are skipped). Items of similar length then share a pass,
            so less compute goes to padding; 1 = one pass per round, in arrival order.
    """

    def __init__(self, slug: str, engine: Any, *, toks_per_batch: int = 4096, max_queue_items: int = 65536,
                 batch_target_s: float | None = None, aging_after_s: float = 30.0, express_max_tokens: int = 0,
                 sort_window_passes: int = 1):
        self.slug = slug
        self.sort_window_passes = max(1, int(sort_window_passes))
        self.aging_after_s = float(aging_after_s)
        self.express_max_tokens = int(express_max_tokens or 0)
        self._express: deque[ScheduledRequest] = deque()
        self.batch_target_s = batch_target_s
        self.engine = engine
        self.toks_per_batch = int(toks_per_batch)
        self.max_queue_items = int(max_queue_items)
        self._cv = threading.Condition()
        self._principals: OrderedDict[str, deque[ScheduledRequest]] = OrderedDict()
        self._queued_units = 0
        self._stopping = False
        self._tokens_per_s = 0.0
        #: batches and units computed so far (tests, metrics)
        self.batches_computed = 0
        self.units_computed = 0
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=f"plmserve-batcher-{slug}", daemon=True)
        self._thread.start()
        self._express_thread = None
        if self.express_max_tokens > 0:
            self._express_thread = threading.Thread(target=self._express_loop, name=f"plmserve-express-{slug}",
                                                    daemon=True)
            self._express_thread.start()

    # ------------------------------------------------------------------ public
    @property
    def queued_units(self) -> int:
        """Units waiting for a batch."""
        return self._queued_units

    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive() and not self._stopping and (
            self._express_thread is None or self._express_thread.is_alive())

    def submit(self, principal: str, method_name: str, method: BatchMethod, units: list[Unit],
               n_items: int, params: dict) -> ScheduledRequest:
        """Queue a request's units; returns the :class:`ScheduledRequest` (await its ``future``).

        Raises:
            ServiceUnavailableError: the queue cannot take ``len(units)`` more units (the message
                names ``max_queue_items`` and the numbers; ``Retry-After`` estimates the drain time),
                or the scheduler is stopping.
        """
        req = ScheduledRequest(principal=principal, method_name=method_name, method=method, params=params,
                               key=(method_name, _freeze(params)), n_items=n_items, units=list(units))
        req.results = [None] * len(req.units)
        if not req.units:
            req.future.set_result(self._combine(req))
            return req
        with self._cv:
            if self._stopping:
                raise ServiceUnavailableError(f"model {self.slug} is shutting down", retry_after=5)
            if self._queued_units + len(req.units) > self.max_queue_items:
                raise ServiceUnavailableError(
                    f"the queue of model {self.slug} is full: {self._queued_units} forward-pass items waiting, "
                    f"this request adds {len(req.units)}, the limit is {self.max_queue_items} "
                    "(server setting PLMSERVE_MAX_QUEUE_ITEMS); retry later",
                    retry_after=self._retry_after_locked(len(req.units)))
            if self.express_max_tokens and sum(u.cost for u in req.units) <= self.express_max_tokens:
                self._express.append(req)
            else:
                self._principals.setdefault(principal, deque()).append(req)
            self._queued_units += len(req.units)
            metrics.QUEUE_DEPTH.labels(self.slug).set(self._queued_units)
            self._cv.notify_all()
        return req

    def cancel(self, req: ScheduledRequest) -> int:
        """Drop the request's queued units (its client left); returns how many were dropped.
        Units already in a running batch finish, but their results are discarded."""
        with self._cv:
            if req.canceled or req.future.done():
                return 0
            req.canceled = True
            dropped = req.pending_units
            req.next_unit = len(req.units)
            self._queued_units -= dropped
            reqs = self._principals.get(req.principal)
            if reqs is not None and req in reqs:
                reqs.remove(req)
                if not reqs:
                    del self._principals[req.principal]
            if req in self._express:
                self._express.remove(req)
            metrics.QUEUE_DEPTH.labels(self.slug).set(self._queued_units)
        req.future.cancel()
        metrics.MODEL_REQUESTS.labels(self.slug, req.method_name, "canceled").inc()
        return dropped

    def run_sync(self, principal: str, groups: Sequence[tuple[str, BatchMethod, list[Unit], dict]], *,
                 check: Callable[[int, int], None] | None = None, poll_s: float = 0.2,
                 check_every_s: float = 1.0) -> list[list[Any]]:
        """Compute unit groups from a plain thread (a job worker, not the event loop) and wait.

        Each group ``(method_name, method, units, params)`` is queued as one request (split into
        pieces of at most half ``max_queue_items`` units, so a job larger than the queue still
        runs); all groups of a call share ``principal`` and are fair with everyone else's work
        like HTTP requests. When the queue is full the pieces not yet queued wait and are retried
        (backing off up to the ``Retry-After`` estimate, at most 2 s) instead of failing.

        Args:
            check: ``check(done_units, total_units)``, called when units were completed (at most
                once per ``poll_s``) and at least every ``check_every_s``; whatever it raises
                (e.g. :class:`plmserve.jobs.executor.JobCanceled`) cancels every request of this
                call -- its queued units are dropped, never computed -- and is re-raised.

        Returns:
            Per group, the per-unit results of ``method.run`` in the group's unit order
            (``method.combine`` is not applied).

        Raises:
            ServiceUnavailableError: the scheduler is stopping.
            Exception: whatever a batch of this call raised (the other requests are canceled).
        """
        cap = max(1, self.max_queue_items // 2)
        results: list[list[Any]] = [[None] * len(g[2]) for g in groups]
        waiting: deque[tuple[int, int, list[Unit]]] = deque(
            (g, start, list(units[start:start + cap]))
            for g, (_, _, units, _) in enumerate(groups) for start in range(0, max(len(units), 1), cap))
        total = sum(len(g[2]) for g in groups)
        live: list[tuple[int, int, ScheduledRequest]] = []
        finished = 0
        last_done, last_check, retry_at = -1, time.monotonic(), 0.0
        try:
            while waiting or live:
                now = time.monotonic()
                while waiting and now >= retry_at:
                    g, start, units = waiting[0]
                    name, method, _, params = groups[g]
                    try:
                        req = self.submit(principal, name, method, units, len(units), params)
                    except ServiceUnavailableError as exc:
                        if self._stopping:
                            raise
                        wait = float(exc.headers.get("Retry-After", 1))
                        retry_at = now + min(2.0, max(poll_s, wait))
                        break
                    waiting.popleft()
                    live.append((g, start, req))
                pending = [r.future for _, _, r in live if not r.future.done()]
                if pending:
                    concurrent.futures.wait(pending, timeout=poll_s,
                                            return_when=concurrent.futures.FIRST_EXCEPTION)
                elif waiting:
                    time.sleep(poll_s)
                still = []
                for g, start, r in live:
                    if r.future.done():
                        out = r.future.result()
                        results[g][start:start + len(out)] = out
                        finished += len(r.units)
                    else:
                        still.append((g, start, r))
                live = still
                done = finished + sum(r.done_units for _, _, r in live)
                now = time.monotonic()
                if check is not None and (done != last_done or now - last_check >= check_every_s):
                    last_done, last_check = done, now
                    check(done, total)
        except BaseException:
            for _, _, r in live:
                self.cancel(r)
            raise
        return results

    def stop(self, timeout: float | None = 5.0) -> None:
        """Refuse new work, fail every queued request (503) and end the worker after its batch."""
        with self._cv:
            self._stopping = True
            pending = [r for reqs in self._principals.values() for r in reqs] + list(self._express)
            self._principals.clear()
            self._express.clear()
            self._queued_units = 0
            self._cv.notify_all()
        for r in pending:
            if not r.future.done():
                r.future.set_exception(ServiceUnavailableError(f"model {self.slug} is shutting down", retry_after=5))
        self._thread.join(timeout)
        if self._express_thread is not None:
            self._express_thread.join(timeout)

    # ------------------------------------------------------------------ internals
    def _express_loop(self) -> None:
        """The short-request lane: FIFO batches of short requests (same computation), computed
        beside the main worker's batch."""
        while True:
            with self._cv:
                while not self._express and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                first = self._express[0]
                batch: list[tuple[ScheduledRequest, int]] = []
                tokens = 0
                while self._express and self._express[0].key == first.key:
                    r = self._express[0]
                    cost = sum(u.cost for u in r.units[r.next_unit:])
                    if batch and tokens + cost > self.toks_per_batch:
                        break
                    self._express.popleft()
                    batch.extend((r, i) for i in range(r.next_unit, len(r.units)))
                    self._queued_units -= r.pending_units
                    r.next_unit = len(r.units)
                    tokens += cost
                metrics.QUEUE_DEPTH.labels(self.slug).set(self._queued_units)
            try:
                self._compute(batch)
            except BaseException:  # never let the worker die
                logger.exception("express worker of %s", self.slug)

    def _retry_after_locked(self, extra_units: int) -> int:
        if self._tokens_per_s <= 0:
            return 5
        tokens = (self._queued_units + extra_units) * 300  # typical padded length of a unit
        return int(min(120, max(1, math.ceil(tokens / self._tokens_per_s))))

    def _next_batch_locked(self) -> list[tuple[ScheduledRequest, int]]:
        """Take units for one batch: round-robin over principals, and over each principal's
        requests, keeping one computation (method + params) per batch and the padded-token budget."""
        batch: list[tuple[ScheduledRequest, int]] = []
        budget = self._pass_budget()
        window = budget * self.sort_window_passes
        key = None
        longest = 0
        total = 0
        full = False
        now = time.monotonic()
        rate = max(self._tokens_per_s, 1.0)
        while not full:
            progress = False
            for principal in list(self._principals):
                reqs = self._principals.get(principal)
                if not reqs:
                    continue
                # least attained service first (then arrival order): a new or small request goes
                # ahead of the rest of a long one; a request waiting longer than aging_after_s is
                # credited one second of model throughput per further second (no starvation)
                chosen = min((r for r in reqs if key is None or r.key == key),
                             key=lambda r: (r.attained - max(0.0, now - r.queued_at - self.aging_after_s) * rate,
                                            r.queued_at), default=None)
                if chosen is None:
                    continue
                unit = chosen.units[chosen.next_unit]
                new_longest = max(longest, unit.cost)
                if batch and (total + unit.cost > window if self.sort_window_passes > 1
                              else (len(batch) + 1) * new_longest > budget):
                    full = True
                    break
                batch.append((chosen, chosen.next_unit))
                chosen.next_unit += 1
                chosen.attained += unit.cost
                self._queued_units -= 1
                key, longest, total = chosen.key, new_longest, total + unit.cost
                progress = True
                if chosen.pending_units == 0:
                    reqs.remove(chosen)
                    if not reqs:
                        del self._principals[principal]
            if not progress:
                break
        if self._principals:  # the next batch starts with the next principal
            self._principals.move_to_end(next(iter(self._principals)))
        metrics.QUEUE_DEPTH.labels(self.slug).set(self._queued_units)
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._principals and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                batch = self._next_batch_locked()
                self.busy = True
            try:
                self._compute(batch)
            except BaseException:  # never let the worker die
                logger.exception("batch worker of %s", self.slug)
            finally:
                self.busy = False

    def _pass_budget(self) -> int:
        """Padded tokens of one forward pass: ``toks_per_batch``, capped near ``batch_target_s``
        of compute at the measured speed when that is set."""
        budget = self.toks_per_batch
        if self.batch_target_s and self._tokens_per_s > 0:  # keep a pass near the latency target
            budget = int(min(budget, max(1, self._tokens_per_s * self.batch_target_s)))
        return budget

    def _compute(self, batch: list[tuple[ScheduledRequest, int]]) -> None:
        """Compute a round: one pass, or (``sort_window_passes`` > 1) its units sorted by length,
        longest first, and packed into passes of at most the pass budget (padded tokens)."""
        if self.sort_window_passes == 1 or len(batch) < 2:
            self._compute_pass(batch)
            return
        budget = self._pass_budget()
        batch = sorted(batch, key=lambda ru: -ru[0].units[ru[1]].cost)
        passes: list[list[tuple[ScheduledRequest, int]]] = [[]]
        for r, i in batch:
            cur = passes[-1]
            longest = cur[0][0].units[cur[0][1]].cost if cur else 0  # sorted: the first is the longest
            if cur and (len(cur) + 1) * max(longest, r.units[i].cost) > budget:
                passes.append([])
            passes[-1].append((r, i))
        for one in passes:
            self._compute_pass(one)

    def _compute_pass(self, batch: list[tuple[ScheduledRequest, int]]) -> None:
        live = [(r, i) for r, i in batch if not r.canceled]
        if not live:
            return
        first = live[0][0]
        payloads = [r.units[i].payload for r, i in live]
        tokens = sum(r.units[i].cost for r, i in live)
        t0 = time.perf_counter()
        try:
            outs = first.method.run(self.engine, payloads, first.params)
            if len(outs) != len(payloads):
                raise RuntimeError(f"batch method returned {len(outs)} results for {len(payloads)} items")
        except BaseException as exc:
            for r in {id(r): r for r, _ in live}.values():
                self._fail(r, exc)
            return
        dt = max(time.perf_counter() - t0, 1e-9)
        self.batches_computed += 1
        self.units_computed += len(live)
        self._tokens_per_s = tokens / dt if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * tokens / dt
        metrics.BATCHES.labels(self.slug, first.method_name).inc()
        metrics.BATCH_SIZE.labels(self.slug).observe(len(live))
        metrics.BATCH_TOKENS.labels(self.slug).observe(len(live) * max(r.units[i].cost for r, i in live))
        metrics.TOKENS.labels(self.slug).inc(tokens)
        metrics.TOKENS_PER_S.labels(self.slug).set(tokens / dt)
        for (r, i), out in zip(live, outs):
            if r.canceled or r.future.done():
                continue
            r.results[i] = out
            r.done_units += 1
            if r.done_units == len(r.units):
                try:
                    r.future.set_result(self._combine(r))
                    metrics.MODEL_REQUESTS.labels(self.slug, r.method_name, "ok").inc()
                except BaseException as exc:  # a combine bug must not kill the worker
                    self._fail(r, exc)

    @staticmethod
    def _combine(r: ScheduledRequest) -> list[Any]:
        if r.method.combine is None:
            return list(r.results)
        return r.method.combine(r.n_items, r.units, r.results)

    def _fail(self, r: ScheduledRequest, exc: BaseException) -> None:
        if r.future.done():
            return
        with self._cv:  # drop its other queued units
            dropped = r.pending_units
            r.next_unit = len(r.units)
            self._queued_units -= dropped
            reqs = self._principals.get(r.principal)
            if reqs is not None and r in reqs:
                reqs.remove(r)
                if not reqs:
                    del self._principals[r.principal]
            if r in self._express:
                self._express.remove(r)
        if not isinstance(exc, PlmserveError):
            logger.error("batch of %s failed: %s: %s", self.slug, type(exc).__name__, exc)
        metrics.MODEL_REQUESTS.labels(self.slug, r.method_name, "error").inc()
        r.future.set_exception(exc)


# ------------------------------------------------------------------------------------------------
# the app-level registry of schedulers and the route entry point

_registry_lock = threading.Lock()


def get_scheduler(app: Any, slug: str, engine: Any) -> ModelScheduler:
    """The scheduler of ``engine`` (created on first use; replaced when the model was reloaded)."""
    schedulers = _schedulers(app)
    with _registry_lock:
        sched = schedulers.get(slug)
        if sched is not None and sched.engine is engine and sched.alive():
            return sched
        if sched is not None:
            sched.stop(timeout=0)
        settings = app.state.settings
        budget = int(getattr(engine, "toks_per_batch", None) or getattr(settings, "toks_per_batch", 4096))
        sched = ModelScheduler(slug, engine, toks_per_batch=budget,
                               max_queue_items=int(getattr(settings, "max_queue_items", 65536)),
                               batch_target_s=getattr(settings, "batch_target_s", None),
                               express_max_tokens=int(getattr(settings, "express_max_tokens", 0) or 0),
                               sort_window_passes=int(getattr(settings, "sort_window_passes", 1) or 1))
        schedulers[slug] = sched
        return sched


def _schedulers(app: Any) -> dict[str, ModelScheduler]:
    schedulers = getattr(app.state, "schedulers", None)
    if schedulers is None:
        schedulers = {}
        app.state.schedulers = schedulers
    return schedulers


def stop_schedulers(app: Any) -> None:
    """Stop every model's scheduler of ``app`` (shut-down hook)."""
    for sched in list(_schedulers(app).values()):
        sched.stop()
    _schedulers(app).clear()


async def _wait_disconnect(request: Any) -> None:
    """Return when the client of ``request`` has disconnected (the body was already read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def run_batched(request: Any, slug: str, method: str, items: Sequence[Any], /, *, family: str = "esm2",
                      principal: Any = None, **params: Any) -> list[Any]:
    """Compute ``method`` of model ``slug`` over ``items`` through the model's batching scheduler.

    Loads the model if needed (in a worker thread), expands the items into forward-pass units
    (raising validation errors before anything is queued), queues them and awaits the results
    without blocking the event loop. When the client disconnects first, the request's queued
    units are dropped (nothing more is computed for it) and :class:`ClientDisconnected` is raised.

    Args:
        request: the Starlette/FastAPI request (app state, disconnect detection).
        slug: model name; ``family``: its registry family (``esm2``; others register methods).
        method: a name registered with :func:`register_method` for ``family``.
        items: the request's inputs (for ESM-2: validated sequences).
        principal: the caller (:class:`plmserve.api.auth.Principal` or a string): fairness key.
        **params: the method's parameters (the same for every item).

    Returns:
        One result per item, in order (the method's ``combine``).

    Raises:
        ServiceUnavailableError: the model's queue is full (503, ``Retry-After``).
        LimitExceededError: the request needs more forward passes than ``max_forward_passes``.
        PlmserveError: whatever the model or the method raises for this request.
    """
    from starlette.concurrency import run_in_threadpool

    from plmserve.errors import LimitExceededError

    app = request.app
    bm = get_method(family, method)
    engine = await run_in_threadpool(app.state.models.get, slug, family)
    units = bm.expand(engine, items, params)
    limit = int(getattr(app.state.settings, "max_forward_passes", 0) or 0)
    if limit and len(units) > limit:
        raise LimitExceededError(
            f"this request needs {len(units)} forward passes; at most {limit} per request (server setting "
            "PLMSERVE_MAX_FORWARD_PASSES; log_prob with the pseudo-log-likelihood costs one pass per residue, "
            "score_variants one per distinct set of mutated positions)")
    from plmserve.models.registry import get_spec

    sched = get_scheduler(app, get_spec(slug, family).slug, engine)
    key = getattr(principal, "name", None) or (str(principal) if principal is not None else "anonymous")
    req = sched.submit(key, method, bm, units, len(items), params)
    fut = asyncio.wrap_future(req.future)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({fut, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        dropped = sched.cancel(req)
        logger.info("client disconnected: %d queued items of a %s request to %s dropped", dropped, method, slug)
        raise ClientDisconnected("the client disconnected before the results were ready")
    except asyncio.CancelledError:
        sched.cancel(req)
        raise
    finally:
        disconnect.cancel()
        if not fut.done():
            fut.cancel()


# ------------------------------------------------------------------------------------------------
# ESM-2 methods


def _esm2_units(engine: Any, sequences: Sequence[str], params: dict) -> list[Unit]:
    return [Unit(cost=len(_ids(s)) + 2, item=i, payload=s) for i, s in enumerate(sequences)]


def _ids(seq: str):
    from plmserve.models.esm2.alphabet import encode_residues

    return encode_residues(seq)


def _esm2_encode(engine: Any, seqs: list[str], params: dict) -> list[Any]:
    return engine.encode(seqs, include=tuple(params["include"]), repr_layers=tuple(params["repr_layers"]))


def _esm2_predict(engine: Any, seqs: list[str], params: dict) -> list[Any]:
    return engine.predict(seqs)


def _pll_units(engine: Any, sequences: Sequence[str], params: dict) -> list[Unit]:
    import numpy as np

    from plmserve.models.esm2.alphabet import STANDARD_SLICE

    if params.get("method", "pll") == "biolm":
        return _esm2_units(engine, sequences, params)
    units: list[Unit] = []
    for i, s in enumerate(sequences):
        r = _ids(s)
        for p in np.nonzero((r >= STANDARD_SLICE.start) & (r < STANDARD_SLICE.stop))[0]:
            units.append(Unit(cost=len(r) + 2, item=i, payload=(r, int(p))))
    return units


def _esm2_log_prob(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    if params.get("method", "pll") == "biolm":
        return engine.log_prob(payloads, method="biolm")
    lps = engine.masked_log_probs([(r, (p,)) for r, p in payloads])
    return [float(lp[0, r[p]]) for (r, p), lp in zip(payloads, lps)]


def _sum_per_item(n_items: int, units: list[Unit], results: list[Any]) -> list[float]:
    totals = [0.0] * n_items
    for u, v in zip(units, results):
        totals[u.item] += float(v)
    return totals


register_method("esm2", "encode", BatchMethod(expand=_esm2_units, run=_esm2_encode))
register_method("esm2", "predict", BatchMethod(expand=_esm2_units, run=_esm2_predict))
register_method("esm2", "log_prob", BatchMethod(expand=_pll_units, run=_esm2_log_prob, combine=_sum_per_item))
