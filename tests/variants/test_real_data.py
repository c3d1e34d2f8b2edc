"""End to end on real data: the full TEM-1 DMS of Jacquier et al. 2013 (989 variants) scored with
the ESM-2 and PoET fixture models (random weights: the Spearman means nothing, the plumbing and
the provenance of every number are what is checked), then evaluated and reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from plmserve.variants.metrics import evaluate
from plmserve.variants.report import single_site_matrix
from tests.conftest import shared_path
from tests.variants.test_cli import assert_self_contained

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
runner = CliRunner()
JACQUIER = shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv")
MSA = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
GRID = "1000:1.0,1000:0.5"  # two score.py prompts (the official grid has 15 of up to 24576 tokens)


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_jacquier_esm2_and_poet_score_evaluate_report(tmp_path):
    esm2, poet = tmp_path / "esm2.csv", tmp_path / "poet.csv"
    _ok(runner.invoke(app, ["variants", "score", "-m", "esm2-650m", "--checkpoint",
                            str(shared_path("fixtures", "esm2", "esm2_tiny.pt")), str(JACQUIER), "-o", str(esm2),
                            "--report", str(tmp_path / "esm2.html"), "--bootstrap", "100"]))  # fmt: skip
    _ok(runner.invoke(app, ["variants", "score", "-m", "poet", "--checkpoint",
                            str(shared_path("fixtures", "poet", "model.ckpt")), "--msa", str(MSA), "--grid", GRID,
                            str(JACQUIER), "-o", str(poet), "--bootstrap", "0"]))  # fmt: skip
    dms = pd.read_csv(JACQUIER)
    for path in (esm2, poet):
        table = pd.read_csv(path)
        assert len(table) == 989 and table["mutant"].tolist() == dms["mutant"].tolist()
        assert np.isfinite(table["score"]).all() and table["score"].std() > 0
        assert table["DMS_score_bin"].tolist() == dms["DMS_score_bin"].tolist()
    poet_table = pd.read_csv(poet)
    assert {"score_1", "score_2"} <= set(poet_table.columns)

    # PoET's numbers are the score.py ensemble minus the wild type, for any subset of variants
    from plmserve.bio.msa import read_msa
    from plmserve.models.poet import PoET
    from plmserve.models.poet.ensemble import score_py_ensemble

    alignment = read_msa(MSA)
    rows = [0, 400, 988]
    seqs = [alignment.query] + dms["mutated_sequence"].iloc[rows].tolist()
    ref = score_py_ensemble(PoET.from_checkpoint(shared_path("fixtures", "poet", "model.ckpt")), alignment, seqs,
                            grid=[(1000, 1.0), (1000, 0.5)])  # fmt: skip
    np.testing.assert_allclose(poet_table["score"].iloc[rows], ref.scores[1:] - ref.scores[0], atol=1e-4)

    # evaluate both: one comparison table, the numbers those of the written files
    out_json, report = tmp_path / "cmp.json", tmp_path / "cmp.html"
    r = _ok(runner.invoke(app, ["variants", "evaluate", str(esm2), str(poet), "-o", str(out_json), "--report",
                                str(report), "--bootstrap", "200"]))  # fmt: skip
    data = json.loads(out_json.read_text())
    assert [d["label"] for d in data] == ["esm2-650m", "poet"] and [d["n"] for d in data] == [989, 989]
    for d, path in zip(data, (esm2, poet)):
        t = pd.read_csv(path)
        ref_eval = evaluate(t["DMS_score"], t["score"], t["DMS_score_bin"], bootstrap=200, seed=0)
        for metric in ("Spearman", "AUC", "MCC", "NDCG", "Top_recall"):
            assert d["metrics"][metric] == pytest.approx(ref_eval.values[metric], abs=1e-12)
            assert d["ci_low"][metric] <= d["metrics"][metric] <= d["ci_high"][metric]
    assert "esm2-650m" in r.output and "poet" in r.output

    html = report.read_text()
    assert_self_contained(html)
    wild_type = json.loads((tmp_path / "esm2.csv.json").read_text())["wild_type"]
    assert wild_type == alignment.query
    positions, matrix = single_site_matrix(pd.read_csv(esm2), "score", wild_type)
    assert len(positions) == 263 and np.isfinite(matrix).sum() == 989 + 263  # + the wild-type cells
    for div in ("heat-pred-0", "heat-dms-0", "scatter-0", "dist-0", "heat-pred-1", "scatter-1", "msa-1"):
        assert f'id="{div}"' in html
    assert "N_eff (homology 0.8)" in html and "1000:1.0, 1000:0.5; seed 188257" in html
    assert_self_contained((tmp_path / "esm2.html").read_text())
