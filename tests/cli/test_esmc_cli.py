"""``plmserve encode / predict / score-variants -m esmc-300m`` through typer's CliRunner, with the
official ESM C fixture in ``<model-dir>/esmc-300m/`` (transformers layout, as ``models convert``
writes it). Values are checked against the official ``esm`` 3.2.1 outputs (fixture) and the engine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from plmserve.models.esmc.alphabet import CANONICAL_IDS
from tests.models.esmc._fixture import HIDDEN_ATOL, close, engine, expected, fixture_path, inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(fixture_path("hf"), root / "esmc-300m")
    return root


def test_encode_npz_matches_fixture(model_dir, tmp_path):
    seqs = inputs()["sequences"][:4]
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "emb.npz"
    r = runner.invoke(app, ["encode", str(fasta), "-m", "esmc-300m", "--model-dir", str(model_dir), "-o", str(out),
                            "--include", "mean,per_token,logits", "--repr-layers", "-1,0"])
    assert r.exit_code == 0, r.output
    z = np.load(out)
    exp = expected()
    assert z["mean_representations/1"].shape == (4, 64)
    for i, s in enumerate(seqs):
        L = len(s)
        assert close(z["mean_representations/1"][i], exp[f"hidden_states_{i}"][1, 1:L + 1].mean(0), atol=HIDDEN_ATOL)
        assert close(z[f"representations/0/{i}"], exp[f"hidden_states_{i}"][0, 1:L + 1], atol=HIDDEN_ATOL)
        assert close(z[f"logits/{i}"], exp[f"sequence_logits_{i}"][1:L + 1][:, CANONICAL_IDS])
    r = runner.invoke(app, ["encode", "-s", "MKT", "-m", "esmc-300m", "--model-dir", str(model_dir), "-o",
                            str(tmp_path / "x.npz"), "--include", "contacts"])
    assert r.exit_code != 0 and "not available for ESM C" in r.output


def test_score_variants_and_predict(model_dir, tmp_path):
    wt = inputs()["sequences"][3]
    csv = tmp_path / "v.csv"
    pd.DataFrame({"mutant": ["M1A", "K2R", "K2R:T3S"], "DMS_score": [0.1, 0.2, 0.3]}).to_csv(csv, index=False)
    out = tmp_path / "scored.csv"
    r = runner.invoke(app, ["score-variants", str(csv), "-m", "esmc-300m", "--model-dir", str(model_dir),
                            "--wild-type", wt, "-o", str(out)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["mutant", "DMS_score", "esmc_300m"]
    want = engine("hf").score_mutants(wt, ["M1A", "K2R", "K2R:T3S"])
    np.testing.assert_allclose(table["esmc_300m"], want, atol=1e-5)
    jsonl = tmp_path / "pred.jsonl"
    r = runner.invoke(app, ["predict", "-s", "MKT<mask>YIAK", "-m", "esmc-300m", "--model-dir", str(model_dir),
                            "-o", str(jsonl)])
    assert r.exit_code == 0, r.output
    row = json.loads(jsonl.read_text().splitlines()[0])
    assert row["alphabet_tokens"] == list("ACDEFGHIKLMNPQRSTVWY") and np.shape(row["logits"]) == (8, 20)
    r = runner.invoke(app, ["encode", "-s", "MKT", "-m", "poet", "-o", str(tmp_path / "y.npz")])
    assert r.exit_code != 0 and "esmc-300m" in r.output


def test_models_convert_official_pth(tmp_path):
    dst = tmp_path / "weights" / "esmc-300m"
    r = runner.invoke(app, ["models", "convert", str(fixture_path("model.pth")), str(dst), "--family", "esmc"])
    assert r.exit_code == 0, r.output
    assert (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    out = tmp_path / "e.npz"
    r = runner.invoke(app, ["encode", "-s", inputs()["sequences"][5], "-m", "esmc-300m", "--model-dir",
                            str(tmp_path / "weights"), "-o", str(out), "--include", "logits"])
    assert r.exit_code == 0, r.output
    assert close(np.load(out)["logits/0"], expected()["sequence_logits_5"][1:-1][:, CANONICAL_IDS])
