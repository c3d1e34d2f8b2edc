"""Reproduce every number of ``tests/data/fixtures/poet/expected.json`` (official PoET, tiny random
model) from both checkpoint files, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.models.poet import PoET, alphabet as A

from ._helpers import fixture_file, fixture_json, fixture_model, loglik_close

CKPTS = ["model.ckpt", "model_namespace.ckpt"]


@pytest.fixture(scope="module")
def inputs():
    return fixture_json("inputs.json")


@pytest.fixture(scope="module")
def expected():
    return fixture_json("expected.json")


def test_token_ids(inputs, expected):
    for seq, ids in zip(inputs["variants"], expected["token_ids"]):
        assert A.encode_sequence(seq).tolist() == ids
    # reversed = the whole array reversed: starts with stop, ends with start
    rev = A.encode_sequence(inputs["variants"][-1], reverse=True)
    assert rev[0] == A.STOP and rev[-1] == A.START
    assert rev.tolist() == expected["token_ids"][-1][::-1]


@pytest.mark.parametrize("ckpt", CKPTS)
def test_forward_backward_noprompt_logliks(ckpt, inputs, expected):
    model = fixture_model(ckpt)
    prompt, variants = inputs["prompt"], inputs["variants"]
    fwd = model.score(prompt, variants, reverse=False)
    bwd = model.score(model.embed(prompt, reverse=True), variants)
    none = model.score([], variants, reverse=False)
    assert loglik_close(fwd, expected["forward_loglik"])
    assert loglik_close(bwd, expected["backward_loglik"])
    assert loglik_close(none, expected["noprompt_loglik"])
    both = model.score(prompt, variants)  # default: mean of forward and backward
    np.testing.assert_allclose(both, (fwd + bwd) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ckpt", CKPTS)
def test_logits_variant0(ckpt, inputs, expected):
    model = fixture_model(ckpt)
    cache = model.embed(inputs["prompt"])
    tokens = torch.as_tensor(expected["token_ids"][0])[None, :-1]
    pos = torch.arange(tokens.shape[1])[None]
    logits, _ = model.model.decode(tokens, pos, memory=cache.memory)
    ref = torch.tensor(expected["logits_variant0"])
    assert logits.shape == (1, 287, 24)
    torch.testing.assert_close(logits[0], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("ckpt", CKPTS)
def test_float64_matches_f64_fields(ckpt, inputs, expected):
    model = PoET.from_checkpoint(fixture_file(ckpt), device="cpu", dtype="float64")
    assert model.dtype == torch.float64
    prompt, variants = inputs["prompt"], inputs["variants"]
    fwd = model.score(prompt, variants, reverse=False)
    bwd = model.score(model.embed(prompt, reverse=True), variants)
    none = model.score([], variants, reverse=False)
    # rotary angles are computed in float32 as the official code does -> tight agreement
    np.testing.assert_allclose(fwd, expected["forward_loglik_f64"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(bwd, expected["backward_loglik_f64"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(none, expected["noprompt_loglik_f64"], rtol=0, atol=1e-6)


def test_cached_decode_equals_packed_forward(inputs):
    """logits(x, embed(prompt)) equals the last rows of forward(prompt ++ x) (spec §4.4)."""
    model = fixture_model()
    prompt = inputs["prompt"][:3]
    x = A.encode_sequence(inputs["variants"][-2])[:-1]
    arrays = [A.encode_sequence(s) for s in prompt]
    packed = torch.as_tensor(np.concatenate(arrays + [x]))
    full = model.model(packed, [len(a) for a in arrays] + [len(x)])
    cache = model.embed(prompt)
    xt = torch.as_tensor(x)[None]
    cached, _ = model.model.decode(xt, torch.arange(len(x))[None], memory=cache.memory)
    torch.testing.assert_close(cached[0], full[-len(x):], atol=2e-5, rtol=0)


def test_prompt_order_matters_only_through_causality(inputs):
    """Positions restart per sequence: the first layer's memory keys of a sequence do not depend
    on where it sits in the prompt."""
    model = fixture_model()
    a, b = inputs["prompt"][0], inputs["prompt"][1]
    k_ab = model.embed([a, b]).memory[0][0]
    k_ba = model.embed([b, a]).memory[0][0]
    la = len(a) + 2
    torch.testing.assert_close(k_ab[:, :la], k_ba[:, -la:], atol=1e-5, rtol=0)
