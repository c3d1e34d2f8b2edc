"""Executors run jobs from the :class:`~plmserve.jobs.store.JobStore`.

The interface (:class:`Executor`) is small on purpose -- ``start``, ``stop``, ``submit``,
``cancel`` -- so that a cluster executor (jobs claimed by worker processes on other machines
through the same database) can replace the default :class:`InProcessExecutor` later.

A job's work is a *handler* chosen by ``job_type``: ``handler(ctx: JobContext) -> JobOutput``.
Handlers must be idempotent: they read their inputs from the store and return their results; the
executor writes the results and the SUCCESS status in one transaction (so a job interrupted by a
crash simply runs again from the start after a restart).
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from plmserve.errors import PlmserveError
from plmserve.jobs.store import CANCELED, DONE_STATUSES, SUCCESS, JobRecord, JobStore

logger = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised inside a handler (by :meth:`JobContext.progress`) when its job was canceled."""


class JobInterrupted(Exception):
    """Raised inside a handler when the executor shuts down; the job goes back to PENDING."""


@dataclass
class JobOutput:
    """What a handler returns: named result blobs and the number of result records."""

    artifacts: dict[str, bytes] = field(default_factory=dict)
    num_records: int | None = None
    message: str | None = None


@dataclass
class JobContext:
    """What a handler gets: the job, the store, shared resources, progress reporting.

    Attributes:
        job: the RUNNING job (snapshot).
        store: the job store (read inputs and prerequisite results with ``get_artifact``).
        resources: whatever the executor was built with (settings, model manager, ...).
    """

    job: JobRecord
    store: JobStore
    resources: Any = None
    _cancel_event: threading.Event = field(default_factory=threading.Event)
    _shutdown_event: threading.Event = field(default_factory=threading.Event)

    @property
    def args(self) -> dict[str, Any]:
        """The job's registered arguments."""
        return self.job.args

    def progress(self, done: float, total: float, message: str | None = None) -> None:
        """Report ``done`` of ``total`` units (stored as 0..100 %).

        Raises:
            JobCanceled: the job was canceled (in this process or in the database).
            JobInterrupted: the executor is shutting down (the job will re-run after a restart).
        """
        if self._shutdown_event.is_set():
            raise JobInterrupted(self.job.job_id)
        if self._cancel_event.is_set():
            raise JobCanceled(self.job.job_id)
        pct = int(100 * done / total) if total else 0
        status = self.store.set_progress(self.job.job_id, min(pct, 99), message)
        if status == CANCELED:
            self._cancel_event.set()
            raise JobCanceled(self.job.job_id)

    def check_canceled(self) -> None:
        """Raise :class:`JobCanceled` when the job was canceled (no progress written)."""
        if self._cancel_event.is_set() or self.store.status_of(self.job.job_id) == CANCELED:
            self._cancel_event.set()
            raise JobCanceled(self.job.job_id)


Handler = Callable[[JobContext], JobOutput]


def attempts_exhausted(store: JobStore, job: Any, max_attempts: int | None) -> bool:
    """Fail ``job`` (and return True) when it already ran ``max_attempts`` times (each run that
    was interrupted by a shut-down or a crash counts); the failure message says why."""
    if not max_attempts or (job.attempts or 0) < max_attempts:
        return False
    last = f"; last run: {job.progress_message}" if job.progress_message else ""
    store.fail(job.job_id, f"gave up after {job.attempts} attempts (at most {max_attempts}, server setting "
                           f"PLMSERVE_JOB_MAX_ATTEMPTS){last}")
    logger.warning("job %s failed: %d attempts", job.job_id, job.attempts)
    return True


class Executor(ABC):
    """Runs the PENDING jobs of a store. Implementations: :class:`InProcessExecutor`."""

    @abstractmethod
    def start(self) -> None:
        """Start the worker threads, then re-queue the unfinished jobs of the store: PENDING ones again, RUNNING ones from the start."""
        """Start working; re-queue jobs left PENDING or RUNNING by a previous process."""

    @abstractmethod
    def stop(self, wait: bool = True) -> None:
        """Stop the workers; running jobs are interrupted and set back to PENDING so they re-run on the next start."""
        """Stop taking jobs (running ones finish when ``wait``; unfinished ones stay queued in the store)."""

    @abstractmethod
    def submit(self, job_id: str) -> None:
        """Queue a stored job; a job with an unfinished prerequisite starts once that job succeeds."""
        """Queue a PENDING job (it waits for its prerequisite job, if any, to succeed)."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Cancel a job: a queued job never starts, a running one stops at its next progress report."""
        """Tell a running job to stop (the store already says CANCELED)."""

    def wait_idle(self, timeout: float | None = None) -> bool:  # pragma: no cover - optional
        """Block until no job is queued or running (tests). Returns False on timeout."""
        raise NotImplementedError


class InProcessExecutor(Executor):
    """A pool of worker threads in the server process (models stay loaded and are shared).

    Args:
        store: the job store.
        handlers: ``job_type -> handler``.
        workers: number of worker threads (jobs run in parallel up to this number).
        resources: passed to every handler as ``ctx.resources``.

    Prerequisites: a job whose ``prerequisite_job_id`` is not done yet is parked and re-queued
    when that job finishes; if the prerequisite failed or was canceled the job fails with a
    message naming it. A failing handler marks only its own job FAILURE (``failure_message`` =
    the error's message); the worker goes on with the next job.
    """

    def __init__(self, store: JobStore, handlers: Mapping[str, Handler], *, workers: int = 1,
                 resources: Any = None, max_attempts: int | None = 3):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.max_attempts = max_attempts  # runs of one job before FAILURE (None: unlimited)
        self.store = store
        self.handlers = dict(handlers)
        self.workers = workers
        self.resources = resources
        self._queue: "queue.Queue[str | None]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Condition()
        self._waiting: dict[str, list[str]] = {}  # prerequisite id -> parked job ids
        self._running: dict[str, JobContext] = {}
        self._queued = 0
        self._started = False
        self._shutdown = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._shutdown = threading.Event()
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"plmserve-job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        recovered = self.store.requeue_unfinished()
        if recovered:
            logger.info("re-queued %d unfinished job(s)", len(recovered))
        for job in recovered:
            self.submit(job.job_id)

    def stop(self, wait: bool = True) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            self._shutdown.set()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join(timeout=60)
        self._threads.clear()
        # drain what is left: those jobs stay PENDING in the store and are re-queued on start
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._queued = 0
            self._waiting.clear()
            self._lock.notify_all()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started

    # ------------------------------------------------------------------ scheduling
    def submit(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        prereq = job.prerequisite_job_id
        with self._lock:
            if prereq:
                status = self.store.status_of(prereq)
                if status is not None and status not in DONE_STATUSES:
                    self._waiting.setdefault(prereq, []).append(job_id)
                    self._queued += 1
                    return
            self._queued += 1
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            ctx = self._running.get(job_id)
            if ctx is not None:
                ctx._cancel_event.set()
        self._release_waiters(job_id)

    def _queued_put(self, job_id: str) -> None:
        with self._lock:
            self._queued += 1
        self._queue.put(job_id)

    def _release_waiters(self, finished_id: str) -> None:
        with self._lock:
            waiters = self._waiting.pop(finished_id, [])
        for jid in waiters:
            self._queue.put(jid)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, parked or running. Returns False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._queued == 0 and not self._running, timeout=timeout)

    # ------------------------------------------------------------------ work
    def _worker(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run_one(job_id)
            except Exception:  # never let a worker die
                logger.exception("internal error while running job %s", job_id)
            finally:
                with self._lock:
                    self._queued = max(0, self._queued - 1)
                    self._lock.notify_all()

    def _run_one(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job.status != "PENDING":
            self._release_waiters(job_id)
            return
        if job.prerequisite_job_id:
            pre_status = self.store.status_of(job.prerequisite_job_id)
            if pre_status is None:
                self.store.fail(job_id, f"prerequisite job {job.prerequisite_job_id} does not exist")
                self._release_waiters(job_id)
                return
            if pre_status != SUCCESS and pre_status in DONE_STATUSES:
                pre = self.store.get_job(job.prerequisite_job_id)
                why = f": {pre.failure_message}" if pre.failure_message else ""
                self.store.fail(job_id, f"prerequisite job {pre.job_id} ended {pre.status}{why}")
                self._release_waiters(job_id)
                return
            if pre_status != SUCCESS:  # not done yet (re-submitted while waiting): park again
                with self._lock:
                    if self.store.status_of(job.prerequisite_job_id) not in DONE_STATUSES:
                        self._waiting.setdefault(job.prerequisite_job_id, []).append(job_id)
                        self._queued += 1
                        return
                self._queued_put(job_id)
                return
        handler = self.handlers.get(job.job_type)
        if handler is None:
            self.store.fail(job_id, f"this server has no worker for job type {job.job_type!r}")
            self._release_waiters(job_id)
            return
        if attempts_exhausted(self.store, job, self.max_attempts):
            self._release_waiters(job_id)
            return
        running = self.store.claim(job_id)
        if running is None:  # canceled meanwhile
            self._release_waiters(job_id)
            return
        ctx = JobContext(job=running, store=self.store, resources=self.resources,
                         _shutdown_event=self._shutdown)
        with self._lock:
            self._running[job_id] = ctx
        try:
            output = handler(ctx)
            if not self.store.complete(job_id, output.artifacts, output.num_records, output.message):
                logger.info("job %s finished but is no longer RUNNING (canceled); result dropped", job_id)
        except JobCanceled:
            logger.info("job %s canceled", job_id)
        except JobInterrupted:
            logger.info("job %s interrupted by shut-down; it re-runs after the next start", job_id)
            self.store.requeue(job_id)
        except PlmserveError as exc:
            self.store.fail(job_id, str(exc))
        except MemoryError:
            self.store.fail(job_id, "out of memory while running the job")
        except Exception as exc:
            logger.exception("job %s (%s) failed", job_id, job.job_type)
            self.store.fail(job_id, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._lock.notify_all()
            self._release_waiters(job_id)
