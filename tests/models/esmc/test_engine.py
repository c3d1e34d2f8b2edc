"""ESM C engine against the official ``esm`` 3.2.1 fixture (tests/data/fixtures/esmc/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError, ModelLoadError
from plmserve.models.esmc.alphabet import CANONICAL_IDS, detokenize, tokenize
from tests.models.esmc._fixture import HIDDEN_ATOL, close, engine, expected, fixture_path, inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUTS = ["official", "hf"]


def test_tokenizer_matches_official_encoding():
    data = inputs()
    for s, ids in zip(data["sequences"], data["token_ids"]):
        assert tokenize(s) == ids
    for s, ids in data["tokenizer_examples"].items():
        assert tokenize(s) == ids, s
    assert detokenize(tokenize("MK_A")) == "MK_A"
    assert detokenize([0, 20, 15, 31, 5, 2, 1, 1]) == "MK|A"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_single_sequence_outputs_match_fixture(layout):
    eng, exp = engine(layout), expected()
    toks = inputs()["token_ids"]
    for i, t in enumerate(toks):
        (out,) = eng.forward_tokens([t], logits=True, embeddings=True, hidden_states="esm")
        assert close(out["logits"], exp[f"sequence_logits_{i}"]), i
        assert close(out["embeddings"], exp[f"embeddings_{i}"]), i
        assert close(out["hidden_states"], exp[f"hidden_states_{i}"], atol=HIDDEN_ATOL), i


def test_hf_hidden_state_convention():
    """n+1 entries: embedding output, blocks 0..n-2, final-norm output (fixture README)."""
    eng, exp = engine("official"), expected()
    t = inputs()["token_ids"][3]
    (out,) = eng.forward_tokens([t], logits=False, hidden_states="hf")
    hs = out["hidden_states"]
    assert hs.shape == (3, len(t), 64)
    emb = torch.load(fixture_path("model.pth"), weights_only=True)["embed.weight"].numpy()
    assert close(hs[0], emb[t])
    assert close(hs[1], exp["hidden_states_3"][0], atol=HIDDEN_ATOL)
    assert close(hs[2], exp["embeddings_3"])
    (one,) = eng.forward_tokens([t], logits=False, hidden_states="hf", ith_hidden_layer=2)
    assert one["hidden_states"].shape == (1, len(t), 64) and close(one["hidden_states"][0], hs[2])
    with pytest.raises(InvalidParameterError, match="ith_hidden_layer"):
        eng.forward_tokens([t], hidden_states="hf", ith_hidden_layer=3)


def test_padded_batch_equals_fixture_batch_and_unbatched():
    eng, exp = engine("official"), expected()
    toks = inputs()["token_ids"]
    eng_small = type(eng)(eng.model, slug="b", device="cpu", toks_per_batch=1)  # one sequence per batch
    batched = eng.forward_tokens(toks, logits=True, embeddings=True)
    single = eng_small.forward_tokens(toks, logits=True, embeddings=True)
    for i, t in enumerate(toks):
        n = int(exp["batch_lengths"][i])
        assert close(batched[i]["logits"], exp["batch_logits"][i, :n])
        assert close(batched[i]["embeddings"], exp["batch_embeddings"][i, :n])
        assert np.abs(batched[i]["logits"] - single[i]["logits"]).max() < 1e-4


def test_encode_layers_logits_and_means():
    eng, exp = engine("official"), expected()
    seqs = inputs()["sequences"][:4]
    out = eng.encode(seqs, include=("mean", "per_token", "bos", "logits"), repr_layers=(-1, 0))
    for i, s in enumerate(seqs):
        L = len(s)
        hs = exp[f"hidden_states_{i}"]
        assert set(out[i]["mean_representations"]) == {1, 0}
        assert close(out[i]["representations"][1], hs[1, 1:L + 1], atol=HIDDEN_ATOL)
        assert close(out[i]["mean_representations"][0], hs[0, 1:L + 1].mean(0), atol=HIDDEN_ATOL)
        assert close(out[i]["bos_representations"][1], hs[1, 0], atol=HIDDEN_ATOL)
        assert close(out[i]["logits"], exp[f"sequence_logits_{i}"][1:L + 1][:, CANONICAL_IDS])
    with pytest.raises(InvalidParameterError, match=r"\[-2, 1\]"):
        eng.encode(["MKT"], repr_layers=(2,))
    with pytest.raises(InvalidParameterError, match="contacts"):
        eng.encode(["MKT"], include=("contacts",))
    with pytest.raises(InvalidInputError, match="position 3"):
        eng.encode(["MK*"])


def test_log_prob_methods_and_predict():
    eng, exp = engine("official"), expected()
    s = inputs()["sequences"][3]
    L = len(s)
    logits = torch.from_numpy(exp["sequence_logits_3"][1:L + 1][:, CANONICAL_IDS]).double()
    lp = torch.log_softmax(logits, -1).numpy()
    col = {int(t): j for j, t in enumerate(CANONICAL_IDS)}
    want = sum(lp[p, col[tok]] for p, tok in enumerate(tokenize(s)[1:-1]))
    (got,) = eng.log_prob([s], method="biolm")
    assert abs(got - want) < 1e-4
    (pll,) = eng.log_prob([s], method="pll")
    assert pll < 0 and abs(pll - got) > 1e-3  # a different quantity (L masked passes)
    # PLL by hand for the first two positions equals the engine's per-position terms
    ids = np.array(tokenize(s))
    manual = 0.0
    for p in range(1, L + 1):
        t = ids.copy()
        t[p] = 32
        (o,) = eng.forward_tokens([t.tolist()])
        manual += float(torch.log_softmax(torch.from_numpy(o["logits"][p]).double(), -1)[ids[p]])
    assert abs(manual - pll) < 1e-3
    (pred,) = eng.predict(["MKT<mask>YIAK"])
    assert pred["logits"].shape == (8, 20) and pred["sequence_tokens"][3] == "<mask>"
    with pytest.raises(InvalidInputError, match="mask"):
        eng.predict(["MKTAYIAK"])


def test_score_mutants_masked_marginals():
    eng = engine("official")
    wt = inputs()["sequences"][3]
    scores = eng.score_mutants(wt, ["M1A", "K2R:T3S", "M1M"])
    assert scores.shape == (3,) and scores[2] == 0.0
    ids = np.array(tokenize(wt))
    t = ids.copy()
    t[1] = 32
    (o,) = eng.forward_tokens([t.tolist()])
    lp = torch.log_softmax(torch.from_numpy(o["logits"][1]).double(), -1)
    assert abs(scores[0] - float(lp[5] - lp[20])) < 1e-5  # A=5, M=20
    wtm = eng.score_mutants(wt, ["M1A"], method="wt_marginals")
    assert np.isfinite(wtm).all()
    with pytest.raises(InvalidInputError):
        eng.score_mutants(wt, ["A1G"])


def test_dummy_and_loading_errors(tmp_path):
    from plmserve.models.esmc.engine import ESMCEngine
    from plmserve.models.esmc.weights import official_to_hf

    eng = ESMCEngine.dummy({"num_layers": 2, "embed_dim": 64, "attention_heads": 4}, slug="esmc-300m")
    assert eng.load_format == "dummy" and eng.head_dim == 16
    out = eng.encode(["MKTAYIAK"], include=("mean",))
    assert out[0]["mean_representations"][1].shape == (64,)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="bad.pth"):
        ESMCEngine.from_official(bad)
    state = torch.load(fixture_path("model.pth"), weights_only=True)
    with pytest.raises(ModelLoadError, match="attention heads"):
        official_to_hf(state)  # width 64: the head count is not in the file
    state.pop("transformer.norm.weight")
    with pytest.raises(ModelLoadError, match="transformer.norm.weight"):
        official_to_hf(state, n_heads=4)


def test_convert_official_to_hf_folder(tmp_path):
    from plmserve.models.esmc import convert
    from plmserve.models.esmc.engine import ESMCEngine

    dst = convert(fixture_path("model.pth"), tmp_path / "esmc")
    eng = ESMCEngine.from_pretrained(str(dst))
    t = inputs()["token_ids"][5]
    (out,) = eng.forward_tokens([t])
    assert close(out["logits"], expected()["sequence_logits_5"])


def test_registry_and_manager_load(tmp_path):
    from plmserve.models.registry import ModelManager, get_spec
    from plmserve.settings import Settings

    spec = get_spec("esmc-300m-2024-12")
    assert spec.slug == "esmc-300m" and spec.family == "esmc" and "Open" in spec.licence
    assert "NON-COMMERCIAL" in get_spec("esmc_600m").licence
    # an official snapshot folder in the model dir: <dir>/<slug>/data/weights/<file> (+ heads from config)
    d = tmp_path / "esmc-300m" / "data" / "weights"
    d.mkdir(parents=True)
    (d / "esmc_300m_2024_12_v0.pth").write_bytes(fixture_path("model.pth").read_bytes())
    (d / "config.json").write_text('{"n_heads": 4}')
    eng = ModelManager(Settings(model_dir=tmp_path, device="cpu")).get("esmc-300m")
    assert eng.load_format == "official" and eng.num_layers == 2
    from plmserve.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="esmc_600m_2024_12_v0.pth"):
        ModelManager(Settings(model_dir=tmp_path, offline=True)).get("esmc-600m")


def test_hf_to_official_is_the_inverse_mapping():
    from plmserve.models.esmc.weights import hf_to_official, official_to_hf

    state = torch.load(fixture_path("model.pth"), weights_only=True)
    _, hf = official_to_hf(state, n_heads=4)
    back = hf_to_official(hf)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_bfloat16_path_runs_and_stays_close():
    """The CUDA default dtype (bf16), exercised on the CPU: dtypes stay consistent through the
    forward (rotary, q/k norms, masks) and results are float32, close to the fp32 fixture."""
    from plmserve.models.esmc.engine import ESMCEngine

    eng = ESMCEngine.from_official(fixture_path("model.pth"), device="cpu", dtype="bfloat16")
    toks = inputs()["token_ids"]
    out = eng.forward_tokens(toks, logits=True, embeddings=True, hidden_states="hf")
    for i, o in enumerate(out):
        assert o["logits"].dtype == np.float32
        assert np.abs(o["logits"] - expected()[f"sequence_logits_{i}"]).max() < 0.5
    assert np.isfinite(eng.log_prob(["MKTAYIAK"], method="pll")[0])
