"""Run jobs on a Ray cluster: ``plmserve serve --executor ray [--ray-address auto|HOST:PORT]``.

Three pieces, each in its own process:

- :class:`RayExecutor` (in every API process) implements :class:`~plmserve.jobs.executor.Executor`.
  It connects to Ray and finds -- or creates -- the cluster's job dispatcher; ``submit`` and
  ``cancel`` only notify it. Several API replicas behind a load balancer share one dispatcher.
- :class:`JobDispatcher`, a *detached* named Ray actor (one per job database; restarted by Ray if
  its node dies). It scans the store for PENDING jobs whose prerequisite succeeded and launches
  one Ray task per job with the resources the settings declare (``ray_job_num_cpus``,
  ``ray_job_num_gpus`` for the jobs that run a model, ``ray_job_memory_mb``), so jobs spread
  over the nodes that have room. It watches the tasks: a task whose worker process or node died is retried
  (the job goes back to PENDING) until the job's ``attempts`` reach ``job_max_attempts``; then
  the job fails with a message saying so. Because the dispatcher and its tasks outlive the API
  process, a killed API process loses nothing: on restart it re-attaches to the dispatcher, and
  jobs the dead process created but never handed over are found by the scan (re-submitted).
- :func:`_run_job` (a Ray task on a worker) claims the job (PENDING -> RUNNING, ``attempts`` + 1)
  and runs the same handler as the in-process executor (:mod:`plmserve.jobs.poet`) with the
  worker's own model manager (models stay loaded in the worker process between jobs).

The job store (PostgreSQL for a cluster) stays the source of truth. Every write of a task is
*fenced* by its attempt number (``... WHERE status = 'RUNNING' AND attempts = <mine>``): progress,
the result (written with SUCCESS in one transaction) and a failure are written at most once, by
the current attempt only, so a retried job -- or a zombie worker that lost contact -- never writes
duplicated or stale results. Cancellation: the store says CANCELED (the API writes it), a queued
task is dropped by Ray, a running one stops at its next progress report.

What moves between processes, and how:

- **Encoded prompts** (PoET's per-layer prompt keys/values, :class:`~plmserve.models.poet.engine.PromptCache`)
  travel through Ray's object store (:mod:`plmserve.cluster.prompt_cache`): the worker that first
  encodes a prompt hands the arrays to the dispatcher, which stores them with ``ray.put`` (so the dispatcher
  owns the object and it outlives that worker) and keeps ``prompt key -> ObjectRef`` in an LRU
  bounded by ``ray_prompt_cache_mb``; every later job on any node that needs the same prompt, model
  and direction reads the object instead of encoding the prompt again.
- **Results** go from the task straight to the store, once: the handler returns its artifacts
  (``result.json`` is one blob for the whole job, however many rows it has) and :class:`AttemptStore`
  writes them with SUCCESS in one fenced transaction -- one ``INSERT`` per artifact, never a row per
  result row, and nothing before the job is complete (progress is a counter). The task's Ray return
  value is only its outcome (``"success"`` ...), so no result is copied through the dispatcher;
  readers (the API replicas) fetch the blob from the store.
- Job arguments and inputs (``input.json``, the prompt) are read by the task from the store.

SQLite works only when every Ray node runs on this machine (the workers open the same file);
:func:`connect` refuses otherwise, naming the remote nodes. Design after Ray's own guidance on
fault tolerance (``https://docs.ray.io/en/latest/ray-core/fault-tolerance.html``): application
retries in the owner, detached actors for state that must outlive a driver.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlalchemy import delete, update

from plmserve.errors import PlmserveError
from plmserve.jobs.executor import (
    Executor,
    Handler,
    JobCanceled,
    JobContext,
    JobInterrupted,
)
from plmserve.jobs.models import Job, JobArtifact, utcnow
from plmserve.jobs.store import (
    CANCELED,
    DONE_STATUSES,
    FAILURE,
    PENDING,
    RUNNING,
    SUCCESS,
    JobStore,
)

logger = logging.getLogger(__name__)

DEFAULT_HANDLERS = "plmserve.jobs.poet:handlers"
#: Seconds the dispatcher waits on running tasks before looking at new submissions again.
WAKE_SLICE_S = 0.05
#: Job types that run no model (MSA search, prompt sampling): they never get ``ray_job_num_gpus``.
NO_MODEL_JOB_PREFIX = "/align/"


class RayUnavailableError(PlmserveError):
    """Ray is not installed, not reachable, or cannot reach the job store."""


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in the dev extra
        raise RayUnavailableError(
            "--executor ray needs Ray: pip install 'plmserve[ray]' (or 'ray[default]>=2.9')") from None
    return ray


def dispatcher_name(database_url: str) -> str:
    """The dispatcher actor's name: one per job database (two deployments may share a cluster)."""
    return "plmserve-jobs-" + hashlib.sha256(database_url.encode()).hexdigest()[:12]


def worker_settings(settings: Any) -> dict[str, Any]:
    """Settings as JSON for the workers (API keys are not sent)."""
    data = settings.model_dump(mode="json")
    data["api_keys"] = []
    data["database_url"] = settings.resolved_database_url()
    return data


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast (ray.init retries for minutes) when a ``HOST:PORT`` head does not answer."""
    import socket

    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise RayUnavailableError(
            f"no Ray head answers at {address} ({exc}); start one with 'ray start --head --port {port}' "
            "or give --ray-address auto on a node of the cluster") from None


def connect(settings: Any) -> None:
    """Connect this process to Ray (``settings.ray_address``: None starts a local Ray instance,
    ``"auto"`` or ``"HOST:PORT"`` joins a running cluster) and check that its workers can reach
    the job store.

    Raises:
        RayUnavailableError: Ray is missing or unreachable, or the store is a SQLite file while
            the cluster has nodes on other machines (their workers cannot open the file).
    """
    ray = _ray()
    if not ray.is_initialized():
        _check_reachable(settings.ray_address)
        kwargs: dict[str, Any] = {"namespace": settings.ray_namespace, "log_to_driver": False}
        if settings.ray_address:
            kwargs["address"] = settings.ray_address
        else:
            kwargs["include_dashboard"] = False
        try:
            ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, timeouts, authentication ...
            hint = ""
            if "auth" in f"{type(exc).__name__} {exc}".lower():
                hint = ("; the cluster uses Ray token authentication: copy its token (~/.ray/auth_token on the "
                        "head) to this machine or set RAY_AUTH_TOKEN, and export RAY_AUTH_MODE=token")
            raise RayUnavailableError(
                f"cannot connect to the Ray cluster at {settings.ray_address or '(local)'}: {exc}{hint}") from None
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        here = ray.util.get_node_ip_address()
        local = {here, "127.0.0.1", "localhost"}
        remote = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - local)
        if remote:
            raise RayUnavailableError(
                f"--executor ray with the SQLite job store {url}: the Ray nodes {', '.join(remote)} are on "
                "other machines and their workers cannot open this file; set PLMSERVE_DATABASE_URL to a "
                "PostgreSQL database that every node can reach (postgresql+psycopg://user:pw@host/db)")


# ---------------------------------------------------------------------- fenced writes
class AttemptStore:
    """The job store as one attempt of one job sees it: reads pass through; progress, result and
    failure writes apply only while the job is RUNNING *with this attempt number*.

    Args:
        store: the shared :class:`JobStore`.
        job_id: the job.
        attempt: the value of ``attempts`` this attempt's claim produced.
    """

    def __init__(self, store: JobStore, job_id: str, attempt: int):
        self._store = store
        self.job_id = job_id
        self.attempt = attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _mine(self):
        return (Job.job_id == self.job_id, Job.status == RUNNING, Job.attempts == self.attempt)

    def set_progress(self, job_id: str, counter: int, message: str | None = None) -> str:
        """Progress of this attempt; returns CANCELED when the job was canceled *or* another
        attempt owns it now (the caller stops either way)."""
        values: dict[str, Any] = {"progress_counter": max(0, min(100, int(counter)))}
        if message is not None:
            values["progress_message"] = message
        with self._store._session() as s:
            res = s.execute(update(Job).where(*self._mine()).values(**values))
            s.commit()
        return RUNNING if res.rowcount == 1 else CANCELED

    def complete(self, artifacts: Mapping[str, bytes], num_records: int | None = None,
                 message: str | None = None) -> bool:
        """Results + SUCCESS in one transaction; False (nothing written) unless this attempt owns
        the job. Same-named artifacts are replaced, never duplicated."""
        now = utcnow()
        with self._store._session() as s:
            res = s.execute(update(Job).where(*self._mine()).values(
                status=SUCCESS, end_date=now, progress_counter=100, num_records=num_records,
                progress_message=message))
            if res.rowcount != 1:
                s.rollback()
                return False
            names = list(artifacts)
            if names:
                s.execute(delete(JobArtifact).where(JobArtifact.job_id == self.job_id, JobArtifact.name.in_(names)))
            for name, content in artifacts.items():
                s.add(JobArtifact(job_id=self.job_id, name=name, content=bytes(content), created_date=now))
            s.commit()
            return True

    def fail(self, message: str) -> bool:
        """FAILURE with ``message`` unless another attempt owns the job (or it is done)."""
        with self._store._session() as s:
            res = s.execute(update(Job).where(*self._mine()).values(
                status=FAILURE, end_date=utcnow(), failure_message=message[:10000]))
            s.commit()
            return res.rowcount == 1


def run_attempt(store: JobStore, job_id: str, handler: Handler, resources: Any, *,
                max_attempts: int) -> str:
    """Claim ``job_id`` and run ``handler`` on it once, writing the outcome fenced by attempt.

    Returns:
        ``"success"``, ``"failure"``, ``"canceled"``, ``"superseded"`` (another attempt owns
        the job now) or ``"skipped"`` (the job was not PENDING: canceled or taken).
    """
    running = store.claim(job_id)
    if running is None:
        return "skipped"
    fenced = AttemptStore(store, job_id, running.attempts)
    if running.attempts > max_attempts:
        fenced.fail(f"the job was tried {running.attempts - 1} times (job_max_attempts={max_attempts})")
        return "failure"
    ctx = JobContext(job=running, store=fenced, resources=resources)  # type: ignore[arg-type]
    try:
        output = handler(ctx)
    except (JobCanceled, JobInterrupted):
        return "canceled" if store.status_of(job_id) == CANCELED else "superseded"
    except PlmserveError as exc:
        return "failure" if fenced.fail(str(exc)) else "superseded"
    except MemoryError:
        return "failure" if fenced.fail("out of memory while running the job") else "superseded"
    except Exception as exc:
        logger.exception("job %s (%s) failed", job_id, running.job_type)
        return "failure" if fenced.fail(f"{type(exc).__name__}: {exc}") else "superseded"
    if fenced.complete(output.artifacts, output.num_records, output.message):
        return "success"
    return "canceled" if store.status_of(job_id) == CANCELED else "superseded"


# ---------------------------------------------------------------------- the worker side
@dataclass
class _WorkerState:
    settings: Any
    store: JobStore
    handlers: dict[str, Handler]
    resources: Any
    dispatchers: dict[tuple[str, str], Any] = field(default_factory=dict)  # (name, namespace) -> handle

    def dispatcher(self, name: str, namespace: str, refresh: bool = False) -> Any:
        """The dispatcher actor's handle, looked up once per worker process (not per job)."""
        handle = None if refresh else self.dispatchers.get((name, namespace))
        if handle is None:
            handle = self.dispatchers[(name, namespace)] = _ray().get_actor(name, namespace=namespace)
        return handle


_WORKER_STATES: dict[str, _WorkerState] = {}
_WORKER_LOCK = threading.Lock()


def load_handlers(ref: str) -> dict[str, Handler]:
    """``"module:function"`` -> the ``job_type -> handler`` mapping that function returns."""
    mod, _, fn = ref.partition(":")
    return dict(getattr(importlib.import_module(mod), fn)())


def _one_thread_per_cpu(settings: Any) -> None:
    """Torch threads of a job worker = the CPUs its task declared (``ray_job_num_cpus``, at least 1):
    more threads than reserved CPUs only makes the workers of one node fight over the cores."""
    try:
        import torch

        torch.set_num_threads(max(1, int(settings.ray_job_num_cpus)))
    except Exception:  # pragma: no cover - torch is a dependency
        pass


def _worker_state(settings_json: Mapping[str, Any], handlers_ref: str) -> _WorkerState:
    """Per worker process: the store, the handlers and a model manager (models stay loaded)."""
    key = hashlib.sha256(repr(sorted(settings_json.items())).encode() + handlers_ref.encode()).hexdigest()
    with _WORKER_LOCK:
        state = _WORKER_STATES.get(key)
        if state is None:
            from plmserve.cluster.prompt_cache import ObjectStorePoetResources
            from plmserve.jobs.poet import PoetResources
            from plmserve.models.registry import ModelManager
            from plmserve.settings import Settings

            settings = Settings(**settings_json)
            _one_thread_per_cpu(settings)
            # prompt caches shared through Ray's object store (plmserve.cluster.prompt_cache)
            res_cls = ObjectStorePoetResources if settings.ray_prompt_cache_mb > 0 else PoetResources
            state = _WorkerState(settings, JobStore(settings.resolved_database_url()), load_handlers(handlers_ref),
                                 res_cls(settings, ModelManager(settings)))
            _WORKER_STATES[key] = state
        return state


def _run_job(job_id: str, settings_json: dict[str, Any], handlers_ref: str, dispatcher: str,
             namespace: str) -> str:
    """The body of a job's Ray task: tell the dispatcher where it runs, then :func:`run_attempt`."""
    ray = _ray()
    state = _worker_state(settings_json, handlers_ref)
    node_id = ray.get_runtime_context().get_node_id()
    actor = None
    for refresh in (False, True):  # a cached handle of a dispatcher that was restarted still works
        try:
            actor = state.dispatcher(dispatcher, namespace, refresh=refresh)
            actor.started.remote(job_id, os.getpid(), node_id)
            break
        except Exception:  # informational only
            actor = None
    prompt_cache = getattr(state.resources, "prompt_cache", None)
    if prompt_cache is not None:
        prompt_cache.bind(actor, job_id, node_id)
    job = state.store.get_job(job_id)
    handler = state.handlers.get(job.job_type)
    if handler is None:
        state.store.fail(job_id, f"the Ray workers have no handler for job type {job.job_type!r}")
        return "failure"
    return run_attempt(state.store, job_id, handler, state.resources,
                       max_attempts=int(state.settings.job_max_attempts))


_REMOTE_RUN_JOB = None


def _remote_run_job():
    global _REMOTE_RUN_JOB
    if _REMOTE_RUN_JOB is None:
        _REMOTE_RUN_JOB = _ray().remote(_run_job)
    return _REMOTE_RUN_JOB


# ---------------------------------------------------------------------- the dispatcher actor
@dataclass
class _Flight:
    ref: Any
    job_type: str
    submitted: float = field(default_factory=time.monotonic)


class JobDispatcher:
    """The cluster's job dispatcher (run as a detached Ray actor by :class:`RayExecutor`).

    Args:
        settings_json: :func:`worker_settings` of the API's settings.
        handlers_ref: ``"module:function"`` giving the handlers (default: the PoET/align jobs).
        name: the actor's name (its tasks report to it by name).
        poll_s: seconds between two scans of the store for PENDING jobs.
    """

    def __init__(self, settings_json: dict[str, Any], handlers_ref: str = DEFAULT_HANDLERS,
                 name: str = "", poll_s: float = 0.5):
        from plmserve.settings import Settings

        self.settings_json = dict(settings_json)
        self.settings = Settings(**settings_json)
        self.handlers_ref = handlers_ref
        self.job_types = set(load_handlers(handlers_ref))
        self.name = name
        self.namespace = self.settings.ray_namespace
        self.poll_s = poll_s
        self.store = JobStore(self.settings.resolved_database_url())
        self.max_attempts = max(1, int(self.settings.job_max_attempts))
        self._flights: dict[str, _Flight] = {}
        self._where: dict[str, tuple[int, str]] = {}  # job_id -> (pid, node id) of its running task
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.events: list[tuple[str, str, str]] = []  # (job_id, event, detail), for operators/tests
        from plmserve.cluster.prompt_cache import PromptCacheDirectory

        self.prompt_caches = PromptCacheDirectory(max(0, int(self.settings.ray_prompt_cache_mb)) * 2**20)
        # A new dispatcher (first start, or restarted by Ray after its node died): no task of a
        # previous incarnation survives its owner, so RUNNING jobs go back to PENDING.
        for job in self.store.list_jobs(status=RUNNING):
            if job.job_type in self.job_types and self.store.requeue(job.job_id):
                self._event(job.job_id, "requeued", "the job dispatcher restarted")
        self._thread = threading.Thread(target=self._loop, name="plmserve-ray-dispatcher", daemon=True)
        self._thread.start()

    # ----- remote API
    def ping(self) -> str:
        """Liveness check; returns the actor's name."""
        return self.name

    def pid(self) -> int:
        """The dispatcher's process id (operators, fault tests)."""
        return os.getpid()

    def submit(self, job_id: str) -> None:
        """A job was created: scan the store now (the job starts once its prerequisite succeeded)."""
        self._wake.set()

    def reconcile(self) -> None:
        """Scan the store now (an API process (re)started and may have left PENDING jobs)."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """The store says CANCELED: drop a task Ray has not started (a running one stops at its
        next progress report)."""
        ray = _ray()
        with self._lock:
            flight = self._flights.get(job_id)
            started = job_id in self._where
        if flight is not None and not started:
            try:
                ray.cancel(flight.ref)
            except Exception:
                pass
        self._wake.set()

    def started(self, job_id: str, pid: int, node_id: str) -> None:
        """Called by a job's task when a worker process starts it (may arrive before the
        dispatcher has recorded the flight: kept apart until the flight ends)."""
        with self._lock:
            self._where[job_id] = (pid, node_id)
        self._event(job_id, "started", f"pid {pid} on node {node_id}")

    def running(self) -> dict[str, dict[str, Any]]:
        """``job_id -> {"pid", "node_id", "job_type"}`` of the tasks in flight (pid None while queued)."""
        with self._lock:
            return {j: {"pid": self._where.get(j, (None, None))[0], "node_id": self._where.get(j, (None, None))[1],
                        "job_type": f.job_type} for j, f in self._flights.items()}

    def history(self) -> list[tuple[str, str, str]]:
        """Events so far: ``(job_id, "launched" | "started" | "retry" | "gave_up" | outcome, detail)``."""
        with self._lock:
            return list(self.events)

    # ----- prompt caches shared through the object store (plmserve.cluster.prompt_cache)
    def prompt_cache_lookup(self, key: str, who: tuple = ()) -> list[Any] | None:
        """``[ObjectRef]`` of an encoded prompt a worker published, or None."""
        return self.prompt_caches.lookup(key, who)

    def prompt_cache_publish(self, key: str, payload: dict[str, Any], who: tuple = ()) -> bool:
        """Keep an encoded prompt in the object store, owned by this actor (outlives the worker)."""
        return self.prompt_caches.publish(key, payload, who)

    def prompt_cache_forget(self, key: str, who: tuple = ()) -> None:
        """A worker could not read the entry's object: drop it."""
        self.prompt_caches.forget(key, who)

    def prompt_cache_stats(self) -> dict[str, int]:
        """Hits, misses, publications ... and the entries and bytes held."""
        return self.prompt_caches.stats()

    def prompt_cache_events(self) -> list[tuple[str, str, str, int, str]]:
        """``(job_id, "hit" | "miss" | "publish" | "lost", key[:16], worker pid, node id)``."""
        return self.prompt_caches.events()

    def idle(self) -> bool:
        """No task in flight and no PENDING job in the store."""
        with self._lock:
            if self._flights:
                return False
        return not self.store.list_jobs(status=PENDING, limit=1)

    # ----- internals
    def _event(self, job_id: str, what: str, detail: str = "") -> None:
        logger.info("job %s: %s %s", job_id, what, detail)
        with self._lock:
            self.events.append((job_id, what, detail))
            del self.events[:-10000]

    def _loop(self) -> None:
        ray = _ray()
        while not self._stop.is_set():
            try:
                with self._lock:
                    refs = {f.ref: j for j, f in self._flights.items()}
                if refs:
                    # wait for a task to end, in short slices so that a job submitted meanwhile
                    # is launched at once, not after up to poll_s (a worker may be free)
                    ready, deadline = [], time.monotonic() + self.poll_s
                    while not ready and not self._wake.is_set() and time.monotonic() < deadline:
                        ready, _ = ray.wait(list(refs), num_returns=1, timeout=WAKE_SLICE_S)
                    if ready:
                        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
                    for ref in ready:
                        self._finished(refs[ref], ref)
                else:
                    self._wake.wait(self.poll_s)
                self._wake.clear()
                self._schedule()
            except Exception:  # never let the dispatcher die (the database may be briefly away)
                logger.exception("job dispatcher loop")
                time.sleep(self.poll_s)

    def _finished(self, job_id: str, ref: Any) -> None:
        try:
            self._handle_finished(job_id, ref)
        finally:  # only now: idle() never sees a job between its task and its retry
            with self._lock:
                self._flights.pop(job_id, None)
                self._where.pop(job_id, None)

    def _handle_finished(self, job_id: str, ref: Any) -> None:
        ray = _ray()
        from ray import exceptions as rex

        try:
            outcome = ray.get(ref)
            self._event(job_id, outcome)
            return
        except rex.TaskCancelledError:
            self._event(job_id, "canceled", "queued task dropped")
            return
        except rex.RayTaskError as exc:  # our task raised: a bug or an unreachable store
            if isinstance(exc.cause, (rex.WorkerCrashedError, rex.NodeDiedError)):
                why = f"{type(exc.cause).__name__}"
            else:
                self.store.fail(job_id, f"internal error in the Ray job task: {exc.cause!r}"[:2000])
                self._event(job_id, "failure", repr(exc.cause))
                return
        except (rex.RayError, Exception) as exc:  # worker/node died, OOM-killed, object lost
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # The worker process or its node died while it held the job.
        job = self.store.get_job(job_id)
        if job.status != RUNNING:
            self._event(job_id, "retry", f"task lost before it claimed the job ({why})")
            self._wake.set()  # still PENDING: the next scan launches it again
            return
        if job.attempts >= self.max_attempts:
            msg = (f"the worker running this job died {job.attempts} times (job_max_attempts="
                   f"{self.max_attempts}); last: {why}")
            self.store.fail(job_id, msg)
            self._event(job_id, "gave_up", msg)
            return
        with self.store._session() as s:  # back to PENDING, only if no one else took it
            s.execute(update(Job).where(Job.job_id == job_id, Job.status == RUNNING,
                                        Job.attempts == job.attempts)
                      .values(status=PENDING, start_date=None, progress_counter=0,
                              progress_message=f"retrying: the worker died (attempt {job.attempts}: {why})"[:1000]))
            s.commit()
        self._event(job_id, "retry", f"attempt {job.attempts} lost: {why}")
        self._wake.set()

    def _options(self, job_type: str) -> dict[str, Any]:
        s = self.settings
        opts: dict[str, Any] = {"num_cpus": s.ray_job_num_cpus, "max_retries": 0,
                                "name": f"plmserve{job_type.replace('/', ':')}"}
        if not job_type.startswith(NO_MODEL_JOB_PREFIX) and s.ray_job_num_gpus:
            opts["num_gpus"] = s.ray_job_num_gpus
        if s.ray_job_memory_mb:
            opts["memory"] = int(s.ray_job_memory_mb) * 2**20
        return opts

    def _schedule(self) -> None:
        remote = _remote_run_job()
        for job in self.store.list_jobs(status=PENDING, oldest_first=True):
            if job.job_type not in self.job_types:
                self.store.fail(job.job_id, f"the Ray workers have no handler for job type {job.job_type!r} "
                                            f"(handlers: {self.handlers_ref})")
                self._event(job.job_id, "failure", "no handler")
                continue
            with self._lock:
                if job.job_id in self._flights:
                    continue
            if job.prerequisite_job_id:
                pre = self.store.status_of(job.prerequisite_job_id)
                if pre is None:
                    self.store.fail(job.job_id, f"prerequisite job {job.prerequisite_job_id} does not exist")
                    continue
                if pre not in DONE_STATUSES:
                    continue  # looked at again on the next scan
                if pre != SUCCESS:
                    p = self.store.get_job(job.prerequisite_job_id)
                    why = f": {p.failure_message}" if p.failure_message else ""
                    self.store.fail(job.job_id, f"prerequisite job {p.job_id} ended {p.status}{why}")
                    continue
            if job.attempts >= self.max_attempts:
                self.store.fail(job.job_id, f"the job was tried {job.attempts} times without finishing "
                                            f"(job_max_attempts={self.max_attempts})")
                self._event(job.job_id, "gave_up", f"{job.attempts} attempts")
                continue
            ref = remote.options(**self._options(job.job_type)).remote(
                job.job_id, self.settings_json, self.handlers_ref, self.name, self.namespace)
            with self._lock:
                self._flights[job.job_id] = _Flight(ref, job.job_type)
            self._event(job.job_id, "launched", job.job_type)


# ---------------------------------------------------------------------- the API side
class RayExecutor(Executor):
    """Jobs run as Ray tasks on the cluster, dispatched by the cluster's :class:`JobDispatcher`.

    Args:
        store: the API's job store (PostgreSQL for a multi-machine cluster).
        settings: :class:`plmserve.settings.Settings` (``ray_address``, ``ray_namespace``,
            ``ray_job_*`` resources, ``job_max_attempts``, model settings for the workers).
        handlers_ref: ``"module:function"`` returning ``job_type -> handler``; it must be
            importable on every node (the default PoET/align jobs are).

    ``stop()`` detaches this API process only: jobs keep running on the cluster and their results
    land in the store (another replica, or this one restarted, serves them).
    """

    def __init__(self, store: JobStore, settings: Any, *, handlers_ref: str = DEFAULT_HANDLERS):
        self.store = store
        self.settings = settings
        self.handlers_ref = handlers_ref
        self.name = dispatcher_name(settings.resolved_database_url())
        self._actor = None
        self._owns_ray = False
        self._lock = threading.Lock()

    @property
    def dispatcher(self):
        """The dispatcher actor's handle (after :meth:`start`)."""
        if self._actor is None:
            self.start()
        return self._actor

    def start(self) -> None:
        """Connect to Ray, re-attach to (or create) the dispatcher, and ask it to scan the store.

        Raises:
            RayUnavailableError: see :func:`connect`.
        """
        with self._lock:
            if self._actor is not None:
                return
            ray = _ray()
            self._owns_ray = not ray.is_initialized()
            connect(self.settings)
            actor_cls = ray.remote(JobDispatcher)
            self._actor = actor_cls.options(
                name=self.name, namespace=self.settings.ray_namespace, lifetime="detached", get_if_exists=True,
                max_restarts=-1, max_task_retries=-1, max_concurrency=16, num_cpus=0,
            ).remote(worker_settings(self.settings), self.handlers_ref, self.name)
            ray.get(self._actor.ping.remote(), timeout=300)
            self._actor.reconcile.remote()
            logger.info("Ray executor: attached to job dispatcher %s", self.name)

    def stop(self, wait: bool = True) -> None:
        """Detach from the cluster (jobs keep running there)."""
        with self._lock:
            self._actor = None
            if self._owns_ray:
                _ray().shutdown()
                self._owns_ray = False

    def submit(self, job_id: str) -> None:
        """Hand the job to the dispatcher (it runs once its prerequisite, if any, succeeded)."""
        self.dispatcher.submit.remote(job_id)

    def cancel(self, job_id: str) -> None:
        """The store already says CANCELED; the dispatcher drops or stops the task."""
        self.dispatcher.cancel.remote(job_id)

    def shutdown_dispatcher(self) -> None:
        """End the cluster's dispatcher for this store (tests, decommissioning; jobs in flight
        are re-queued by the next dispatcher)."""
        ray = _ray()
        try:
            ray.kill(ray.get_actor(self.name, namespace=self.settings.ray_namespace), no_restart=True)
        except ValueError:  # no such actor
            pass
        self._actor = None

    def running_jobs(self) -> dict[str, dict[str, Any]]:
        """See :meth:`JobDispatcher.running` (worker pid and node of every job in flight)."""
        return _ray().get(self.dispatcher.running.remote())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the dispatcher has nothing queued or in flight. False on timeout."""
        ray = _ray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ray.get(self.dispatcher.idle.remote()):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True


__all__ = ["AttemptStore", "JobDispatcher", "RayExecutor", "RayUnavailableError", "connect",
           "dispatcher_name", "run_attempt", "worker_settings"]
