"""ESM-2 full logits (33 tokens, BOS/EOS rows) and attention maps through public methods
(issue 12 item 8), against the fair-esm fixture."""

from __future__ import annotations

import numpy as np
import pytest

from plmserve.errors import InvalidInputError
from plmserve.models.esm2.alphabet import ALL_TOKENS

from .conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_full_logits_match_fair_esm(tiny_engine, expected, inputs):
    seqs = inputs["sequences"]
    out = tiny_engine.full_logits(seqs)
    assert tiny_engine.vocab_tokens == list(ALL_TOKENS) and len(ALL_TOKENS) == 33
    for i, (seq, logits) in enumerate(zip(seqs, out)):
        assert logits.dtype == np.float32 and logits.shape == (len(seq) + 2, 33)
        assert_close(logits, expected[f"single/{i}/logits"], atol=1e-4, rtol=1e-5, what=f"logits {i}")
    (masked,) = tiny_engine.full_logits(inputs["masked"])
    assert_close(masked, expected["masked/0/logits"], atol=1e-4, rtol=1e-5, what="masked logits")
    # the 20-column encode logits are the residue rows of the full logits
    enc = tiny_engine.encode(seqs[2:], include=["logits"], repr_layers=[])[0]["logits"]
    np.testing.assert_allclose(enc, out[2][1:-1, 4:24], atol=1e-6)


def test_attention_weights_match_fair_esm(tiny_engine, expected, inputs):
    seqs = inputs["sequences"]
    maps = tiny_engine.attention_weights(seqs)
    for i, (seq, att) in enumerate(zip(seqs, maps)):
        T = len(seq) + 2
        assert att.dtype == np.float32
        assert att.shape == (tiny_engine.num_layers, tiny_engine.attention_heads, T, T)
        np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
        rows = expected[f"single/{i}/attentions_query_index"]
        assert_close(att[:, :, rows, :], expected[f"single/{i}/attentions"], atol=1e-5, what=f"attentions {i}")


def test_bad_input_is_named(tiny_engine):
    with pytest.raises(InvalidInputError, match="item 1"):
        tiny_engine.full_logits(["MKT", "MK1"])
    with pytest.raises(InvalidInputError, match="item 0"):
        tiny_engine.attention_weights(["J"])
