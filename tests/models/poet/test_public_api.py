"""Public PoET/align APIs users asked for (issue 12 item 8): per-token logits and log-probabilities,
a backward-only score, the sampler's building blocks from ``plmserve.align`` with a literal theta,
and ``score_py_ensemble`` with the sampler's settings. Checked against the official fixtures."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

import plmserve.align as align
from plmserve.bio.msa import read_msa
from plmserve.errors import InvalidParameterError
from plmserve.models.poet import alphabet as A
from plmserve.models.poet.ensemble import SamplerSettings, sample_score_py_prompt, score_py_ensemble
from tests.conftest import shared_path

from ._helpers import fixture_json, fixture_model, loglik_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=1)
def blat():
    return read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))


def _prompt():
    return fixture_json("inputs.json")["prompt"]


def test_logits_match_the_official_logits():
    model, inputs, ref = fixture_model(), fixture_json("inputs.json"), fixture_json("expected.json")
    logits = model.logits(_prompt(), inputs["variants"][0])
    assert logits.dtype == np.float32 and logits.shape == (len(inputs["variants"][0]) + 1, A.VOCAB_SIZE)
    np.testing.assert_allclose(logits, np.array(ref["logits_variant0"]), atol=1e-4)


def test_token_log_probs_sum_to_the_official_log_likelihoods():
    model, inputs, ref = fixture_model(), fixture_json("inputs.json"), fixture_json("expected.json")
    cache_fwd, cache_bwd = model.embed(_prompt()), model.embed(_prompt(), reverse=True)
    for i in (0, 5, 11):  # WT, a DMS variant, the sequence with X/B/Z/U/O
        seq = inputs["variants"][i]
        fwd = model.token_log_probs(_prompt(), seq)
        bwd = model.token_log_probs(_prompt(), seq, reverse=True)
        assert fwd.dtype == np.float64 and fwd.shape == (len(seq) + 1,) and np.all(fwd <= 0)
        assert loglik_close(fwd.sum(), ref["forward_loglik"][i])
        assert loglik_close(bwd.sum(), ref["backward_loglik"][i])
        # a prompt cache carries its own direction
        np.testing.assert_allclose(model.token_log_probs(cache_bwd, seq), bwd, atol=1e-6)
        np.testing.assert_allclose(model.token_log_probs(cache_fwd, seq, reverse=True), fwd, atol=1e-6)
    x_positions = [t for t, ch in enumerate(inputs["variants"][11]) if ch in "XBZ"]
    assert all(model.token_log_probs(_prompt(), inputs["variants"][11])[x_positions] == 0)


def test_backward_only_and_forward_only_scores():
    model, inputs, ref = fixture_model(), fixture_json("inputs.json"), fixture_json("expected.json")
    seqs = inputs["variants"][:4]
    assert loglik_close(model.score(_prompt(), seqs, direction="backward"), ref["backward_loglik"][:4])
    assert loglik_close(model.score(_prompt(), seqs, direction="forward"), ref["forward_loglik"][:4])
    both = (np.array(ref["forward_loglik"][:4]) + np.array(ref["backward_loglik"][:4])) / 2
    assert loglik_close(model.score(_prompt(), seqs, direction="both"), both)
    with pytest.raises(InvalidParameterError, match="unknown direction 'sideways'"):
        model.score(_prompt(), seqs, direction="sideways")
    with pytest.raises(InvalidParameterError, match="one prompt"):
        model.logits([_prompt(), _prompt()], seqs[0])


def test_sampler_building_blocks_from_plmserve_align_with_literal_theta():
    fixture = fixture_json("sampler.json")
    msa = blat()
    matrix = msa.aligned_matrix()
    lengths = [len(s) for s in msa.sequences]
    for cfg in fixture["configs"]:
        kept = align.filter_rows(matrix, cfg["max_similarity"], max_dissimilarity=cfg["max_dissimilarity"])
        assert len(kept) == cfg["num_rows_kept"]
        order = align.sample_order(matrix, theta=cfg["theta"], max_similarity=cfg["max_similarity"],
                                   max_dissimilarity=cfg["max_dissimilarity"],
                                   force_include_first=cfg["force_include_first"], seed=cfg["seed"])
        assert order[:200].tolist() == cfg["first_200_sampled_indices"]
        rows = align.build_prompt(lengths, order, max_tokens=1024, shuffle_seed=cfg["seed"])
        assert rows == cfg["prompts"]["1024"]["a3m_rows"]


def test_sample_score_py_prompt_takes_the_sampler_settings():
    fixture = fixture_json("sampler.json")
    for cfg in fixture["configs"]:
        settings = SamplerSettings(theta=cfg["theta"], max_dissimilarity=cfg["max_dissimilarity"],
                                   force_include_first=cfg["force_include_first"])
        rows, seqs = sample_score_py_prompt(blat(), 3000, cfg["max_similarity"], cfg["seed"], settings)
        assert rows == cfg["prompts"]["3000"]["a3m_rows"]
        assert seqs == [blat().sequences[i] for i in rows]


def test_score_py_ensemble_uses_the_sampler_settings():
    cfg = fixture_json("sampler.json")["configs"][2]  # theta 0.4, max_dissimilarity 0.8, seed 42
    model, inputs = fixture_model(), fixture_json("inputs.json")
    settings = SamplerSettings(theta=cfg["theta"], max_dissimilarity=cfg["max_dissimilarity"])
    result = score_py_ensemble(model, blat(), inputs["variants"][:2], grid=[(1024, cfg["max_similarity"])],
                               seed=cfg["seed"], sampler=settings)
    (point,) = result.per_config
    assert point.prompt_rows == cfg["prompts"]["1024"]["a3m_rows"]
    prompt = [blat().sequences[i] for i in point.prompt_rows]
    np.testing.assert_allclose(point.backward, model.score(prompt, inputs["variants"][:2], direction="backward"))
    np.testing.assert_allclose(result.scores, model.score(prompt, inputs["variants"][:2]), rtol=1e-12)
