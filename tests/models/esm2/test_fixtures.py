"""The engine reproduces fair-esm 2.0.0 on the shared tiny model (tests/data/fixtures/esm2/README.md
tolerances, CPU float32), loading the fair-esm checkpoint through the user-facing conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.models.esm2.alphabet import encode_residues
from plmserve.models.esm2.engine import attention_maps

from .conftest import assert_close


def _raw(engine, seqs):
    """Every output of one batched forward over ``seqs`` (logits, all layers, contacts, maps)."""
    with torch.inference_mode(), attention_maps() as maps:
        res = engine._forward(
            [encode_residues(s) for s in seqs], layers=[0, 1, 2], logits=True, contacts=True, attentions=True
        )
    return res, maps


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_tokens_logits_representations_contacts_attentions(tiny_engine, expected, inputs, mode):
    seqs = inputs["sequences"]
    runs = [(_raw(tiny_engine, [s]), 0) for s in seqs] if mode == "single" else [(_raw(tiny_engine, seqs), i) for i in range(3)]
    for i, ((res, maps), b) in enumerate(runs):
        key = f"{mode}/{i}"
        L = len(seqs[i])
        T = L + 2
        toks = [0] + list(encode_residues(seqs[i])) + [2]
        assert toks == expected[f"{key}/tokens"].tolist()
        assert_close(res["logits"][b, :T], expected[f"{key}/logits"], atol=1e-4, rtol=1e-5, what=f"{key} logits")
        for layer in range(3):
            assert_close(
                res["hidden"][layer][b, :T], expected[f"{key}/representations/{layer}"], atol=1e-4, rtol=1e-5,
                what=f"{key} representation {layer}",
            )
        assert_close(torch.sigmoid(res["contacts"][b, :L, :L]), expected[f"{key}/contacts"], atol=1e-5,
                     what=f"{key} contacts")
        rows = expected[f"{key}/attentions_query_index"]
        ours = torch.stack([m[b, :, :T, :T] for m in maps])[:, :, rows, :]  # (layers, heads, R, T)
        assert_close(ours, expected[f"{key}/attentions"], atol=1e-5, what=f"{key} attentions")


def test_batched_padding_positions_leave_valid_region_unchanged(tiny_engine, inputs):
    seqs = inputs["sequences"]
    single = tiny_engine.encode(seqs[1:2], include=["per_token", "logits", "contacts", "attentions"], repr_layers=[0, 1, 2])
    batch = tiny_engine.encode(seqs, include=["per_token", "logits", "contacts", "attentions"], repr_layers=[0, 1, 2])
    for key in ("logits", "contacts", "attentions"):
        np.testing.assert_allclose(batch[1][key], single[0][key], atol=1e-5)
    for layer in range(3):
        np.testing.assert_allclose(batch[1]["representations"][layer], single[0]["representations"][layer], atol=1e-5)


def test_masked_sequence_logits(tiny_engine, expected, inputs):
    (seq,) = inputs["masked"]
    (r,) = [encode_residues(seq.upper())]
    assert [0, *r.tolist(), 2] == expected["masked/0/tokens"].tolist()
    with torch.inference_mode():
        res = tiny_engine._forward([r], logits=True)
    assert_close(res["logits"][0], expected["masked/0/logits"], atol=1e-4, rtol=1e-5, what="masked logits")


def test_biolm_encode_outputs(tiny_engine, biolm_expected, inputs):
    out = tiny_engine.encode(inputs["sequences"], include=["mean", "bos", "logits", "contacts", "attentions"])
    assert biolm_expected["num_layers"] == tiny_engine.num_layers == 2
    for i, (ours, ref) in enumerate(zip(out, biolm_expected["encode"])):
        assert ref["sequence_index"] == i
        assert ref["vocab_tokens"] == tiny_engine.alphabet_tokens
        assert set(ours) == {"mean_representations", "bos_representations", "logits", "contacts", "attentions"}
        (mean_ref,) = ref["mean_representations"]
        (bos_ref,) = ref["bos_representations"]
        assert list(ours["mean_representations"]) == [mean_ref["layer"]] == [2]
        assert_close(ours["mean_representations"][2], mean_ref["embedding"], atol=1e-4, rtol=1e-5, what="mean")
        assert_close(ours["bos_representations"][2], bos_ref["embedding"], atol=1e-4, rtol=1e-5, what="bos")
        assert_close(ours["logits"], ref["logits"], atol=1e-4, rtol=1e-5, what="logits")
        assert_close(ours["contacts"], ref["contacts"], atol=1e-5, what="contacts")
        assert_close(ours["attentions"], ref["attentions"], atol=1e-6, rtol=1e-4, what="attentions")
        assert ours["logits"].dtype == np.float32


def test_biolm_log_prob_and_predict(tiny_engine, biolm_expected, inputs):
    lps = tiny_engine.log_prob(inputs["sequences"], method="biolm")
    for ours, ref in zip(lps, biolm_expected["encode"]):
        assert abs(ours - ref["log_prob"]) <= 2e-3
    (pred,) = tiny_engine.predict(inputs["masked"])
    ref = biolm_expected["predict"][0]
    assert pred["sequence_tokens"] == ref["sequence_tokens"]
    assert_close(pred["logits"], ref["logits"], atol=1e-4, rtol=1e-5, what="predict logits")
