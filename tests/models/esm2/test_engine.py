"""ESM2Engine behaviour: input validation, layer resolution, batching, log-likelihoods and
masked-marginal variant scores against direct computations with the plain HF forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm2.alphabet import MASK_ID, STANDARD_AA, TOKEN_ID

SEQ = "MKTAYIAKQRQISFVKSHFSRQ"


def _full_logits(engine, residues: str, masked_positions=()) -> torch.Tensor:
    """log_softmax over the 33 tokens from one plain ``EsmForMaskedLM`` forward, ``[L, 33]``."""
    ids = [0] + [TOKEN_ID[c] for c in residues] + [2]
    for p in masked_positions:
        ids[p + 1] = MASK_ID
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, 1:-1]
    return torch.log_softmax(logits.double(), -1)


# ---------------------------------------------------------------------------- validation


def test_validate_normalises_case_and_whitespace(tiny_engine):
    assert tiny_engine.validate([" mkt ay\n", "ACD<mask>e"], allow_mask=True) == ["MKTAY", "ACD<MASK>E"]


@pytest.mark.parametrize(
    "seqs, fragments",
    [
        (["MKT", "MKTJA"], ["item 1", "position 4", "'J'"]),
        (["MKT", "AC1"], ["item 1", "position 3", "'1'"]),
        (["", "MKT"], ["item 0", "empty"]),
        (["M" * 1025], ["item 0", "1025", "1024"]),
        (["MK<mask>T"], ["item 0", "<mask>", "position 3"]),
    ],
)
def test_validate_errors_name_item_position_character(tiny_engine, seqs, fragments):
    with pytest.raises(InvalidInputError) as info:
        tiny_engine.validate(seqs)
    for frag in fragments:
        assert frag in str(info.value)


def test_mask_counts_as_one_position_towards_the_limit(tiny_engine):
    assert tiny_engine.validate(["M" * 1023 + "<mask>"], allow_mask=True)
    with pytest.raises(InvalidInputError, match="1025"):
        tiny_engine.validate(["M" * 1024 + "<mask>"], allow_mask=True)


def test_invalid_input_error_carries_fields(tiny_engine):
    with pytest.raises(InvalidInputError) as info:
        tiny_engine.validate(["AAAA", "AAA*"])
    assert (info.value.item, info.value.position, info.value.character) == (1, 4, "*")


def test_predict_without_mask_is_an_error(tiny_engine):
    with pytest.raises(InvalidInputError, match="item 1.*<mask>"):
        tiny_engine.predict(["MK<mask>T", "MKT"])


# ---------------------------------------------------------------------------- layers / include


def test_resolve_layers(tiny_engine):
    assert tiny_engine.resolve_layers([-1]) == [2]
    assert tiny_engine.resolve_layers([-3, 0, 1, 2, -1]) == [0, 1, 2]
    for bad in (3, -4):
        with pytest.raises(InvalidParameterError, match=r"\[-3, 2\]"):
            tiny_engine.resolve_layers([bad])


def test_unknown_include_is_an_error(tiny_engine):
    with pytest.raises(InvalidParameterError, match="unknown value 'embeddings'"):
        tiny_engine.encode([SEQ], include=["embeddings"])


def test_encode_shapes_and_only_requested_keys(tiny_engine):
    (out,) = tiny_engine.encode([SEQ], include=["mean", "per_token", "bos"], repr_layers=[-1, 0])
    assert set(out) == {"mean_representations", "representations", "bos_representations"}
    assert list(out["mean_representations"]) == [2, 0]
    assert out["mean_representations"][2].shape == (64,)
    assert out["representations"][0].shape == (len(SEQ), 64)
    assert out["bos_representations"][2].shape == (64,)
    np.testing.assert_allclose(out["representations"][2].mean(0), out["mean_representations"][2], atol=1e-6)
    (full,) = tiny_engine.encode([SEQ], include=["logits", "contacts", "attentions"])
    assert set(full) == {"logits", "contacts", "attentions"}
    assert full["logits"].shape == (len(SEQ), 20)
    assert full["contacts"].shape == (len(SEQ), len(SEQ))
    np.testing.assert_allclose(full["contacts"], full["contacts"].T, atol=1e-6)
    assert full["attentions"].shape == (2, len(SEQ))


def test_early_exit_at_a_shallow_layer_gives_the_same_representation(tiny_engine):
    (shallow,) = tiny_engine.encode([SEQ], include=["per_token"], repr_layers=[1])
    (full,) = tiny_engine.encode([SEQ], include=["per_token", "logits"], repr_layers=[1, 2])
    np.testing.assert_array_equal(shallow["representations"][1], full["representations"][1])


def test_many_batches_return_results_in_input_order(fixture_dir):
    from plmserve.models.esm2 import ESM2Engine

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(STANDARD_AA), size=n)) for n in rng.integers(5, 300, size=25)]
    small = ESM2Engine.from_fair_esm(fixture_dir / "esm2_tiny.pt", toks_per_batch=1)  # clamped to one sequence
    small.toks_per_batch = 700  # several sequences per batch, several batches
    batched = small.encode(seqs, include=["mean", "logits", "contacts"])
    for i in (0, 7, 24):
        (alone,) = small.encode([seqs[i]], include=["mean", "logits", "contacts"])
        np.testing.assert_allclose(batched[i]["mean_representations"][2], alone["mean_representations"][2], atol=2e-5)
        np.testing.assert_allclose(batched[i]["logits"], alone["logits"], atol=5e-5)
        np.testing.assert_allclose(batched[i]["contacts"], alone["contacts"], atol=1e-5)
        assert batched[i]["logits"].shape == (len(seqs[i]), 20)


def test_predict_logits_equal_direct_forward(tiny_engine):
    (out,) = tiny_engine.predict(["MKTA<mask>IAK<mask>RQ"])
    assert out["sequence_tokens"] == list("MKTA") + ["<mask>"] + list("IAK") + ["<mask>"] + list("RQ")
    ids = [0] + [TOKEN_ID[t] for t in out["sequence_tokens"]] + [2]
    with torch.inference_mode():
        direct = tiny_engine.model(input_ids=torch.tensor([ids])).logits[0, 1:-1, 4:24]
    np.testing.assert_allclose(out["logits"], direct.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------- log-likelihoods


def test_pseudo_log_likelihood_equals_direct_masking(tiny_engine):
    seqs = [SEQ, "MKTXAYIAK"]
    pll = tiny_engine.log_prob(seqs)
    for seq, ours in zip(seqs, pll):
        direct = 0.0
        for i, aa in enumerate(seq):
            if aa in STANDARD_AA:  # non-standard residues (X) are skipped
                direct += float(_full_logits(tiny_engine, seq, [i])[i, TOKEN_ID[aa]])
        assert ours == pytest.approx(direct, abs=1e-3)
    assert pll[0] < 0


def test_log_prob_rejects_unknown_method(tiny_engine):
    with pytest.raises(InvalidParameterError, match="unknown method"):
        tiny_engine.log_prob([SEQ], method="exact")


# ---------------------------------------------------------------------------- variant scoring


def test_masked_marginals_equal_direct_computation(tiny_engine):
    mutants = ["A4G", "K2R", "A4G:S13P", "Q22L"]
    scores = tiny_engine.score_mutants(SEQ, mutants)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    lp = _full_logits(tiny_engine, SEQ, [3])
    assert scores[0] == pytest.approx(float(lp[3, TOKEN_ID["G"]] - lp[3, TOKEN_ID["A"]]), abs=1e-5)
    lp = _full_logits(tiny_engine, SEQ, [1])
    assert scores[1] == pytest.approx(float(lp[1, TOKEN_ID["R"]] - lp[1, TOKEN_ID["K"]]), abs=1e-5)
    lp = _full_logits(tiny_engine, SEQ, [3, 12])  # both mutated positions masked together
    joint = lp[3, TOKEN_ID["G"]] - lp[3, TOKEN_ID["A"]] + lp[12, TOKEN_ID["P"]] - lp[12, TOKEN_ID["S"]]
    assert scores[2] == pytest.approx(float(joint), abs=1e-5)
    lp = _full_logits(tiny_engine, SEQ, [21])
    assert scores[3] == pytest.approx(float(lp[21, TOKEN_ID["L"]] - lp[21, TOKEN_ID["Q"]]), abs=1e-5)


def test_wt_marginals_equal_direct_computation(tiny_engine):
    scores = tiny_engine.score_mutants(SEQ, ["A4G", "A4G:S13P"], method="wt_marginals")
    lp = _full_logits(tiny_engine, SEQ)
    a = float(lp[3, TOKEN_ID["G"]] - lp[3, TOKEN_ID["A"]])
    b = float(lp[12, TOKEN_ID["P"]] - lp[12, TOKEN_ID["S"]])
    assert scores[0] == pytest.approx(a, abs=1e-5)
    assert scores[1] == pytest.approx(a + b, abs=1e-5)


def test_synonymous_mutation_scores_zero(tiny_engine):
    assert tiny_engine.score_mutants(SEQ, ["A4A"])[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "code, fragment",
    [("G4A", "has 'A' at position 4"), ("A99G", "beyond"), ("A4", "malformed"), ("A4*", "malformed"), ("A4J", "'J'")],
)
def test_bad_mutation_codes(tiny_engine, code, fragment):
    with pytest.raises(InvalidInputError, match="row 1") as info:
        tiny_engine.score_mutants(SEQ, ["K2R", code])
    assert fragment in str(info.value)


def test_fused_sdpa_unless_attention_weights_are_needed(tiny_engine, monkeypatch):
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    tiny_engine.encode([SEQ, SEQ[:10]], include=["mean", "logits", "bos"])
    assert len(calls) == tiny_engine.num_layers  # one batch, every layer fused
    calls.clear()
    tiny_engine.encode([SEQ], include=["mean", "contacts"])
    tiny_engine.encode([SEQ], include=["attentions"])
    assert calls == []  # explicit softmax: the weights are needed
