"""Model workers on Ray: long-lived actors holding a loaded model, and a pool choosing the
least-loaded replica for every call.

::

    from plmserve.cluster.model_pool import ModelPool
    pool = ModelPool(Settings(ray_address="auto", model_replicas={"esm2-650m": 2}, ray_actor_num_gpus=1))
    pool.start()                                   # one actor per replica (one GPU each)
    outs = await pool.run("esm2-650m", "encode", ["MKTAYIAKQR"], include=("mean",))

- :class:`ModelWorker` (a Ray actor) loads one model with the worker's own
  :class:`~plmserve.models.registry.ModelManager` (``model_dir``, ``device``, ``dtype``,
  ``load_format`` from the settings; a GPU actor sees only the GPU Ray gave it) and calls its
  methods: ``encode``, ``predict``, ``log_prob``, ``score`` ... -- the same engine API the HTTP
  routes call in-process. The actors are *named and detached* (``plmserve-model-<slug>-<i>`` in
  the settings' namespace): several API replicas share them, an API restart re-attaches to them,
  and Ray restarts a replica whose process or node died (``max_restarts=-1``; calls in flight
  are retried, the model methods being pure functions of their inputs).
- :class:`ModelPool` (in each API process) keeps, per model, the number of calls it has in flight
  on each replica and sends each call to the replica with the fewest (ties: round robin), so
  adding a node with a replica adds throughput. Ray places each replica on a node with the
  declared resources (``ray_actor_num_cpus``, ``ray_actor_num_gpus``), so on a machine with
  four GPUs ``model_replicas={"esm2-650m": 4}`` and ``ray_actor_num_gpus=1`` give one actor per GPU.

Errors raised by the model (bad input: :class:`~plmserve.errors.PlmserveError`) are re-raised
unchanged by :meth:`ModelPool.run`, so the API maps them to the same 4xx as in-process.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
from typing import Any

from plmserve.errors import PlmserveError

logger = logging.getLogger(__name__)


class ModelWorker:
    """A Ray actor holding one loaded model (see the module docstring).

    Args:
        settings_json: settings as JSON (``Settings.model_dump(mode="json")``).
        slug: the model's registry name (e.g. ``esm2-650m``, ``poet``).
        family: its family (``esm2``, ``poet`` ...) or None to look it up.
    """

    def __init__(self, settings_json: dict[str, Any], slug: str, family: str | None = None):
        from plmserve.models.registry import ModelManager
        from plmserve.settings import Settings

        self.slug = slug
        self.family = family
        self.models = ModelManager(Settings(**settings_json))
        self.model = self.models.get(slug, family)  # load now: a replica is ready when created
        self.calls = 0

    def info(self) -> dict[str, Any]:
        """``{"pid", "node_id", "slug", "calls"}`` of this replica."""
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "slug": self.slug,
                "calls": self.calls}

    def describe(self, name: str) -> tuple[str, Any]:
        """``("method", None)`` for a public method of the model, ``("value", v)`` for a public
        attribute (e.g. ``alphabet_tokens``, ``load_format``). Raises AttributeError otherwise."""
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self.model, name)
        return ("method", None) if callable(value) else ("value", value)

    def call(self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        """``model.<method>(*args, **kwargs)``; only public methods can be called.

        Raises:
            AttributeError: no such public method.
            PlmserveError: whatever the model raises for bad input.
        """
        if method.startswith("_") or not callable(getattr(self.model, method, None)):
            raise AttributeError(f"model '{self.slug}' has no method {method!r}")
        self.calls += 1
        return getattr(self.model, method)(*args, **(kwargs or {}))


def _reraise_cause(exc: Exception) -> None:
    """Re-raise the model's own error carried by a Ray task error (bad input:
    :class:`PlmserveError`, or an unknown method: AttributeError) unchanged; else ``exc`` itself."""
    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
    if isinstance(cause, (PlmserveError, AttributeError)):
        raise cause from None
    raise exc


class ModelPool:
    """Replicas of models on Ray, chosen least-loaded per call.

    Args:
        settings: :class:`plmserve.settings.Settings` (``ray_address``, ``ray_namespace``,
            ``model_replicas`` (slug -> replica count), ``ray_actor_num_cpus``/``num_gpus``,
            and the model settings the actors load with).
        replicas: overrides ``settings.model_replicas``.
    """

    def __init__(self, settings: Any, replicas: dict[str, int] | None = None):
        self.settings = settings
        self.replicas = {k: int(v) for k, v in (replicas if replicas is not None else settings.model_replicas).items()
                         if int(v) > 0}
        self._actors: dict[str, list[Any]] = {}
        self._inflight: dict[str, list[int]] = {}
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def serves(self, slug: str) -> bool:
        """Whether calls for ``slug`` go to this pool (it has at least one replica configured)."""
        return slug in self.replicas

    def actor_name(self, slug: str, index: int) -> str:
        """The Ray name of replica ``index`` of ``slug``."""
        return f"plmserve-model-{slug}-{index}"

    def start(self, timeout: float = 600) -> None:
        """Connect to Ray and create (or re-attach to) every replica; waits until all are loaded.

        Raises:
            RayUnavailableError: Ray missing or unreachable.
            PlmserveError: a replica could not load its model (the model's own error).
        """
        from plmserve.jobs.ray_executor import _ray, connect, worker_settings

        ray = _ray()
        connect(self.settings)
        conf = worker_settings(self.settings)
        pending = []
        for slug, n in self.replicas.items():
            cls = ray.remote(worker_class(slug))
            actors = []
            for i in range(n):
                opts: dict[str, Any] = {"name": self.actor_name(slug, i), "namespace": self.settings.ray_namespace,
                                        "lifetime": "detached", "get_if_exists": True, "max_restarts": -1,
                                        "max_task_retries": -1, "num_cpus": self.settings.ray_actor_num_cpus}
                if self.settings.ray_actor_num_gpus:
                    opts["num_gpus"] = self.settings.ray_actor_num_gpus
                actor = cls.options(**opts).remote(conf, slug)
                actors.append(actor)
                pending.append(actor.info.remote())
            with self._lock:
                self._actors[slug] = actors
                self._inflight[slug] = [0] * n
        try:
            ray.get(pending, timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            cause = getattr(exc, "cause", None) or getattr(exc, "error_msg", exc)
            raise PlmserveError(f"a model replica could not start: {cause}") from None

    def stop(self, kill: bool = False) -> None:
        """Forget the replicas (``kill=True`` also ends the actors, e.g. when scaling down)."""
        from plmserve.jobs.ray_executor import _ray

        with self._lock:
            actors = [a for lst in self._actors.values() for a in lst]
            self._actors.clear()
            self._inflight.clear()
        if kill:
            ray = _ray()
            for a in actors:
                ray.kill(a, no_restart=True)

    def load(self, slug: str) -> list[int]:
        """Calls this API process has in flight on each replica of ``slug``."""
        with self._lock:
            return list(self._inflight.get(slug, []))

    def _pick(self, slug: str) -> int:
        with self._lock:
            counts = self._inflight.get(slug)
            if not counts:
                raise PlmserveError(f"model '{slug}' has no replica in the Ray model pool")
            low = min(counts)
            candidates = [i for i, c in enumerate(counts) if c == low]
            i = candidates[next(self._rr) % len(candidates)]
            counts[i] += 1
            return i

    def _release(self, slug: str, i: int) -> None:
        with self._lock:
            counts = self._inflight.get(slug)
            if counts is not None and i < len(counts):
                counts[i] = max(0, counts[i] - 1)

    async def run(self, slug: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of model ``slug`` on its least-loaded replica and await the result.

        Args:
            slug: a model with replicas (``model_replicas``).
            method: a public method of the engine (``encode``, ``predict``, ``log_prob`` ...).
            *args, **kwargs: its arguments (sent through Ray's object store).

        Raises:
            PlmserveError: no replica for ``slug``, or the model's own error (re-raised as is).
        """
        return await self.run_actor(slug, "call", method, args, kwargs)

    async def run_actor(self, slug: str, actor_method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the actor method ``actor_method`` (e.g. :meth:`plmserve.cluster.esm3_worker.Esm3Worker.generate`)
        of the least-loaded replica of ``slug`` and await it. When the awaiting task is canceled
        (the HTTP client left), the Ray task is canceled too (``ray.cancel``: an async actor's
        coroutine gets ``CancelledError`` and drops the request from its engine).

        Raises:
            PlmserveError: no replica for ``slug``, or the replica's own error (re-raised as is).
        """
        import asyncio

        from ray import exceptions as rex

        from plmserve.jobs.ray_executor import _ray

        i = self._pick(slug)
        ref = None
        try:
            ref = getattr(self._actors[slug][i], actor_method).remote(*args, **kwargs)
            return await ref
        except asyncio.CancelledError:
            if ref is not None:
                try:
                    _ray().cancel(ref)
                except Exception:  # already finished, or the replica is gone
                    logger.debug("could not cancel a %s call on %s", actor_method, slug, exc_info=True)
            raise
        except rex.RayTaskError as exc:
            _reraise_cause(exc)
        finally:
            self._release(slug, i)

    def call_sync(self, slug: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`run` for synchronous code (blocks this thread until the replica answered)."""
        from ray import exceptions as rex

        from plmserve.jobs.ray_executor import _ray

        i = self._pick(slug)
        try:
            return _ray().get(self._actors[slug][i].call.remote(method, args, kwargs))
        except rex.RayTaskError as exc:
            _reraise_cause(exc)
        finally:
            self._release(slug, i)

    def engine(self, slug: str) -> "RemoteEngine":
        """A stand-in for the engine of ``slug`` whose methods run on the replicas."""
        return RemoteEngine(self, slug)


class RemoteEngine:
    """Looks like a model engine; every method call goes to the least-loaded replica
    (:meth:`ModelPool.call_sync`), attributes (``alphabet_tokens``, ``load_format`` ...) are
    read from a replica once and cached. Lets code written for an in-process engine (the HTTP
    routes) use the pool unchanged."""

    def __init__(self, pool: ModelPool, slug: str):
        self._pool = pool
        self._slug = slug
        self._kinds: dict[str, tuple[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        kind = self._kinds.get(name)
        if kind is None:
            from plmserve.jobs.ray_executor import _ray

            actor = self._pool._actors[self._slug][0]
            try:
                kind = _ray().get(actor.describe.remote(name))
            except Exception as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, AttributeError):
                    raise AttributeError(f"model '{self._slug}' has no attribute {name!r}") from None
                raise
            self._kinds[name] = kind
        if kind[0] == "value":
            return kind[1]
        return functools.partial(self._pool.call_sync, self._slug, name)


def worker_class(slug: str) -> type:
    """The actor class of a replica of ``slug``: ESM3 models get
    :class:`plmserve.cluster.esm3_worker.Esm3Worker` (an async actor running its own batching
    :class:`~plmserve.models.esm3.engine.GenerationEngine`), every other model :class:`ModelWorker`."""
    from plmserve.models.registry import get_spec

    try:
        family = get_spec(slug).family
    except PlmserveError:
        return ModelWorker
    if family == "esm3":
        from plmserve.cluster.esm3_worker import Esm3Worker

        return Esm3Worker
    return ModelWorker


def remote_engine(app_state: Any, slug: str) -> RemoteEngine | None:
    """The hook of the synchronous HTTP routes: a :class:`RemoteEngine` for ``slug`` when the
    settings give it replicas (``PLMSERVE_MODEL_REPLICAS='{"esm2-650m": 2}'``), else None (the
    route then uses the in-process model manager as before)."""
    replicas = getattr(app_state.settings, "model_replicas", None) or {}
    if slug not in replicas:
        return None
    pool = pool_for(app_state)
    return pool.engine(slug) if pool is not None else None


def pool_for(app_state: Any) -> ModelPool | None:
    """The app's model pool when ``settings.model_replicas`` is set (created and started on
    first use), else None. For the HTTP routes' hook."""
    pool = getattr(app_state, "model_pool", None)
    if pool is not None:
        return pool
    settings = app_state.settings
    if not getattr(settings, "model_replicas", None):
        return None
    with _POOL_LOCK:
        pool = getattr(app_state, "model_pool", None)
        if pool is None:
            pool = ModelPool(settings)
            pool.start()
            app_state.model_pool = pool
    return pool


_POOL_LOCK = threading.Lock()
