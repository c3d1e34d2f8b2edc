"""Prompt sampling: exact reproduction of the official PoET sampler fixture, methods, validation."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest

from plmserve.align import sample_prompt
from plmserve.align.sampling import (
    build_prompt,
    filter_rows,
    homology_weights,
    n_eff,
    neighbor_counts,
    sample_order,
    theta_for,
)
from plmserve.bio.msa import parse_msa, read_msa
from plmserve.errors import InvalidParameterError, MissingParameterError
from tests.conftest import shared_path


@lru_cache(maxsize=1)
def blat():
    return read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))


@lru_cache(maxsize=1)
def fixture():
    return json.loads(shared_path("fixtures", "poet", "sampler.json").read_text())


@lru_cache(maxsize=4)
def blat_weights(theta: float):
    return homology_weights(blat().aligned_matrix(), theta)


@pytest.mark.parametrize("key", ["0.2", "0.4"])
def test_neighbor_counts_match_official(key):
    ref = fixture()["homology_weights"][key]
    matrix = blat().aligned_matrix()
    assert matrix.shape == (fixture()["msa"]["num_rows"], fixture()["msa"]["num_columns"])
    counts = neighbor_counts(matrix, ref["theta"])
    np.testing.assert_array_equal(counts, np.array(ref["neighbor_counts"]))
    neff, p = blat_weights(ref["theta"])
    assert neff == pytest.approx(ref["n_eff"], rel=1e-12)
    assert p.sum() == pytest.approx(1.0)
    assert theta_for(ref["homology_level"]) == ref["theta"]


@pytest.mark.parametrize("k", range(4))
def test_sampled_indices_and_prompts_match_official(k):
    cfg = fixture()["configs"][k]
    msa = blat()
    matrix = msa.aligned_matrix()
    kept = filter_rows(matrix, cfg["max_similarity"], cfg["min_similarity"])
    assert len(kept) == cfg["num_rows_kept"]
    neff, p = blat_weights(cfg["theta"])
    assert (p[kept] * neff).sum() == pytest.approx(cfg["n_eff_kept_rows"], rel=1e-12)
    order = sample_order(
        matrix,
        theta=cfg["theta"],
        max_similarity=cfg["max_similarity"],
        min_similarity=cfg["min_similarity"],
        force_include_first=cfg["force_include_first"],
        seed=cfg["seed"],
        weights=p,
    )
    assert len(order) == cfg["num_sampled_indices"]
    assert order[:200].tolist() == cfg["first_200_sampled_indices"]
    lengths = [len(s) for s in msa.sequences]
    for max_tokens, ref in cfg["prompts"].items():
        rows = build_prompt(lengths, order, max_tokens=int(max_tokens), shuffle_seed=cfg["seed"])
        assert rows == ref["a3m_rows"]
        assert [lengths[i] + 2 for i in rows] == ref["sequence_token_lengths"]
        assert sum(lengths[i] + 2 for i in rows) == ref["num_tokens"]


def test_sample_prompt_api_reproduces_fixture_config0():
    cfg = fixture()["configs"][0]
    ref = cfg["prompts"]["3000"]
    result = sample_prompt(blat(), num_residues=3000, random_seed=cfg["seed"], num_ensemble_prompts=2)
    assert result.indices[0] == ref["a3m_rows"]
    assert result.num_tokens(0) == ref["num_tokens"]
    msa = blat()
    assert result.replicates[0] == [(msa.names[i], msa.sequences[i]) for i in ref["a3m_rows"]]
    # replicate k uses seed + k
    second = sample_prompt(blat(), num_residues=3000, random_seed=cfg["seed"] + 1)
    assert result.indices[1] == second.indices[0]
    assert result.indices[1] != result.indices[0]
    assert result.random_seed == cfg["seed"]
    assert result.params["method"] == "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
    assert result.params["num_residues"] == 3000 and result.params["num_sequences"] is None


def test_n_eff_helper():
    assert n_eff(blat(), 0.8) == pytest.approx(fixture()["homology_weights"]["0.2"]["n_eff"], rel=1e-12)


def test_chunked_counts_equal_bruteforce(monkeypatch):
    import plmserve.align.sampling as sampling

    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 21, size=(57, 23)).astype(np.uint8)
    matrix[5, :] = 20
    matrix[5, 3] = 7
    monkeypatch.setattr(sampling, "_TILE", 8)  # force several tiles, the last one partial
    for gap_normalised in (True, False):
        counts = neighbor_counts(matrix, 0.6, gap_normalised=gap_normalised)
        expected = []
        for i in range(len(matrix)):
            if gap_normalised:
                match = ((matrix == matrix[i]) & (matrix != 20)).sum(1)
                sim = match / (matrix[i] != 20).sum()
            else:
                sim = (matrix == matrix[i]).sum(1) / matrix.shape[1]
            expected.append(int(((1 - sim) <= 0.6).sum()))
        np.testing.assert_array_equal(counts, expected)


SMALL = ">q\nACDEFGHIKL\n>a\nACDEFGHIKV\n>b\nACDEFGHIVV\n>c\nWWWWWGHIKL\n>d\n-CDEFGH---\n>e\nYYYYYYYYYY\n"


def test_top_and_random_and_neighbors_methods():
    msa = parse_msa(SMALL)
    top = sample_prompt(msa, method="TOP", num_sequences=3, random_seed=5)
    assert sorted(top.indices[0]) == [0, 1, 2]  # first three rows, shuffled
    rnd = sample_prompt(msa, method="RANDOM", num_sequences=6, random_seed=5)
    assert sorted(rnd.indices[0]) == list(range(6))
    perm = np.random.default_rng(5).permutation(6)
    assert rnd.indices[0] == [int(perm[k]) for k in np.random.default_rng(5).permutation(6)]
    for method in ("NEIGHBORS", "NEIGHBORS_NO_LIMIT", "NEIGHBORS_NONGAP_NORM_NO_LIMIT"):
        res = sample_prompt(msa, method=method, num_sequences=6, random_seed=3)
        assert sorted(res.indices[0]) == list(range(6))


def test_gap_naive_method_differs_on_gapped_rows():
    matrix = parse_msa(SMALL).aligned_matrix()
    # row d (4) matches q on all its 6 residues: neighbour under the gap-aware identity only
    aware = neighbor_counts(matrix, 0.2, gap_normalised=True)
    naive = neighbor_counts(matrix, 0.2, gap_normalised=False)
    assert aware[4] == 4 and naive[4] == 1


def test_similarity_filter_and_force_include_first():
    msa = parse_msa(SMALL)
    res = sample_prompt(msa, method="TOP", num_sequences=10, max_similarity=0.95, random_seed=1)
    assert 0 not in res.indices[0]
    res = sample_prompt(
        msa, method="TOP", num_sequences=1, max_similarity=0.95, always_include_seed_sequence=True, random_seed=1
    )
    assert res.indices[0] == [0]
    res = sample_prompt(msa, method="TOP", num_sequences=10, min_similarity=0.55, random_seed=1)
    assert sorted(res.indices[0]) == [0, 1, 2, 4]  # c (0.5) and e (0.0) are too dissimilar


def test_token_budget_overshoots_by_at_most_one_sequence():
    res = sample_prompt(blat(), num_residues=1000, random_seed=11, num_ensemble_prompts=3)
    for k in range(3):
        tokens = res.num_tokens(k)
        last = len(res.replicates[k][-1][1]) + 2
        assert tokens >= 1000 and tokens - last < 1000
        assert all("-" not in s and s.isupper() for _, s in res.replicates[k])


def test_random_seed_drawn_and_recorded():
    msa = parse_msa(SMALL)
    res = sample_prompt(msa, num_sequences=3)
    assert 1 <= res.random_seed <= 2**32 - 1
    again = sample_prompt(msa, num_sequences=3, random_seed=res.random_seed)
    assert again.indices == res.indices


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({"homology_level": 1.5}, InvalidParameterError, "The 'homology_level' must be between 0 and 1."),
        ({"max_similarity": -0.1}, InvalidParameterError, "The 'max_similarity' must be between 0 and 1."),
        ({"min_similarity": 2}, InvalidParameterError, "The 'min_similarity' must be between 0 and 1."),
        (
            {"num_sequences": 5, "num_residues": 100},
            MissingParameterError,
            "Either 'num_sequences' or 'num_residues' must be set, but not both.",
        ),
        ({"num_sequences": 100}, InvalidParameterError, "The 'num_sequences' must be between 0 and 100."),
        ({"num_sequences": 0}, InvalidParameterError, "The 'num_sequences' must be between 1 and 99."),
        ({"num_residues": 24577}, InvalidParameterError, "The 'num_residues' must be between 0 and 24577."),
        ({"num_residues": 0}, InvalidParameterError, "The 'num_residues' must be between 1 and 24576."),
        ({"min_similarity": 0.9, "max_similarity": 0.5}, InvalidParameterError, "must not be greater"),
        ({"num_ensemble_prompts": 16}, InvalidParameterError, "The 'num_ensemble_prompts' must be between 1 and 15."),
        ({"num_ensemble_prompts": 0}, InvalidParameterError, "'num_ensemble_prompts'"),
        ({"random_seed": -1}, InvalidParameterError, "The 'random_seed' must be between 0 and 4294967295."),
        ({"random_seed": 2**32}, InvalidParameterError, "'random_seed'"),
        ({"method": "BEST"}, InvalidParameterError, "The 'method' must be one of"),
    ],
)
def test_validation_messages(kwargs, exc, message):
    with pytest.raises(exc) as err:
        sample_prompt(parse_msa(SMALL), **kwargs)
    assert message in str(err.value)


def test_default_budget_is_12288_residues():
    res = sample_prompt(blat(), random_seed=188257)
    assert res.params["num_residues"] == 12288
    assert res.num_tokens() >= 12288


def test_filter_that_removes_everything_is_an_error():
    with pytest.raises(InvalidParameterError, match="No MSA sequence passes the similarity filter"):
        sample_prompt(parse_msa(">q\nACD\n>h\nACD\n"), max_similarity=0.5, num_sequences=3, random_seed=1)


def test_always_include_seed_sequence_in_every_replicate():
    cfg = fixture()["configs"][3]
    res = sample_prompt(
        blat(),
        num_residues=1024,
        max_similarity=0.95,
        always_include_seed_sequence=True,
        random_seed=cfg["seed"],
        num_ensemble_prompts=15,
    )
    assert res.indices[0] == cfg["prompts"]["1024"]["a3m_rows"]  # the official result, seed included
    assert all(0 in rows for rows in res.indices)
    assert all(res.replicates[k][rows.index(0)] == ("101", blat().query) for k, rows in enumerate(res.indices))


def test_forced_seed_dropped_by_official_builder_is_appended():
    # seed 12 / 1024 tokens: the official shuffled budget pass drops the forced seed row
    matrix = blat().aligned_matrix()
    lengths = [len(s) for s in blat().sequences]
    order = sample_order(matrix, max_similarity=0.95, force_include_first=True, seed=12, weights=blat_weights(0.2)[1])
    official = build_prompt(lengths, order, max_tokens=1024, shuffle_seed=12)
    assert 0 not in official
    res = sample_prompt(blat(), num_residues=1024, max_similarity=0.95, always_include_seed_sequence=True,
                        random_seed=12)
    assert res.indices[0] == official + [0]


def test_weights_are_memoised_per_msa_and_invalidated_on_change(monkeypatch):
    import plmserve.align.sampling as sampling

    msa = parse_msa(SMALL)
    calls = []
    real = sampling.homology_weights

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "homology_weights", counting)
    first = sample_prompt(msa, num_sequences=4, random_seed=3)
    again = sample_prompt(msa, num_sequences=4, random_seed=3, num_ensemble_prompts=2)
    assert len(calls) == 1 and again.indices[0] == first.indices[0]
    msa.aligned[1] = "YYYYYYYYYY"
    sample_prompt(msa, num_sequences=4, random_seed=3)
    assert len(calls) == 2
