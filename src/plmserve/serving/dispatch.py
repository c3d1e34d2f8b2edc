"""Where a synchronous ESM-2 / ESM C route's forward passes run: the Ray model pool or the batching scheduler.

Routes (BioLM v2 and v3, Forge ESM C, variant scoring) call :func:`get_engine` for the model and
:func:`compute` for the numbers:

* a model with Ray replicas (``PLMSERVE_MODEL_REPLICAS``) gets a
  :class:`~plmserve.cluster.model_pool.RemoteEngine` and its calls run on the pool (each replica
  batches the request itself);
* any other model runs through its in-process batching scheduler
  (:func:`plmserve.serving.scheduler.run_batched`), shared by every client, so the event loop never
  waits for a model, concurrent requests share forward passes, and a disconnected client's queued
  work is dropped.
"""

from __future__ import annotations

from typing import Any, Sequence

from starlette.concurrency import run_in_threadpool

from plmserve.serving import methods_esmc, methods_marginals  # noqa: F401  (registers the methods)
from plmserve.serving.scheduler import run_batched


def is_remote(engine: Any) -> bool:
    """Whether ``engine`` is a Ray model-pool proxy (its calls run on the pool's replicas)."""
    from plmserve.cluster.model_pool import RemoteEngine

    return isinstance(engine, RemoteEngine)


async def get_engine(request: Any, slug: str, family: str) -> Any:
    """The model ``slug`` of ``family``: a ``RemoteEngine`` when it has Ray replicas, else the
    in-process engine (loaded on first use, in a worker thread).

    Raises:
        ModelNotFoundError: unknown slug for ``family`` (404), before anything is loaded.
    """
    from plmserve.cluster.model_pool import remote_engine
    from plmserve.models.registry import get_spec

    spec = get_spec(slug, family=family)
    remote = await run_in_threadpool(remote_engine, request.app.state, spec.slug)
    if remote is not None:
        return remote
    return await run_in_threadpool(request.app.state.models.get, slug, family)


async def compute(request: Any, slug: str, engine: Any, operation: str, items: Sequence[Any], /, *,
                  family: str = "esm2", principal: Any = None, **params: Any) -> list[Any]:
    """``engine.<operation>(items, **params)``, one result per item in order: on the Ray pool for a
    ``RemoteEngine``, otherwise through the model's batching scheduler (``operation`` must be a
    method registered for ``family``: ``encode``, ``predict``, ``log_prob``; ESM C also
    ``forward_tokens``).

    Raises:
        ServiceUnavailableError: the model's queue is full (503, ``Retry-After``).
        ClientDisconnected: the client left first (its queued units were dropped).
    """
    if is_remote(engine):
        return await run_in_threadpool(getattr(engine, operation), list(items), **params)
    return await run_batched(request, slug, operation, list(items), family=family, principal=principal, **params)


async def score_mutants(request: Any, slug: str, engine: Any, wild_type: str, mutants: Sequence[str],
                        method: str, /, *, family: str = "esm2", principal: Any = None) -> list[float]:
    """Variant scores (``engine.score_mutants`` semantics), float per mutant: on the Ray pool for a
    ``RemoteEngine``, otherwise the masked / wild-type passes go through the batching scheduler
    (:func:`plmserve.serving.methods_marginals.score_mutants_batched`)."""
    import numpy as np

    if is_remote(engine):
        out = await run_in_threadpool(engine.score_mutants, wild_type, list(mutants), method=method)
    else:
        out = await methods_marginals.score_mutants_batched(request, slug, engine, wild_type, mutants, method,
                                                            family=family, principal=principal)  # fmt: skip
    return np.asarray(out, dtype=float).tolist()
