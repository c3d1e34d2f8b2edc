"""The batching engine: concurrent requests of equal length share one forward pass per step and
give exactly the tokens of unbatched runs with the same seeds."""

from __future__ import annotations

import threading

import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm3.engine import GenerationEngine, stack_forward_inputs
from plmserve.models.esm3.sampler import GenerationConfig, GenerationSession, generate_tensor, run_trunk
from tests.models.esm3.test_generate_fixtures import load_fixture_model
from tests.models.esm3.test_sampler import FakeTrunk, masked_sequence


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture_model():
    return load_fixture_model()


def _requests():
    """8 requests of length 40 with mixed tracks/strategies/schedules, plus 2 of length 25."""
    reqs = []
    for i in range(8):
        cfg = GenerationConfig(
            track=["sequence", "structure", "secondary_structure", "sasa"][i % 4],
            num_steps=[4, 8, 6, 10][i % 4],
            temperature=1.0,
            strategy="entropy" if i % 2 else "random",
            schedule="linear" if i % 3 == 0 else "cosine",
        )
        reqs.append((masked_sequence(40, masked=None if i < 4 else list(range(1, 41, 3)), seed=i), cfg, 100 + i))
    for i in range(2):
        reqs.append((masked_sequence(25, seed=50 + i), GenerationConfig(track="sequence", num_steps=5), 200 + i))
    return reqs


def test_batched_rows_equal_unbatched_logits(fixture_model):
    sessions = [GenerationSession(t, c, seed=s) for t, c, s in _requests()[:8]]
    batched = run_trunk(fixture_model, stack_forward_inputs(sessions))
    for i, session in enumerate(sessions):
        alone = run_trunk(fixture_model, session.forward_inputs())
        for field in ("sequence_logits", "structure_logits", "secondary_structure_logits", "sasa_logits"):
            assert torch.equal(getattr(batched, field)[i], getattr(alone, field)[0]), (i, field)


def test_engine_outputs_identical_to_unbatched_runs(fixture_model):
    reqs = _requests()
    expected = [generate_tensor(fixture_model, t, c, seed=s) for t, c, s in reqs]
    engine = GenerationEngine(fixture_model, batch_window_ms=200, max_batch_size=16)
    try:
        futures = [engine.submit(t, c, seed=s) for t, c, s in reqs]
        results = [f.result(timeout=60) for f in futures]
    finally:
        engine.close()
    for exp, got in zip(expected, results):
        assert got.tokens.to_lists() == exp.tokens.to_lists()
        assert [s.committed_positions for s in got.steps] == [s.committed_positions for s in exp.steps]
    total_steps = sum(r.num_steps for r in expected)
    # one pass per step for the length-40 group (max 10 steps) and the length-25 group (5)
    assert engine.stats.forward_passes <= 10 + 5
    assert engine.stats.forward_passes < total_steps
    assert engine.stats.max_batch == 8
    assert engine.stats.rows == total_steps
    assert engine.stats.requests == len(reqs)


def test_engine_from_many_threads():
    model = FakeTrunk()
    reqs = [(masked_sequence(30, seed=i), GenerationConfig(track="sequence", num_steps=6, temperature=1.0), i)
            for i in range(6)]
    expected = [generate_tensor(model, t, c, seed=s).tokens.sequence.tolist() for t, c, s in reqs]
    engine = GenerationEngine(model, batch_window_ms=50)
    results: dict[int, list[int]] = {}

    def worker(i):
        t, c, s = reqs[i]
        results[i] = engine.generate(t, c, seed=s).tokens.sequence.tolist()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    engine.close()
    assert [results[i] for i in range(len(reqs))] == expected
    assert max(model.calls) > 1  # some passes were shared


def test_engine_errors_stay_with_their_request():
    model = FakeTrunk()
    engine = GenerationEngine(model, batch_window_ms=50)
    try:
        with pytest.raises(InvalidParameterError):
            engine.submit(masked_sequence(10), GenerationConfig(track="sequence", num_steps=0))
        bad = engine.submit(masked_sequence(10, masked=[]), GenerationConfig(track="sequence"))
        good = engine.submit(masked_sequence(10, seed=3), GenerationConfig(track="sequence", num_steps=3), seed=1)
        with pytest.raises(InvalidInputError, match="Cannot sample sequence when input has no masks."):
            bad.result(timeout=30)
        assert not bool((good.result(timeout=30).tokens.sequence == 32).any())
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(masked_sequence(10), GenerationConfig(track="sequence"))


def test_stack_rejects_mixed_lengths():
    a = GenerationSession(masked_sequence(10), GenerationConfig(track="sequence"))
    b = GenerationSession(masked_sequence(11), GenerationConfig(track="sequence"))
    with pytest.raises(ValueError, match="different lengths"):
        stack_forward_inputs([a, b])
