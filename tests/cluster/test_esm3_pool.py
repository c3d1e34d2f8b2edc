"""Forge / ESM3 routes served by Ray model replicas (issue 11 item 2): with
``model_replicas={"esm3-open-2024-03": 1}`` every ESM3 forward of the Forge API runs on the
replica actor (:class:`plmserve.cluster.esm3_worker.Esm3Worker`, its own step-batching engine),
and answers exactly as in-process for a fixed seed. Uses the tiny official-layout ESM3 fixture
on the local two-node Ray cluster."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.errors import InvalidInputError
from plmserve.models.esm3.sampler import GenerationConfig
from plmserve.settings import Settings
from tests.conftest import shared_path
from tests.models.esm3.test_sampler import masked_sequence

pytestmark = pytest.mark.ray
SLUG = "esm3-open-2024-03"
KEY = "esm3-pool-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("models")
    (d / SLUG).mkdir()
    src = shared_path("fixtures", "esm3")
    shutil.copy(src / "model.pth", d / SLUG / "model.pth")
    shutil.copy(src / "config.json", d / SLUG / "config.json")
    return Settings(model_dir=d, data_dir=d / "data", device="cpu", dtype="float32", api_keys=[KEY],
                    ray_address=ray_cluster.address, ray_actor_num_cpus=0.5, esm3_batch_window_ms=300,
                    model_replicas={SLUG: 1})


def _requests() -> list[tuple[str, dict]]:
    tokens = [0, 20, 15, 32, 32, 5, 32, 9, 11, 32, 2]
    return [
        ("/api/v1/generate_tensor", {"model": SLUG, "track": "sequence", "inputs": {"sequence": tokens},
                                     "num_steps": 4, "temperature": 1.0, "seed": 7}),
        ("/api/v1/generate_tensor", {"model": "esm3-open", "track": "structure", "inputs": {"sequence": tokens},
                                     "num_steps": 3, "seed": 8}),
        ("/api/v1/generate", {"model": SLUG, "inputs": {"sequence": "MKT__AY_Q"}, "temperature": 1.0, "seed": 9}),
        ("/api/v1/logits", {"model": SLUG, "inputs": {"sequence": tokens},
                            "logits_config": {"sequence": True, "sasa": True, "return_mean_embedding": True}}),
        ("/api/v1/forward_and_sample", {"model": SLUG, "inputs": {"sequence": tokens}, "seed": 3,
                                        "sampling_config": {"sequence": {"temperature": 0.7, "topk_logprobs": 2}},
                                        "embedding_config": {"sequence": True}}),
        ("/api/v1/generate_tensor", {"model": SLUG, "track": "sequence", "inputs": {"sequence": [0, 20, 2]},
                                     "num_steps": 2}),  # no mask: the model's 4xx
    ]


def test_forge_routes_on_the_pool_answer_like_in_process(settings, ray_driver):
    answers = []
    for replicas in ({SLUG: 1}, {}):
        app = create_app(settings.model_copy(update={"model_replicas": replicas}))
        with TestClient(app) as client:
            got = [client.post(path, json=body, headers=AUTH) for path, body in _requests()]
            assert [r.status_code for r in got] == [200] * 5 + [400], [r.text[:200] for r in got]
            answers.append([r.json() for r in got])
            if replicas:
                pool = app.state.model_pool
                assert client.app.state.models.loaded() == []  # the replica did the work
                stats = ray_driver.get(pool._actors[SLUG][0].engine_stats.remote())
                assert stats["requests"] >= 5 and stats["sessions"] == 0
                assert pool.load(SLUG) == [0]
    pooled, local = answers
    assert pooled == local


def test_requests_on_one_replica_share_decoding_steps(settings, ray_driver):
    """Concurrent generations sent to the replica are step-batched by its engine and give the
    tokens of the in-process engine; a bad prompt keeps its 4xx type through Ray."""
    from plmserve.cluster.model_pool import ModelPool
    from plmserve.models.esm3.engine import GenerationEngine
    from plmserve.models.registry import ModelManager

    pool = ModelPool(settings)
    pool.start()
    cfg = GenerationConfig(track="sequence", num_steps=5, temperature=1.0)
    prompts = [masked_sequence(24, seed=i) for i in range(4)]
    try:
        before = ray_driver.get(pool._actors[SLUG][0].engine_stats.remote())

        async def many():
            return await asyncio.gather(*[pool.run_actor(SLUG, "generate", p, cfg, 100 + i, f"user{i % 2}",
                                                         "generate_tensor") for i, p in enumerate(prompts)])

        results = asyncio.run(many())
        after = ray_driver.get(pool._actors[SLUG][0].engine_stats.remote())
        # a canceled call (the HTTP client left) is dropped by the replica's engine
        async def canceled():
            task = asyncio.ensure_future(pool.run_actor(
                SLUG, "generate", masked_sequence(120, seed=5), GenerationConfig(track="sequence", num_steps=100),
                1, "gone", "generate_tensor"))
            await asyncio.sleep(0.1)  # inside the replica's 300 ms batch window
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(canceled())
        actor = pool._actors[SLUG][0]
        for _ in range(100):
            gone = ray_driver.get(actor.engine_stats.remote())
            if gone["sessions"] == 0:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert gone["canceled"] == after["canceled"] + 1 and gone["sessions"] == 0
        assert gone["rows"] - after["rows"] < 100  # its 100 steps were not all computed
        with pytest.raises(InvalidInputError, match="no masks"):
            asyncio.run(pool.run_actor(SLUG, "generate", masked_sequence(10, masked=[]), cfg, 1, "u", "generate"))
    finally:
        pool.stop(kill=True)
    local = GenerationEngine(ModelManager(settings).get(SLUG, "esm3"), batch_window_ms=300)
    try:
        expected = [local.submit(p, cfg, seed=100 + i).result(timeout=60) for i, p in enumerate(prompts)]
    finally:
        local.close()
    assert [r.tokens.to_lists() for r in results] == [e.tokens.to_lists() for e in expected]
    steps = after["forward_passes"] - before["forward_passes"]
    assert after["rows"] - before["rows"] == 4 * 5
    assert steps < 4 * 5 and after["max_batch"] >= 2  # decoding steps were shared
