"""score / single_site / generate semantics on the fixture model (fast, small prompts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.poet import PromptCache, alphabet as A, ensemble_mean, top_k_top_p_filter

from ._helpers import fixture_json, fixture_model

WT = "MKTAYIAKQRQISFVKSHFSRQ"


@pytest.fixture(scope="module")
def model():
    return fixture_model()


@pytest.fixture(scope="module")
def prompts():
    p = fixture_json("inputs.json")["prompt"]
    return p[:2], p[2:4]


def _mutants(wt: str, codes: list[str]) -> list[str]:
    out = []
    for code in codes:
        i = int(code[1:-1]) - 1
        assert wt[i] == code[0]
        out.append(wt[:i] + code[-1] + wt[i + 1 :])
    return out


def test_single_site_rows_and_values_equal_full_scoring(model, prompts):
    wt = WT[:12]
    rows = model.single_site(prompts[0], wt)
    codes = [c for c, _ in rows]
    assert codes[0] == "WT" and len(rows) == 1 + 19 * len(wt)
    expected_first = [f"M1{a}" for a in A.AMINO_ACIDS if a != "M"]
    assert codes[1:20] == expected_first
    assert codes[-1] == f"I{len(wt)}V"
    full = model.score(prompts[0], [wt] + _mutants(wt, codes[1:]))  # forward+backward, decoded in full
    got = np.array([s for _, s in rows])
    assert np.abs(got - full).max() < 1e-3


def test_single_site_forward_only_and_replicates(model, prompts):
    fwd = model.single_site(prompts[0], WT[:8], reverse=False)
    full = model.score(prompts[0], [WT[:8]] + _mutants(WT[:8], [c for c, _ in fwd[1:]]), reverse=False)
    assert np.abs(np.array([s for _, s in fwd]) - full).max() < 1e-3
    ens = model.single_site(list(prompts), WT[:8], reverse=False)
    assert [c for c, _ in ens] == [c for c, _ in fwd]
    mat = np.stack([s for _, s in ens])
    assert mat.shape == (1 + 19 * 8, 2)
    np.testing.assert_allclose(mat[:, 0], [s for _, s in fwd], atol=1e-4, rtol=0)


def test_score_replicates_shape_and_mean(model, prompts):
    seqs = [WT, WT[:10], "MKTXBZUOAYIAK"]
    ens = model.score(list(prompts), seqs)
    assert ens.shape == (2, 3)
    np.testing.assert_allclose(ens[1], model.score(prompts[1], seqs), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ensemble_mean(ens), ens.mean(axis=0))
    # batching by length does not change a score
    alone = model.score(prompts[0], [seqs[1]])
    np.testing.assert_allclose(alone, model.score(prompts[0], seqs)[1:2], atol=1e-4, rtol=0)


def test_prompt_cache_is_reused_and_movable(model, prompts):
    cache = model.embed(prompts[0])
    assert isinstance(cache, PromptCache) and cache.num_sequences == 2
    k0 = cache.memory[0][0]
    H, hd = model.config.nhead, model.config.head_dim
    assert k0.shape == (H, cache.num_tokens, hd)
    assert cache.nbytes == 2 * model.config.num_layers * H * cache.num_tokens * hd * 4
    via_cache = model.score(cache, [WT, WT[:5]])
    np.testing.assert_allclose(via_cache, model.score(prompts[0], [WT, WT[:5]], reverse=False), atol=1e-5, rtol=0)
    moved = cache.to(dtype=torch.float64)
    assert moved.memory[0][0].dtype == torch.float64 and cache.memory[0][0].dtype == torch.float32
    assert cache.memory[0][0].data_ptr() == k0.data_ptr()  # scoring never replaced or copied it


def test_prompt_rows_are_cleaned_and_checked(model):
    clean = model.score(["MKTAYIAK"], [WT], reverse=False)
    np.testing.assert_allclose(model.score([("p1", "mk-ta-YIAK")], [WT], reverse=False), clean, atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match=r"prompt sequence 1: invalid character '1' at position 3"):
        model.embed(["MKT", "MK1"])
    with pytest.raises(InvalidInputError, match=r"sequence 1: invalid character '-' at position 2"):
        model.score(["MKT"], ["MKT", "M-KT"])
    with pytest.raises(InvalidInputError, match="no sequences"):
        model.score(["MKT"], [])
    # a bare string is one sequence (not a list of one-letter sequences)
    np.testing.assert_allclose(model.score("MKTAYIAK", WT, reverse=False), clean, atol=1e-6, rtol=0)


def test_generate_is_deterministic_and_scores_are_logliks(model, prompts):
    out = model.generate(prompts[0], 4, seed=7, max_length=25)
    assert out == model.generate(prompts[0], 4, seed=7, max_length=25)
    assert out != model.generate(prompts[0], 4, seed=8, max_length=25)
    for seq, ll in out:
        assert 1 <= len(seq) <= 25 and set(seq) <= set(A.AMINO_ACIDS)
        assert ll < 0
    finished = [(s, ll) for s, ll in out if len(s) < 25]  # ended with the stop token
    if finished:
        got = model.score(prompts[0], [s for s, _ in finished], reverse=False)
        np.testing.assert_allclose(got, [ll for _, ll in finished], atol=1e-3, rtol=0)


def test_generate_greedy_follows_argmax(model, prompts):
    (seq, _), = model.generate(prompts[0], 1, top_k=1, seed=1, max_length=6)
    cache = model.embed(prompts[0])
    tokens = [A.START]
    for _ in range(len(seq)):
        x = torch.as_tensor(tokens)[None]
        logits, _ = model.model.decode(x, torch.arange(len(tokens))[None], memory=cache.memory)
        lp = logits[0, -1].clone()
        lp[[A.GAP, A.START, A.MASK]] = float("-inf")
        tokens.append(int(lp.argmax()))
    assert A.decode(tokens[1:]).replace("$", "") .startswith(seq)


def test_generate_ensemble_returns_per_prompt_logliks(model, prompts):
    out = model.generate(list(prompts), 3, seed=3, max_length=30, top_p=0.9)
    assert len(out) == 3
    for seq, lls in out:
        assert lls.shape == (2,)
        if len(seq) < 30:
            np.testing.assert_allclose(model.score(list(prompts), [seq], reverse=False)[:, 0], lls, atol=1e-3, rtol=0)


def test_sampling_parameter_errors(model, prompts):
    for kwargs, match in [({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"),
                          ({"top_p": 1.5}, "top_p"), ({"max_length": 0}, "max_length")]:
        with pytest.raises(InvalidParameterError, match=match):
            model.generate(prompts[0], 1, **kwargs)


def test_top_k_top_p_filter():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(top_k_top_p_filter(scores, top_k=2)).tolist() == [[False, False, True, True]]
    # 0.5 < 0.7 -> keep; 0.8 crosses 0.7 -> kept (first crossing); the rest removed
    assert torch.isinf(top_k_top_p_filter(scores, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_k_top_p_filter(scores, top_p=0.4)).tolist() == [[False, True, True, True]]


def test_single_site_positions_subset(model, prompts):
    rows = model.single_site(prompts[0], WT[:10], positions=[3, 7], reverse=False)
    assert [c for c, _ in rows][:2] == ["WT", "T3A"] and len(rows) == 1 + 2 * 19
    full = dict(model.single_site(prompts[0], WT[:10], reverse=False))
    assert all(abs(full[c] - s) < 1e-4 for c, s in rows)
    with pytest.raises(InvalidInputError, match="position 11 is outside"):
        model.single_site(prompts[0], WT[:10], positions=[11])


def test_unfused_attention_path_matches(model, prompts, monkeypatch):
    """The chunked matmul attention (used on CUDA and wherever torch's fused CPU kernel is
    missing) gives the same numbers as the fused path."""
    from plmserve.models.poet import model as poet_model

    wt = WT[:9]
    fused_scores = model.score(list(prompts), [WT, wt])
    fused_ss = model.single_site(prompts[0], wt, reverse=False)
    fused_gen = model.generate(prompts[0], 2, seed=5, max_length=12, top_k=3)
    monkeypatch.setattr(poet_model, "_FUSED_CPU", None)
    monkeypatch.setattr(poet_model, "_SCORE_BUDGET_BYTES", 4096)  # force several row chunks
    np.testing.assert_allclose(model.score(list(prompts), [WT, wt]), fused_scores, atol=1e-3, rtol=0)
    plain_ss = model.single_site(prompts[0], wt, reverse=False)
    np.testing.assert_allclose([s for _, s in plain_ss], [s for _, s in fused_ss], atol=1e-3, rtol=0)
    plain_gen = model.generate(prompts[0], 2, seed=5, max_length=12, top_k=3)
    assert [s for s, _ in plain_gen] == [s for s, _ in fused_gen]
