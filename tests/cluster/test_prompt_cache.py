"""The pieces of the object-store prompt cache that need no cluster (plmserve.cluster.prompt_cache):
keys, the payload round trip, the LRU directory. The cluster behaviour (a second job on another node
reads the first job's encoded prompt) is in ``test_prompt_cache_on_ray.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.cluster.prompt_cache import (
    ObjectStorePromptCache,
    PromptCacheDirectory,
    cache_from_payload,
    cache_to_payload,
    engine_fingerprint,
    prompt_key,
)
from plmserve.errors import InvalidInputError
from plmserve.models.poet import PoET

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYLAKQRQISFVKSHFSRE", "MSTAYIAKQRQISFVKAHF"]


@pytest.fixture(scope="module")
def engine():
    return PoET.dummy(d_model=64, n_layers=2, seed=3)


def test_keys_tell_prompts_directions_and_models_apart(engine):
    fp = engine_fingerprint(engine)
    assert fp == engine_fingerprint(engine)  # memoised, stable
    other = engine_fingerprint(PoET.dummy(d_model=64, n_layers=2, seed=4))  # same shapes, other weights
    assert other != fp
    k = prompt_key(fp, PROMPT, False)
    assert k == prompt_key(fp, list(PROMPT), False)
    assert len({k, prompt_key(fp, PROMPT, True), prompt_key(fp, PROMPT[::-1], False),
                prompt_key(fp, PROMPT[:2], False), prompt_key(other, PROMPT, False)}) == 5


@pytest.mark.parametrize("reverse", [False, True])
def test_payload_round_trip_is_exact(engine, reverse):
    cache = engine.embed(PROMPT, reverse=reverse)
    payload = cache_to_payload(cache)
    assert all(isinstance(a, np.ndarray) for kv in payload["memory"] for a in kv)
    assert payload["nbytes"] == cache.nbytes
    back = cache_from_payload(payload, engine.device, engine.dtype)
    assert (back.num_tokens, back.num_sequences, back.reverse) == (cache.num_tokens, cache.num_sequences, reverse)
    for (k0, v0), (k1, v1) in zip(cache.memory, back.memory):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYIAKQRQISFVKSHFSRA"]
    np.testing.assert_array_equal(engine.score(back, seqs), engine.score(cache, seqs))


def test_bfloat16_travels_as_its_bit_pattern(engine):
    cache = engine.embed(PROMPT).to(dtype=torch.bfloat16)
    back = cache_from_payload(cache_to_payload(cache), "cpu", torch.bfloat16)
    assert back.memory[0][0].dtype == torch.bfloat16
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(cache.memory, back.memory))


def test_directory_is_an_lru_bounded_by_bytes():
    # any "store" works for the bookkeeping: here a ref is ("ref", the payload's id)
    d = PromptCacheDirectory(max_bytes=250, put=lambda payload: ("ref", payload["id"]))
    assert d.lookup("a", ("job1", 11, "n1")) is None
    assert d.publish("a", {"nbytes": 100, "id": "a"}, ("job1", 11, "n1"))
    assert not d.publish("a", {"nbytes": 100, "id": "a2"})  # the first publication is kept
    assert d.publish("b", {"nbytes": 100, "id": "b"})
    assert d.lookup("a", ("job2", 12, "n2")) == [("ref", "a")]  # "a" is now the most recent
    assert d.publish("c", {"nbytes": 100, "id": "c"})  # evicts "b", the least recently used
    assert d.lookup("b") is None and d.lookup("a") == [("ref", "a")] and d.lookup("c") == [("ref", "c")]
    assert not d.publish("huge", {"nbytes": 251, "id": "h"})
    d.forget("c", ("job3", 13, "n1"))
    assert d.lookup("c") is None
    st = d.stats()
    assert (st["entries"], st["bytes"], st["evicted"], st["rejected"]) == (1, 100, 1, 1)
    assert (st["hit"], st["miss"], st["publish"], st["lost"]) == (3, 3, 3, 1)
    assert d.events()[1] == ("job1", "publish", "a", 11, "n1")
    assert ("job2", "hit", "a", 12, "n2") in d.events()


def test_unbound_cache_and_bad_prompts_behave_as_the_engine(engine):
    pc = ObjectStorePromptCache()  # not bound to a dispatcher: plain engine.embed
    view = pc.wrap(engine)
    assert view.model is engine.model and "embed" not in vars(engine)
    np.testing.assert_array_equal(view.score([PROMPT], ["MKTAYIAKQRQ"]), engine.score([PROMPT], ["MKTAYIAKQRQ"]))
    pc.bind(object(), "job")  # bound (to anything): a bad prompt is refused before any lookup
    with pytest.raises(InvalidInputError, match="prompt sequence 1"):
        view.embed(["MKT", "MK1T"])


class _Done:
    """An already-resolved Ray reference: ``future().result()`` returns the value or raises it."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def future(self):
        import concurrent.futures

        f = concurrent.futures.Future()
        f.set_exception(self.error) if self.error else f.set_result(self.value)
        return f


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        try:
            return _Done(self.fn(*args))
        except Exception as exc:
            return _Done(error=exc)


class _FakeDispatcher:
    """The dispatcher's prompt-cache methods over a :class:`PromptCacheDirectory` whose "object
    store" is a dict; ``lose`` makes every stored object unreadable (its node died)."""

    def __init__(self, lose=False, down=False):
        def put(payload):
            return _Done(error=RuntimeError("ObjectLostError")) if lose else _Done(payload)

        self.directory = PromptCacheDirectory(max_bytes=2**30, put=put)
        self.forgotten = []

        def lookup(key, who):
            if down:
                raise RuntimeError("the dispatcher is gone")
            return self.directory.lookup(key, who)

        self.prompt_cache_lookup = _Method(lookup)
        self.prompt_cache_publish = _Method(lambda key, payload, who: self.directory.publish(key, payload, who))
        self.prompt_cache_forget = _Method(lambda key, who: (self.forgotten.append(key), self.directory.forget(key)))


def test_a_second_worker_reads_the_published_encoding_and_scores_the_same(engine):
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYIAKQRQISFVKSHFSRA"]
    d = _FakeDispatcher()
    first, second = ObjectStorePromptCache(), ObjectStorePromptCache()
    first.bind(d, "job-a", "node-1")
    second.bind(d, "job-b", "node-2")
    got_a = first.wrap(engine).score([PROMPT], seqs)
    calls = []
    real = engine.embed
    engine.embed = lambda *a, **k: calls.append(a) or real(*a, **k)  # count encodings done by the model
    try:
        got_b = second.wrap(engine).score([PROMPT], seqs)
    finally:
        del engine.embed
    assert calls == [] and second.counts["hit"] == 2 and second.counts["miss"] == 0
    assert first.counts == {"hit": 0, "miss": 2, "publish": 2, "error": 0}
    np.testing.assert_array_equal(got_b, got_a)
    np.testing.assert_array_equal(got_a, engine.score([PROMPT], seqs))


@pytest.mark.parametrize("failure", ["lost", "down"])
def test_a_lost_object_or_an_unreachable_dispatcher_falls_back_to_encoding(engine, failure):
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ"]
    d = _FakeDispatcher(lose=failure == "lost", down=failure == "down")
    a, b = ObjectStorePromptCache(), ObjectStorePromptCache()
    a.bind(d, "job-a")
    b.bind(d, "job-b")
    a.wrap(engine).score([PROMPT], seqs)
    got = b.wrap(engine).score([PROMPT], seqs)  # reads fail: b encodes the prompt itself
    np.testing.assert_array_equal(got, engine.score([PROMPT], seqs))
    assert b.counts["miss"] == 2 and b.counts["error"] >= 2
    if failure == "lost":
        assert len(d.forgotten) == 2  # the unreadable entries were dropped ...
        assert b.counts["publish"] == 2  # ... and b's encodings published in their place


def test_worker_resources_keep_one_view_and_one_scheduler_per_engine(tmp_path):
    """Every job of a Ray worker gets the same wrapped engine while the model stays loaded, so the
    PoET batching scheduler is not replaced (and its queued work not failed) job after job."""
    from plmserve.cluster.prompt_cache import ObjectStorePoetResources
    from plmserve.models.registry import ModelManager
    from plmserve.settings import Settings
    from tests.conftest import shared_path

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    settings = Settings(data_dir=tmp_path, model_dir=model_dir, device="cpu", dtype="float32")
    res = ObjectStorePoetResources(settings, ModelManager(settings))
    try:
        first, second = res.engine(), res.engine()
        assert first is second
        assert first is not res.models.get("poet", family="poet")  # a view whose embed uses the cluster cache
        assert res.scheduler(first) is res.scheduler(second)
    finally:
        res.close()
