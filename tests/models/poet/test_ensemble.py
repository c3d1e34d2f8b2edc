"""Done-when test of the PoET issue: the first 24 BLAT Jacquier variants scored end to end on CPU
with the fixture model and prompts sampled from the real BLAT MSA (official ``score.py`` recipe,
reduced grid), compared with ``tests/data/fixtures/poet/ensemble.json``."""

from __future__ import annotations

import pytest

from plmserve.bio.fasta import read_fasta
from plmserve.bio.msa import read_msa
from plmserve.models.poet.ensemble import score_py_ensemble
from tests.conftest import shared_path

from ._helpers import fixture_json, fixture_model, loglik_close


@pytest.mark.slow
def test_score_py_ensemble_blat_24_variants():
    ref = fixture_json("ensemble.json")
    msa = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    records = read_fasta(shared_path("data", "BLAT_ECOLX_Jacquier_2013_variants.fasta"))[:24]
    assert [r.name for r in records] == ref["variant_names"]
    ticks = []
    result = score_py_ensemble(
        fixture_model(), msa, [r.sequence for r in records],
        grid=[tuple(g) for g in ref["grid"]], seed=ref["seed"], progress=lambda d, t: ticks.append((d, t)),
    )
    assert ticks[-1] == (2 * 24 * 4, 2 * 24 * 4)
    for got, want in zip(result.per_config, ref["per_config"]):
        assert (got.max_tokens, got.max_similarity) == (want["max_tokens"], want["max_similarity"])
        assert got.prompt_rows == want["prompt_a3m_rows"]
        assert got.prompt_num_tokens == want["prompt_num_tokens"]
        assert loglik_close(got.forward, want["forward"])
        assert loglik_close(got.backward, want["backward"])
        assert loglik_close(got.average, want["average"])
    assert loglik_close(result.scores, ref["final_scores"])
