"""The Ray actor of an ESM3 model replica: the model and its own batching engine.

:class:`Esm3Worker` is a :class:`~plmserve.cluster.model_pool.ModelWorker` (same loading, ``info``,
``describe``, ``call``) that is an *async* Ray actor: many calls run on it at once (Ray's default
concurrency of async actors), each one a request queued in the replica's
:class:`~plmserve.models.esm3.engine.GenerationEngine`, so requests that reach the same replica
are step-batched exactly as in-process, bounded by ``esm3_max_sessions`` (503 with
``Retry-After``) and admitted round-robin between principals. ``ray.cancel`` of a call (the HTTP
client left) cancels its coroutine, which cancels the request in the engine: its remaining steps
are not computed.

The API side is :func:`plmserve.api.forge.run_esm3` via
:meth:`plmserve.cluster.model_pool.ModelPool.run_actor`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from concurrent.futures import Future
from typing import Any, Callable

from plmserve.cluster.model_pool import ModelWorker


def _call_with_model(fn: Callable[..., Any], args: tuple, model: Any) -> Any:
    return fn(model, *args)


class Esm3Worker(ModelWorker):
    """A replica of one ESM3 model with its :class:`~plmserve.models.esm3.engine.GenerationEngine`.

    Args:
        settings_json: settings as JSON (``esm3_batch_window_ms``, ``esm3_max_batch_size``,
            ``esm3_max_sessions`` configure the engine; the model settings load the model).
        slug: the model's registry name (``esm3-open-2024-03``).
        family: ``esm3`` (looked up when None).
    """

    def __init__(self, settings_json: dict[str, Any], slug: str, family: str | None = None):
        super().__init__(settings_json, slug, family or "esm3")
        from plmserve.models.esm3.engine import GenerationEngine

        settings = self.models.settings
        self.engine = GenerationEngine(
            self.model,
            batch_window_ms=settings.esm3_batch_window_ms,
            max_batch_size=settings.esm3_max_batch_size,
            max_sessions=settings.esm3_max_sessions,
            name=slug,
        )

    async def generate(self, tokens: Any, config: Any, seed: int | None, principal: str, method: str) -> Any:
        """One generation (:meth:`GenerationEngine.submit`) -> its
        :class:`~plmserve.models.esm3.sampler.GenerationResult`.

        Raises:
            ServiceUnavailableError: the replica's engine is full; PlmserveError: bad request.
        """
        self.calls += 1
        future = self.engine.submit(tokens, config, seed=seed, principal=principal, method=method)
        return await self._wait(future)

    async def forward_call(self, fn: Callable[..., Any], args: tuple, principal: str, method: str) -> Any:
        """``fn(model, *args)`` on the engine's worker thread between two decoding steps
        (:meth:`GenerationEngine.submit_call`; ``fn`` a module-level function, e.g. the
        ``logits`` route's forward pass)."""
        self.calls += 1
        future = self.engine.submit_call(functools.partial(_call_with_model, fn, args), principal=principal,
                                         method=method)
        return await self._wait(future)

    async def _wait(self, future: Future) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.engine.cancel(future)
            raise

    def engine_stats(self) -> dict[str, Any]:
        """The engine's counters (:class:`~plmserve.models.esm3.engine.EngineStats`) and the
        requests queued or running now (``sessions``)."""
        return {**dataclasses.asdict(self.engine.stats), "sessions": self.engine.sessions}
