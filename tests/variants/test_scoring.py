"""Each family's zero-shot scorer against an independent computation with the fixture models
(ESM-2 tiny, ESM3 tiny, PoET tiny; random weights, so only the arithmetic is checked)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from plmserve.bio.msa import read_msa
from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.variants.io import VariantSet, read_variants
from plmserve.variants.scoring import (
    residue_window,
    score_esm3_masked_marginals,
    score_masked_marginals,
    score_poet,
    score_variants,
)
from tests.conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WT = "MSIQHFRVALIPFFAAFCLPVFAHPETLVKVKDAEDQLGARVGY"


def _variants(tmp_path, codes, wt=WT) -> VariantSet:
    p = tmp_path / "m.txt"
    p.write_text("\n".join(codes) + "\n")
    return read_variants(p, wt)


@functools.lru_cache(maxsize=1)
def esm2_engine():
    from plmserve.models.esm2.engine import ESM2Engine

    return ESM2Engine.from_fair_esm(shared_path("fixtures", "esm2", "esm2_tiny.pt"), device="cpu")


@functools.lru_cache(maxsize=1)
def esm3_model():
    from plmserve.models.esm3 import ESM3

    return ESM3.from_pretrained(shared_path("fixtures", "esm3"))


@functools.lru_cache(maxsize=1)
def poet_model():
    from plmserve.models.poet import PoET

    return PoET.from_checkpoint(shared_path("fixtures", "poet", "model.ckpt"))


def _esm2_reference(wt: str, pos: int, mt: str) -> float:
    """log p(mt) - log p(wt) at 1-based ``pos`` with that position alone masked, straight from
    the transformers model (BOS + residues + EOS, fair-esm token ids)."""
    from plmserve.models.esm2.alphabet import TOKEN_ID

    toks = [0] + [TOKEN_ID[c] for c in wt] + [2]
    toks[pos] = 32
    with torch.no_grad():
        logits = esm2_engine().model(input_ids=torch.tensor([toks])).logits[0, pos].double()
    lp = torch.log_softmax(logits, -1)
    return float(lp[TOKEN_ID[mt]] - lp[TOKEN_ID[wt[pos - 1]]])


def test_esm2_single_and_additive_multi_mutants(tmp_path):
    v = _variants(tmp_path, ["M1A", "H5W", "WT", "M1A:H5W:Y44C"])
    out = score_masked_marginals(esm2_engine(), v)
    ref = {c: _esm2_reference(WT, int(c[1:-1]), c[-1]) for c in ("M1A", "H5W", "Y44C")}
    np.testing.assert_allclose(out.scores[:3], [ref["M1A"], ref["H5W"], 0.0], atol=1e-5)
    # ProteinGym: the multi-mutant is the sum of single-site masked marginals on the WT background
    assert out.scores[3] == pytest.approx(ref["M1A"] + ref["H5W"] + ref["Y44C"], abs=1e-5)
    # ... which is not the engine's "mask all mutated positions together" variant
    joint = float(esm2_engine().score_mutants(WT, ["M1A:H5W:Y44C"])[0])
    assert abs(joint - out.scores[3]) > 1e-4
    assert out.method == "masked_marginals" and out.replicates is None


def test_esm2_long_protein_in_windows(tmp_path):
    engine = esm2_engine()
    long_wt = (WT * 30)[:engine.max_residues + 80]
    L = len(long_wt)
    codes = [f"{long_wt[p - 1]}{p}{'W' if long_wt[p - 1] != 'W' else 'A'}" for p in (3, 600, L - 2)]
    v = _variants(tmp_path, codes + [":".join(codes)], wt=long_wt)
    out = score_masked_marginals(engine, v)
    expected = []
    for code in codes:
        start, end = residue_window(L, int(code[1:-1]) - 1, engine.max_residues)
        shifted = f"{code[0]}{int(code[1:-1]) - start}{code[-1]}"
        expected.append(float(engine.score_mutants(long_wt[start:end], [shifted])[0]))
    np.testing.assert_allclose(out.scores, expected + [sum(expected)], atol=1e-5)
    assert out.settings["windows"] == [[0, engine.max_residues], [L - engine.max_residues, L]]  # 600 and L-2 share one


def test_esm_c_family_plugs_in_through_score_mutants(tmp_path):
    """An ESM C engine has ESM2Engine's public methods; the family name selects the same scorer."""
    v = _variants(tmp_path, ["M1A", "Q4E"])
    a = score_variants(esm2_engine(), "esmc", v).scores
    b = score_variants(esm2_engine(), "esm2", v).scores
    np.testing.assert_array_equal(a, b)


def _esm3_reference(wt: str, pos: int, mt: str, start: int = 0, end: int | None = None) -> float:
    from plmserve.models.esm3 import constants as C

    end = len(wt) if end is None else end
    ids = [C.SEQUENCE_BOS_TOKEN] + [C.SEQUENCE_CHAR_TO_ID[c] for c in wt[start:end]] + [C.SEQUENCE_EOS_TOKEN]
    ids[pos - start] = C.SEQUENCE_MASK_TOKEN
    with torch.no_grad():
        out = esm3_model()(sequence_tokens=torch.tensor([ids]))
    lp = torch.log_softmax(out.sequence_logits[0, pos - start].double(), -1)
    return float(lp[C.SEQUENCE_CHAR_TO_ID[mt]] - lp[C.SEQUENCE_CHAR_TO_ID[wt[pos - 1]]])


def test_esm3_masked_marginals_on_the_sequence_track(tmp_path):
    v = _variants(tmp_path, ["S2P", "V21A", "S2P:V21A", "WT"])
    out = score_esm3_masked_marginals(esm3_model(), v, batch=2)
    a, b = _esm3_reference(WT, 2, "P"), _esm3_reference(WT, 21, "A")
    np.testing.assert_allclose(out.scores, [a, b, a + b, 0.0], atol=1e-4)
    assert score_variants(esm3_model(), "esm3", v).scores == pytest.approx(out.scores)


def testresidue_window_for_long_proteins(tmp_path):
    assert residue_window(500, 10) == (0, 500)
    assert residue_window(2000, 100) == (0, 1022)
    assert residue_window(2000, 1000) == (489, 1511)
    assert residue_window(2000, 1990) == (978, 2000)
    long_wt = (WT * 30)[:1100]
    pos = 1050
    code = f"{long_wt[pos - 1]}{pos}{'W' if long_wt[pos - 1] != 'W' else 'A'}"
    v = _variants(tmp_path, [code], wt=long_wt)
    out = score_esm3_masked_marginals(esm3_model(), v)
    start, end = residue_window(1100, pos - 1)
    assert (start, end) == (78, 1100)
    assert out.scores[0] == pytest.approx(_esm3_reference(long_wt, pos, code[-1], start, end), abs=1e-4)


def test_poet_prompt_replicates_relative_to_wild_type(tmp_path):
    msa = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    wt = msa.query
    rows = msa.sequences[1:7]
    prompts = [rows[:3], rows[3:]]
    p = tmp_path / "m.txt"
    p.write_text("H24Y\nWT\nH24P:T69A\n")
    v = read_variants(p, wt)
    out = score_poet(poet_model(), v, prompts=prompts)
    absolute = poet_model().score(prompts, [wt, *v.sequences])  # [2, 4]
    expected = absolute[:, 1:] - absolute[:, :1]
    np.testing.assert_allclose(out.replicates, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.scores, expected.mean(0), rtol=1e-6, atol=1e-6)
    assert out.scores[1] == 0.0 and out.replicate_names == ["score_1", "score_2"]
    assert out.settings["wild_type_log_likelihood"] == pytest.approx(absolute[:, 0].tolist())


def test_poet_msa_ensemble_matches_score_py(tmp_path):
    from plmserve.models.poet.ensemble import score_py_ensemble

    msa = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    p = tmp_path / "m.txt"
    p.write_text("H24Y\nL111E\n")
    v = read_variants(p, msa.query)
    grid = [(600, 1.0), (600, 0.5)]
    out = score_poet(poet_model(), v, msa=msa, grid=grid)
    ref = score_py_ensemble(poet_model(), msa, [msa.query, *v.sequences], grid=grid)
    per = np.stack([c.average for c in ref.per_config])
    np.testing.assert_allclose(out.replicates, per[:, 1:] - per[:, :1], atol=1e-6)
    np.testing.assert_allclose(out.scores, ref.scores[1:] - ref.scores[0], atol=1e-6)
    assert out.settings["grid"] == [[600, 1.0], [600, 0.5]] and out.settings["seed"] == 188257


def test_dispatch_errors(tmp_path):
    v = _variants(tmp_path, ["M1A"])
    with pytest.raises(InvalidParameterError, match="for PoET"):
        score_variants(esm2_engine(), "esm2", v, prompts=[["MKT"]])
    with pytest.raises(InvalidParameterError, match="exactly one"):
        score_variants(poet_model(), "poet", v)
    with pytest.raises(InvalidParameterError, match="no variant scorer"):
        score_variants(object(), "unknown", v)


def test_masked_marginals_refuse_indels(tmp_path):
    p = tmp_path / "v.fasta"
    p.write_text(f">longer\n{WT}G\n")
    v = read_variants(p, WT)
    with pytest.raises(InvalidInputError, match="not a substitution variant.*PoET scores any sequence"):
        score_masked_marginals(esm2_engine(), v)
