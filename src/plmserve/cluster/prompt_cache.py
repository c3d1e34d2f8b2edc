"""PoET prompt caches shared between Ray workers through Ray's object store.

A PoET job spends part of its time encoding its prompt: :meth:`plmserve.models.poet.engine.PoET.embed`
runs the prompt once through every layer and keeps the whole-context keys/values
(:class:`~plmserve.models.poet.engine.PromptCache`, per layer ``(K, V)`` of ``[H, T, hd]``), once per
prompt replicate and direction. Jobs of one workflow use the same prompt again and again (a score job,
then a single-site scan, then generation, a retried job ...), and on a cluster they land on different
worker processes and nodes. With the Ray executor each encoded prompt is therefore computed once in
the cluster and then fetched from Ray's object store by every worker that needs it:

1. The worker computes the key of the prompt (:func:`prompt_key`: the model's fingerprint, the
   direction and the normalised prompt sequences) and asks the cluster's job dispatcher
   (:class:`plmserve.jobs.ray_executor.JobDispatcher`, which holds a :class:`PromptCacheDirectory`)
   for it.
2. Found: the directory answers with an ``ObjectRef``; the worker reads the object (from its node's
   shared-memory store, or transferred by Ray from the node that holds it) and moves the tensors to
   its model's device and dtype. Nothing is recomputed.
3. Not found (or the object was lost with its node): the worker encodes the prompt itself and
   publishes it: the tensors go, as numpy arrays (zero-copy readable), to the dispatcher, which
   stores them with ``ray.put``, so the object is *owned by the dispatcher* (a detached actor) and outlives the
   worker process that computed it (a killed worker's retried job still finds it).

The objects live in the object store of the dispatcher's node and Ray copies them to a reader's
node. The directory is an LRU bounded by ``ray_prompt_cache_mb`` (setting ``PLMSERVE_RAY_PROMPT_CACHE_MB``,
0 turns the sharing off); dropping an entry drops the dispatcher's reference and Ray frees the object.
Two jobs that start on a new prompt at the same moment both compute it (the first publication is
kept). Any failure of the cache (dispatcher unreachable, object store full, object lost) falls back to
computing the prompt in the worker: the cache never fails a job, and the numbers are the same either
way (the stored tensors are the computed ones, bit for bit).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plmserve.jobs.poet import PoetResources

logger = logging.getLogger(__name__)

#: Seconds a worker waits for the dispatcher or the object store before computing the prompt itself.
CACHE_TIMEOUT_S = 60.0
_MAX_EVENTS = 10000


# ---------------------------------------------------------------------- keys and payloads
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_FP_LOCK = threading.Lock()


def engine_fingerprint(engine: Any) -> str:
    """A short identity of a loaded PoET engine's weights: its source, dtype, configuration, and
    for every parameter its name, shape and first 4096 values (enough to tell two checkpoints or
    two random initialisations apart without hashing gigabytes). Memoised per engine object.

    Returns:
        24 hex characters.
    """
    with _FP_LOCK:
        fp = _FINGERPRINTS.get(engine)
    if fp is not None:
        return fp
    import torch

    h = hashlib.sha256()
    h.update(f"{engine.source}|{engine.dtype}|{engine.config!r}".encode())
    with torch.no_grad():
        for name, p in engine.model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
            head = p.detach().reshape(-1)[:4096].to("cpu")
            if head.dtype == torch.bfloat16:
                head = head.view(torch.int16)
            h.update(head.numpy().tobytes())
    fp = h.hexdigest()[:24]
    with _FP_LOCK:
        _FINGERPRINTS[engine] = fp
    return fp


def prompt_key(fingerprint: str, sequences: Sequence[str], reverse: bool) -> str:
    """The cluster-wide key of one encoded prompt.

    Args:
        fingerprint: :func:`engine_fingerprint` of the model.
        sequences: the prompt's normalised sequences (ungapped, upper-case), in prompt order.
        reverse: the direction (True: the backward half of a score).

    Returns:
        64 hex characters (sha256).
    """
    h = hashlib.sha256(f"{fingerprint}|{'rev' if reverse else 'fwd'}|{len(sequences)}".encode())
    for s in sequences:
        h.update(b"\n" + s.encode())
    return h.hexdigest()


def cache_to_payload(cache: Any) -> dict[str, Any]:
    """A :class:`PromptCache` as plain numpy arrays on the host (what goes into the object store:
    Ray stores numpy buffers out of band and readers map them without a copy). bfloat16 tensors
    travel as their int16 bit patterns.

    Returns:
        ``{"memory": [(K, V), ...] numpy, "dtype": "float32" | ..., "num_tokens", "num_sequences",
        "reverse", "nbytes"}``.
    """
    import torch

    def arr(t):
        t = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        return t.numpy()

    mem = [(arr(k), arr(v)) for k, v in cache.memory]
    dtype = str(cache.memory[0][0].dtype).removeprefix("torch.")
    return {"memory": mem, "dtype": dtype, "num_tokens": int(cache.num_tokens),
            "num_sequences": int(cache.num_sequences), "reverse": bool(cache.reverse),
            "nbytes": int(sum(k.nbytes + v.nbytes for k, v in mem))}


def cache_from_payload(payload: dict[str, Any], device: Any, dtype: Any) -> Any:
    """The inverse of :func:`cache_to_payload`, copied into fresh tensors on ``device`` in ``dtype``
    (the object store's buffers are read-only and shared with other readers)."""
    import torch

    from plmserve.models.poet.engine import PromptCache

    stored = getattr(torch, payload["dtype"])

    def tensor(a):
        t = torch.tensor(a)
        if stored == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.to(device=device, dtype=dtype)

    mem = [(tensor(k), tensor(v)) for k, v in payload["memory"]]
    return PromptCache(mem, payload["num_tokens"], payload["num_sequences"], payload["reverse"])


# ---------------------------------------------------------------------- the directory (in the dispatcher)
@dataclass
class _Entry:
    ref: Any
    nbytes: int


@dataclass
class PromptCacheDirectory:
    """``prompt key -> ObjectRef`` of the encoded prompts published in the cluster, an LRU bounded by
    ``max_bytes``. Lives in the job dispatcher actor, which therefore owns the objects. Thread safe.

    Events (for operators and tests): ``(job_id, "hit" | "miss" | "publish" | "lost", key[:16], pid,
    node_id)``; :meth:`stats` counts them.
    """

    max_bytes: int
    put: Any = None  # how objects are stored (default ``ray.put``: owned by the calling process)
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _events: list[tuple[str, str, str, int, str]] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=lambda: {"hit": 0, "miss": 0, "publish": 0, "lost": 0,
                                                             "evicted": 0, "rejected": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _event(self, what: str, key: str, who: Sequence[Any]) -> None:
        job_id, pid, node = (list(who) + ["", 0, ""])[:3]
        self._counts[what] = self._counts.get(what, 0) + 1
        self._events.append((str(job_id), what, key[:16], int(pid or 0), str(node)))
        del self._events[:-_MAX_EVENTS]

    def lookup(self, key: str, who: Sequence[Any] = ()) -> list[Any] | None:
        """``[ObjectRef]`` of the encoded prompt, or None (the caller computes and publishes it).
        ``who`` = ``(job_id, pid, node_id)`` of the asking worker (recorded)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._event("miss", key, who)
                return None
            self._entries.move_to_end(key)
            self._event("hit", key, who)
            return [entry.ref]

    def publish(self, key: str, payload: dict[str, Any], who: Sequence[Any] = ()) -> bool:
        """Store ``payload`` (:func:`cache_to_payload`) in the object store, owned by this process,
        under ``key``. False when the key is already there (the first publication is kept), the
        payload is larger than the whole budget, or the object store refused it."""
        nbytes = int(payload.get("nbytes", 0))
        with self._lock:
            if key in self._entries:
                return False
            if nbytes > self.max_bytes:
                self._counts["rejected"] += 1
                return False
        try:
            if self.put is None:
                import ray

                self.put = ray.put
            ref = self.put(payload)
        except Exception as exc:  # ObjectStoreFullError ...
            logger.warning("prompt cache: cannot store %d bytes: %s", nbytes, exc)
            with self._lock:
                self._counts["rejected"] += 1
            return False
        with self._lock:
            if key in self._entries:
                return False
            while self._entries and self.bytes + nbytes > self.max_bytes:
                self._entries.popitem(last=False)  # dropping the ref frees the object
                self._counts["evicted"] += 1
            self._entries[key] = _Entry(ref, nbytes)
            self._event("publish", key, who)
            return True

    def forget(self, key: str, who: Sequence[Any] = ()) -> None:
        """A reader could not read the object (lost with its node): drop the entry."""
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._event("lost", key, who)

    @property
    def bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def stats(self) -> dict[str, int]:
        """Counts of hits, misses, publications, lost objects, evictions, rejections; entries and bytes held."""
        with self._lock:
            return {**self._counts, "entries": len(self._entries), "bytes": self.bytes}

    def events(self) -> list[tuple[str, str, str, int, str]]:
        with self._lock:
            return list(self._events)


# ---------------------------------------------------------------------- the worker side
def _wait(ref: Any, timeout: float) -> Any:
    """The value of ``ref`` *without* telling Ray that this task blocks.

    ``ray.get`` inside a task makes the raylet lend the task's CPU to another task while it waits,
    so a 1-CPU node would start a second job (in a new worker process) during a 2 ms lookup and
    run two jobs on one core. ``ObjectRef.future()`` resolves through a callback instead.

    Raises:
        concurrent.futures.TimeoutError, or the Ray error of the object (lost, owner died ...).
    """
    return ref.future().result(timeout=timeout)


class ObjectStorePromptCache:
    """A worker's access to the cluster's prompt caches (see the module docstring).

    :meth:`bind` gives it the dispatcher actor's handle and the job being run (called by the job
    task before each job); :meth:`wrap` turns a PoET engine into one whose ``embed`` -- used by
    ``score``, ``single_site``, ``generate``, ``logits`` and the v1 embeddings -- goes through
    the cache.
    """

    def __init__(self) -> None:
        self.dispatcher: Any = None
        self.job_id = ""
        self.node_id = ""
        self.pid = os.getpid()
        self.counts = {"hit": 0, "miss": 0, "publish": 0, "error": 0}

    def bind(self, dispatcher: Any, job_id: str, node_id: str = "") -> None:
        self.dispatcher, self.job_id, self.node_id = dispatcher, job_id, node_id

    @property
    def _who(self) -> tuple[str, int, str]:
        return (self.job_id, self.pid, self.node_id)

    def wrap(self, engine: Any) -> Any:
        """A shallow copy of ``engine`` (same network and weights) whose ``embed`` consults the
        cluster cache; the engine itself is unchanged."""
        view = copy.copy(engine)
        view.embed = functools.partial(self.embed, engine)
        return view

    def embed(self, engine: Any, prompt: Any, *, reverse: bool = False) -> Any:
        """:meth:`PoET.embed` of ``engine`` through the cluster cache (same arguments, same result).

        Raises:
            InvalidInputError: a bad prompt (as :meth:`PoET.embed`; checked before any lookup).
        """
        from plmserve.models.poet.engine import PromptCache, _prompt_sequences

        if isinstance(prompt, PromptCache) or self.dispatcher is None:
            return engine.embed(prompt, reverse=reverse)
        seqs = _prompt_sequences([prompt] if isinstance(prompt, str) else prompt)
        if not seqs:
            return engine.embed(seqs, reverse=reverse)
        key = prompt_key(engine_fingerprint(engine), seqs, reverse)
        try:
            found = _wait(self.dispatcher.prompt_cache_lookup.remote(key, self._who), CACHE_TIMEOUT_S)
        except Exception as exc:
            logger.warning("prompt cache lookup failed (%s); encoding the prompt here", exc)
            self.counts["error"] += 1
            found = None
        if found:
            try:
                payload = _wait(found[0], CACHE_TIMEOUT_S)
                cache = cache_from_payload(payload, engine.device, engine.dtype)
                self.counts["hit"] += 1
                return cache
            except Exception as exc:  # ObjectLostError, OwnerDiedError, GetTimeoutError ...
                logger.warning("prompt cache object unreadable (%s); encoding the prompt here", exc)
                self.counts["error"] += 1
                try:
                    self.dispatcher.prompt_cache_forget.remote(key, self._who)
                except Exception:
                    pass
        cache = engine.embed(seqs, reverse=reverse)
        self.counts["miss"] += 1
        try:
            ok = _wait(self.dispatcher.prompt_cache_publish.remote(key, cache_to_payload(cache), self._who),
                       CACHE_TIMEOUT_S)
            self.counts["publish"] += int(bool(ok))
        except Exception as exc:
            logger.warning("prompt cache publication failed (%s)", exc)
            self.counts["error"] += 1
        return cache


@dataclass
class ObjectStorePoetResources(PoetResources):
    """:class:`PoetResources` of a Ray worker: the PoET engine it hands to the job handlers encodes
    prompts through :class:`ObjectStorePromptCache`."""

    prompt_cache: ObjectStorePromptCache = field(default_factory=ObjectStorePromptCache)
    _view: tuple[Any, Any] | None = field(default=None, init=False, repr=False)  # (engine, its wrapped view)

    def engine(self):
        """The wrapped view of the loaded PoET engine: the same object for every job while that
        engine stays loaded, so the engine keeps one batching scheduler (a new view per job would
        replace the scheduler, failing the queued work of a job still running)."""
        base = super().engine()
        if self._view is None or self._view[0] is not base:
            self._view = (base, self.prompt_cache.wrap(base))
        return self._view[1]


__all__ = ["ObjectStorePoetResources", "ObjectStorePromptCache", "PromptCacheDirectory", "cache_from_payload",
           "cache_to_payload", "engine_fingerprint", "prompt_key"]
