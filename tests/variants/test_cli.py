"""``plmserve variants score / evaluate`` and ``poet score`` on DMS CSVs, through typer's CliRunner,
with the ESM-2, ESM3 and PoET fixture models (random weights: the plumbing and the numbers'
provenance are checked, not their biology)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from plmserve.variants.io import read_variants
from plmserve.variants.metrics import evaluate
from tests.conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
JACQUIER = shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv")
MSA = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
ESM2 = shared_path("fixtures", "esm2", "esm2_tiny.pt")
ESM3 = shared_path("fixtures", "esm3")
POET = shared_path("fixtures", "poet", "model.ckpt")

EXTERNAL = [r"<script[^>]*\bsrc\s*=", r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", r"@import",
            r"url\(\s*[\"']?(https?:)?//", r"<img[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", r"<iframe"]  # fmt: skip


def assert_self_contained(html: str) -> None:
    """No resource loaded from elsewhere: no script src, no external stylesheet/image/import."""
    for pattern in EXTERNAL:
        assert not re.search(pattern, html), pattern
    assert "Plotly.newPlot" in html and len(html) > 3_000_000  # the plotly.js bundle is inline


@pytest.fixture(scope="module")
def small_dms(tmp_path_factory):
    """The first 60 Jacquier rows plus two double mutants (DMS columns carried)."""
    dms = pd.read_csv(JACQUIER).head(60)
    v = read_variants(JACQUIER)
    wt = v.wild_type
    extra = []
    for code, score in (("H24Y:V29A", -1.0), ("E62K:L74A", -0.2)):
        seq = list(wt)
        for part in code.split(":"):
            assert wt[int(part[1:-1]) - 1] == part[0]
            seq[int(part[1:-1]) - 1] = part[-1]
        extra.append({"mutant": code, "mutated_sequence": "".join(seq), "DMS_score": score,
                      "DMS_score_bin": int(score >= -0.667)})  # fmt: skip
    out = pd.concat([dms, pd.DataFrame(extra)], ignore_index=True)
    path = tmp_path_factory.mktemp("dms") / "small.csv"
    out.to_csv(path, index=False)
    return path


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output
    return lines[-1]


def test_score_esm2_sidecar_and_evaluate(small_dms, tmp_path):
    out = tmp_path / "esm2.csv"
    r = _ok(runner.invoke(app, ["variants", "score", "-m", "esm2-650m", "--checkpoint", str(ESM2), str(small_dms),
                                "-o", str(out), "--evaluate", "--bootstrap", "50"]))  # fmt: skip
    table = pd.read_csv(out)
    assert list(table.columns) == ["mutant", "mutated_sequence", "score", "DMS_score", "DMS_score_bin"]
    dms = pd.read_csv(small_dms)
    assert table["mutant"].tolist() == dms["mutant"].tolist()
    assert table["DMS_score"].tolist() == dms["DMS_score"].tolist()
    # double mutants: the sum of their single-site terms
    from plmserve.models.esm2.engine import ESM2Engine

    engine = ESM2Engine.from_fair_esm(ESM2, device="cpu")
    wt = read_variants(small_dms).wild_type
    singles = engine.score_mutants(wt, ["H24Y", "V29A"])
    assert table["score"].iloc[60] == pytest.approx(singles.sum(), abs=1e-5)
    assert table["score"].iloc[0] == pytest.approx(singles[0], abs=1e-5)
    meta = json.loads((tmp_path / "esm2.csv.json").read_text())
    assert meta["model"]["name"] == "esm2-650m" and meta["model"]["family"] == "esm2"
    assert meta["model"]["source"] == str(ESM2) and meta["method"] == "masked_marginals"
    assert meta["wild_type"] == wt and meta["num_variants"] == 62
    # the printed Spearman is the metric of the written table
    rho = evaluate(table["DMS_score"], table["score"], table["DMS_score_bin"], bootstrap=0).values["Spearman"]
    assert f"{rho:.3f}" in r.output and "Spearman" in r.output


def test_score_esm3_mutation_list(tmp_path):
    wt = read_variants(JACQUIER).wild_type
    (tmp_path / "wt.fasta").write_text(f">BLAT\n{wt}\n")
    (tmp_path / "muts.txt").write_text("H24Y\nX0X\nH24Y:V29A\n")
    out = tmp_path / "esm3.csv"
    _ok(runner.invoke(app, ["variants", "score", "-m", "esm3", "--checkpoint", str(ESM3), "--wt",
                            str(tmp_path / "wt.fasta"), str(tmp_path / "muts.txt"), "-o", str(out)]))  # fmt: skip
    table = pd.read_csv(out)
    assert table["mutant"].tolist() == ["H24Y", "WT", "H24Y:V29A"]
    assert table["score"].iloc[1] == 0.0 and table["score"].iloc[0] != 0.0
    assert json.loads((tmp_path / "esm3.csv.json").read_text())["model"]["family"] == "esm3"


def test_score_poet_prompt_replicates_and_report(small_dms, tmp_path):
    msa_rows = [row for row in MSA.read_text().splitlines() if row and not row.startswith(">")]
    prompt = tmp_path / "prompt.fasta"
    blocks = []
    for rep in (msa_rows[1:4], msa_rows[4:7]):
        blocks.append("".join(f">h{i}\n{re.sub('[a-z-]', '', s)}\n" for i, s in enumerate(rep)))
    prompt.write_text("<END_PROMPT>\n".join(blocks))
    out = tmp_path / "poet.csv"
    report = tmp_path / "poet.html"
    _ok(runner.invoke(app, ["variants", "score", "-m", "poet", "--checkpoint", str(POET), "--prompt", str(prompt),
                            str(small_dms), "-o", str(out), "--report", str(report), "--bootstrap", "20"]))  # fmt: skip
    table = pd.read_csv(out)
    assert list(table.columns)[:5] == ["mutant", "mutated_sequence", "score", "score_1", "score_2"]
    np.testing.assert_allclose(table["score"], (table["score_1"] + table["score_2"]) / 2, atol=1e-9)
    meta = json.loads((tmp_path / "poet.csv.json").read_text())
    assert meta["replicate_columns"] == ["score_1", "score_2"]
    assert len(meta["settings"]["wild_type_log_likelihood"]) == 2
    html = report.read_text()
    assert_self_contained(html)
    for div in ("heat-pred-0", "heat-dms-0", "scatter-0", "dist-0"):
        assert f'id="{div}"' in html
    assert "Spearman ρ =" in html and "WT log-likelihood" in html and "Prompts" in html


def test_evaluate_several_files_table_and_dms_join(small_dms, tmp_path):
    wt = read_variants(small_dms).wild_type
    (tmp_path / "wt.fasta").write_text(f">wt\n{wt}\n")
    codes = pd.read_csv(small_dms)["mutant"].tolist()
    (tmp_path / "muts.txt").write_text("\n".join(codes) + "\n")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _ok(runner.invoke(app, ["variants", "score", "-m", "esm2-8m", "--checkpoint", str(ESM2), str(small_dms),
                            "-o", str(a)]))  # fmt: skip
    _ok(runner.invoke(app, ["variants", "score", "-m", "esm3", "--checkpoint", str(ESM3), "--wt",
                            str(tmp_path / "wt.fasta"), str(tmp_path / "muts.txt"), "-o", str(b)]))  # fmt: skip
    assert "DMS_score" not in pd.read_csv(b).columns
    # b has no DMS columns: evaluating it alone fails with a clear message
    assert "no 'DMS_score' column" in _one_line_error(runner.invoke(app, ["variants", "evaluate", str(b)]))
    table_csv, table_json, html = tmp_path / "t.csv", tmp_path / "t.json", tmp_path / "cmp.html"
    r = _ok(runner.invoke(app, ["variants", "evaluate", str(a), str(b), "--dms", str(small_dms), "-o", str(table_csv),
                                "--bootstrap", "30", "--seed", "7", "--report", str(html)]))  # fmt: skip
    assert "esm2-8m" in r.output and "esm3-open-2024-03" in r.output
    t = pd.read_csv(table_csv)
    assert t["label"].tolist() == ["esm2-8m", "esm3-open-2024-03"] and t["n"].tolist() == [62, 62]
    assert t["n_common"].tolist() == [62, 62] and 0.0 in t["Spearman_diff_to_best"].tolist()
    assert "ΔSpearman vs best" in r.output
    sa, sb = pd.read_csv(a), pd.read_csv(b)
    dms = pd.read_csv(small_dms)
    for row, scores in zip(t.itertuples(), (sa["score"], sb["score"])):
        ref = evaluate(dms["DMS_score"], scores, dms["DMS_score_bin"], bootstrap=30, seed=7)
        assert row.Spearman == pytest.approx(ref.values["Spearman"]) and row.AUC == pytest.approx(ref.values["AUC"])
        assert row.NDCG_ci_low == pytest.approx(ref.ci_low["NDCG"]) and row.MCC_se == pytest.approx(ref.se["MCC"])
    _ok(runner.invoke(app, ["variants", "evaluate", str(a), "-o", str(table_json), "--bootstrap", "0"]))
    data = json.loads(table_json.read_text())
    assert data[0]["label"] == "esm2-8m" and data[0]["ci_low"] == {} and data[0]["by_depth"]["2"]["n"] == 2
    page = html.read_text()
    assert_self_contained(page)
    assert 'id="heat-pred-1"' in page and "esm3-open-2024-03" in page and "ΔSpearman vs best" in page
    assert "By mutation depth" in page  # the two double mutants


def test_poet_msa_report_has_msa_depth_and_neff(small_dms, tmp_path):
    out, report = tmp_path / "poet.csv", tmp_path / "r.html"
    _ok(runner.invoke(app, ["variants", "score", "-m", "poet", "--checkpoint", str(POET), "--msa", str(MSA),
                            "--grid", "400:1.0", str(small_dms), "-o", str(out), "--report", str(report),
                            "--bootstrap", "0"]))  # fmt: skip
    meta = json.loads((tmp_path / "poet.csv.json").read_text())
    assert meta["settings"]["grid"] == [[400, 1.0]] and meta["settings"]["msa"] == str(MSA)
    html = report.read_text()
    assert_self_contained(html)
    assert "N_eff (homology 0.8)" in html and 'id="msa-0"' in html and "sequences (depth)</th><td>4501" in html


def test_poet_score_reads_dms_csv(small_dms, tmp_path):
    prompt = tmp_path / "p.fasta"
    prompt.write_text(">wt\n" + read_variants(small_dms).wild_type + "\n")
    out = tmp_path / "s.csv"
    _ok(runner.invoke(app, ["poet", "score", "--checkpoint", str(POET), "--prompt", str(prompt), "--variants",
                            str(small_dms), "-o", str(out)]))  # fmt: skip
    table = pd.read_csv(out)
    dms = pd.read_csv(small_dms)
    assert table["name"].tolist() == dms["mutant"].tolist()
    assert table["sequence"].tolist() == dms["mutated_sequence"].tolist()


@pytest.mark.parametrize("args, fragment", [
    (["-m", "poet", "--checkpoint", str(POET)], "exactly one of --msa"),
    (["-m", "esm2-8m", "--msa", str(MSA)], "--msa/--prompt are for PoET"),
    (["-m", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["-m", "esm2-8m", "--checkpoint", str(ESM2), "--wt", "{wt}"], "line 2: mutation 'A1G'"),
])  # fmt: skip
def test_score_errors_are_one_line(args, fragment, tmp_path):
    (tmp_path / "wt.fasta").write_text(">wt\nMKT\n")
    (tmp_path / "m.txt").write_text("M1A\nA1G\n")
    args = [a.format(wt=tmp_path / "wt.fasta") for a in args]
    variants = str(tmp_path / "m.txt") if "--wt" in args else str(JACQUIER)
    line = _one_line_error(runner.invoke(app, ["variants", "score", *args, variants, "-o", str(tmp_path / "o.csv")]))
    assert fragment in line


def test_evaluate_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.csv"
    assert "No such file" in _one_line_error(runner.invoke(app, ["variants", "evaluate", str(missing)]))
    bad = tmp_path / "bad.csv"
    bad.write_text("mutant,score,DMS_score\nM1A,abc,1.0\nK2R,1.0,2.0\n")
    line = _one_line_error(runner.invoke(app, ["variants", "evaluate", str(bad)]))
    assert "line 2: score 'abc' is not a number" in line
    assert "use a .csv or .json" in _one_line_error(
        runner.invoke(app, ["variants", "evaluate", str(bad), "-o", str(tmp_path / "t.txt")]))


def test_registry_loading_model_dir_and_dummy_weights(tmp_path):
    """Without --checkpoint the weights are found as the server finds them (--model-dir); dummy
    weights are flagged in the sidecar and the report."""
    from plmserve.models.esm2.engine import ESM2Engine
    from tests.api._esm2_tiny import make_tiny_esm2_dir

    models = tmp_path / "models"
    make_tiny_esm2_dir(models, "esm2-8m")
    wt = read_variants(JACQUIER).wild_type
    (tmp_path / "wt.fasta").write_text(f">wt\n{wt}\n")
    (tmp_path / "m.txt").write_text("H24Y\nH24Y:V29A\n")
    out = tmp_path / "o.csv"
    _ok(runner.invoke(app, ["variants", "score", "-m", "esm2-8m", "--model-dir", str(models), "--wt",
                            str(tmp_path / "wt.fasta"), str(tmp_path / "m.txt"), "-o", str(out)]))  # fmt: skip
    engine = ESM2Engine.from_pretrained(str(models / "esm2-8m"), device="cpu")
    singles = engine.score_mutants(wt, ["H24Y", "V29A"])
    np.testing.assert_allclose(pd.read_csv(out)["score"], [singles[0], singles.sum()], atol=1e-5)
    assert json.loads((tmp_path / "o.csv.json").read_text())["model"]["source"] == str(models / "esm2-8m")

    report = tmp_path / "d.html"
    r = _ok(runner.invoke(app, ["variants", "score", "-m", "esm2-8m", "--load-format", "dummy", "--wt",
                                str(tmp_path / "wt.fasta"), str(tmp_path / "m.txt"), "-o", str(out),
                                "--report", str(report)]))  # fmt: skip
    assert "RANDOM weights" in r.output
    meta = json.loads((tmp_path / "o.csv.json").read_text())
    assert meta["model"]["random_weights"] is True and meta["model"]["source"] == "dummy"
    assert "These scores come from RANDOM weights" in report.read_text()
