"""``plmserve encode / predict / score-variants`` through typer's CliRunner, on a tiny random ESM-2
saved in Hugging Face format under ``<model-dir>/esm2-8m/``. Values are checked against the same
model run directly with ``transformers`` (independent of plmserve's engine)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from plmserve.cli import app
from tests.api._esm2_tiny import EMBED_DIM, NUM_LAYERS, make_tiny_esm2_dir
from tests.cli._support import one_line_error as _one_line_error

runner = CliRunner()
ALL = ("<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>").split()
SEQS = {"p1|first": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "MSIQHFRVALIPFFAAFCLPVF", "p3": "GAVLK"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_esm2_dir(root, "esm2-8m")
    return root


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import EsmForMaskedLM

    return EsmForMaskedLM.from_pretrained(model_dir / "esm2-8m", attn_implementation="eager").eval()


@pytest.fixture()
def fasta(tmp_path):
    p = tmp_path / "in.fasta"
    p.write_text("".join(f">{n} some description\n{s[:10]}\n{s[10:]}\n" for n, s in SEQS.items()))
    return p


def _tokens(seq: str) -> torch.Tensor:
    toks, i = [0], 0
    while i < len(seq):
        if seq.startswith("<mask>", i):
            toks.append(32)
            i += 6
        else:
            toks.append(ALL.index(seq[i]))
            i += 1
    return torch.tensor([toks + [2]])


def _reference(hf_model, seq):
    with torch.no_grad():
        out = hf_model(_tokens(seq), output_hidden_states=True)
    return out.hidden_states, out.logits[0]


def _invoke(args, model_dir):
    return runner.invoke(app, [*args, "-m", "esm2-8m", "--model-dir", str(model_dir)])


def test_encode_npz(fasta, tmp_path, model_dir, hf_model):
    out = tmp_path / "emb.npz"
    r = _invoke(["encode", str(fasta), "-o", str(out), "--include", "mean,per_token,contacts,bos,logits,attentions",
                 "--repr-layers", "-1,0"], model_dir)
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert list(z["names"]) == list(SEQS) and list(z["sequences"]) == list(SEQS.values())
    assert z[f"mean_representations/{NUM_LAYERS}"].shape == (3, EMBED_DIM)
    assert z["mean_representations/0"].shape == (3, EMBED_DIM)
    for i, seq in enumerate(SEQS.values()):
        hidden, logits = _reference(hf_model, seq)
        L = len(seq)
        np.testing.assert_allclose(z[f"mean_representations/{NUM_LAYERS}"][i],
                                   hidden[-1][0, 1:L + 1].mean(0).numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(z[f"bos_representations/{NUM_LAYERS}"][i], hidden[-1][0, 0].numpy(),
                                   atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(z[f"representations/0/{i}"], hidden[0][0, 1:L + 1].numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(z[f"logits/{i}"], logits[1:L + 1, 4:24].numpy(), atol=1e-4, rtol=1e-4)
        assert z[f"contacts/{i}"].shape == (L, L)
        assert z[f"attentions/{i}"].shape == (NUM_LAYERS, L)


def test_encode_parquet_and_jsonl_agree(fasta, tmp_path, model_dir):
    pq, jl = tmp_path / "emb.parquet", tmp_path / "emb.jsonl"
    for out in (pq, jl):
        r = _invoke(["encode", str(fasta), "-o", str(out), "--include", "mean,contacts", "--repr-layers", "-1"],
                    model_dir)
        assert r.exit_code == 0, r.output
    table = pd.read_parquet(pq)
    assert list(table["name"]) == list(SEQS)
    rows = [json.loads(line) for line in jl.read_text().splitlines()]
    assert [row["name"] for row in rows] == list(SEQS)
    assert [row["sequence_index"] for row in rows] == [0, 1, 2]
    for i, row in enumerate(rows):
        assert set(row) == {"name", "sequence", "sequence_index", "mean_representations", "contacts"}
        mean = np.asarray(row["mean_representations"][str(NUM_LAYERS)])
        np.testing.assert_allclose(np.asarray(table[f"mean_{NUM_LAYERS}"][i]), mean, atol=1e-6)
        contacts = np.stack(table["contacts"][i])
        assert contacts.shape == (len(row["sequence"]),) * 2
        np.testing.assert_allclose(contacts, np.asarray(row["contacts"]), atol=1e-6)


def test_predict_table_and_jsonl(tmp_path, model_dir, hf_model):
    seq = "MKTA<mask>IAKQ<mask>QIS"
    r = _invoke(["predict", "--sequence", seq, "--top", "3"], model_dir)
    assert r.exit_code == 0, r.output
    lines = [ln.split("\t") for ln in r.output.splitlines() if ln.startswith("seq1\t")]
    assert [ln[1] for ln in lines] == ["5", "10"]  # 1-based positions of the masks
    assert all(len(ln[2].split()) == 6 for ln in lines)  # 3 x (letter, probability)
    out = tmp_path / "pred.jsonl"
    r = _invoke(["predict", "--sequence", seq, "-o", str(out)], model_dir)
    assert r.exit_code == 0, r.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["sequence_tokens"][4] == "<mask>" and len(row["sequence_tokens"]) == 13
    _, logits = _reference(hf_model, seq)
    np.testing.assert_allclose(np.asarray(row["logits"]), logits[1:14, 4:24].numpy(), atol=1e-4, rtol=1e-4)
    # the table's best pick at position 5 is the argmax of the reference logits there
    assert lines[0][2].split()[0] == row["alphabet_tokens"][int(np.argmax(logits[5, 4:24].numpy()))]


def test_score_variants_masked_marginals(tmp_path, model_dir, hf_model):
    wt = SEQS["p1|first"]
    csv = tmp_path / "variants.csv"
    pd.DataFrame({"mutant": ["M1A", "K2R:T3S", "Q11W", "M1M"], "DMS_score": [0.1, -0.5, 1.0, 0.0]}).to_csv(csv, index=False)
    out = tmp_path / "scored.csv"
    r = _invoke(["score-variants", str(csv), "--wild-type", wt, "-o", str(out)], model_dir)
    assert r.exit_code == 0, r.output
    scored = pd.read_csv(out)
    assert list(scored.columns) == ["mutant", "DMS_score", "esm2_8m"]
    assert list(scored["DMS_score"]) == [0.1, -0.5, 1.0, 0.0]

    def masked_marginal(subs):
        masked = list(wt)
        for _, pos, _ in subs:
            masked[pos - 1] = "<mask>"
        _, logits = _reference(hf_model, "".join(masked))
        lp = torch.log_softmax(logits[:, 4:24], dim=-1)
        return sum(float(lp[pos, ALL.index(mt) - 4] - lp[pos, ALL.index(w) - 4]) for w, pos, mt in subs)

    expected = [masked_marginal([("M", 1, "A")]), masked_marginal([("K", 2, "R"), ("T", 3, "S")]),
                masked_marginal([("Q", 11, "W")]), 0.0]
    np.testing.assert_allclose(scored["esm2_8m"].to_numpy(), expected, atol=1e-4)


def test_score_variants_wt_fasta_and_column_names(tmp_path, model_dir):
    wt_fa = tmp_path / "wt.fasta"
    wt_fa.write_text(">wt\nGAVLK\n")
    csv = tmp_path / "v.csv"
    csv.write_text("code\nG1A\nK5R\n")
    out = tmp_path / "s.csv"
    r = _invoke(["score-variants", str(csv), "--wt-fasta", str(wt_fa), "--mutant-column", "code",
                 "--score-column", "esm", "--method", "wt_marginals", "-o", str(out)], model_dir)
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(out).columns) == ["code", "esm"]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["encode", "{bad_fasta}", "-o", "{tmp}/x.npz"], ["p2", "position 3", "'J'"]),
        (["encode", "{tmp}/missing.fasta", "-o", "{tmp}/x.npz"], ["missing.fasta"]),
        (["encode", "{fasta}", "-o", "{tmp}/x.txt"], [".txt", ".npz"]),
        (["encode", "{fasta}", "-o", "{tmp}/x.npz", "--include", "mean,foo"], ["'foo'"]),
        (["encode", "{fasta}", "-o", "{tmp}/x.npz", "--repr-layers", "a"], ["'a'"]),
        (["encode", "{fasta}", "-o", "{tmp}/x.npz", "--repr-layers", "7"], ["7"]),
        (["predict", "--sequence", "MKTAYIAKQR"], ["<mask>"]),
        (["score-variants", "{variants}", "--wild-type", "GAVLK", "-o", "{tmp}/s.csv"], ["line 3", "V2G"]),
        (["score-variants", "{variants}", "-o", "{tmp}/s.csv"], ["--wild-type"]),
        (["score-variants", "{variants}", "--wild-type", "GAVLK", "--mutant-column", "mut", "-o", "{tmp}/s.csv"],
         ["'mut'"]),
    ],
)
def test_errors_are_one_line_exit_2(args, fragments, tmp_path, model_dir, fasta):
    bad_fasta = tmp_path / "bad.fasta"
    bad_fasta.write_text(">p1\nMKT\n>p2\nMKJT\n")
    variants = tmp_path / "v.csv"
    variants.write_text("mutant\nG1A\nV2G\n")
    fmt = {"bad_fasta": bad_fasta, "tmp": tmp_path, "fasta": fasta, "variants": variants}
    line = _one_line_error(_invoke([a.format(**fmt) for a in args], model_dir))
    for frag in fragments:
        assert frag in line, (frag, line)


def test_missing_weights_and_unknown_model(tmp_path, fasta):
    r = runner.invoke(app, ["encode", str(fasta), "-o", str(tmp_path / "x.npz"), "-m", "esm2-35m",
                            "--model-dir", str(tmp_path)])
    line = _one_line_error(r)
    assert "esm2-35m" in line and "PLMSERVE_MODEL_DIR" in line
    line = _one_line_error(runner.invoke(app, ["encode", str(fasta), "-o", str(tmp_path / "x.npz"), "-m", "esm9"]))
    assert "esm9" in line


def test_dummy_load_format_warns(tmp_path, fasta):
    out = tmp_path / "d.npz"
    r = runner.invoke(app, ["encode", str(fasta), "-o", str(out), "-m", "esm2-8m", "--load-format", "dummy"])
    assert r.exit_code == 0, r.output
    assert "RANDOM" in r.output
    assert np.load(out)["mean_representations/6"].shape == (3, 320)
