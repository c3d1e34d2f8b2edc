"""``plmserve poet score|single-site|generate`` through typer's CliRunner with the fixture model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from tests.conftest import shared_path

CKPT = str(shared_path("fixtures", "poet", "model.ckpt"))
A3M = str(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs():
    return json.loads(shared_path("fixtures", "poet", "inputs.json").read_text())


def _read(path):
    with open(path) as fh:
        return list(csv.reader(fh))


def _prompt_file(tmp_path, inputs, replicates=2):
    blocks = []
    for r in range(replicates):
        seqs = inputs["prompt"][2 * r : 2 * r + 2]
        blocks.append("".join(f">r{r}s{i}\n{s}\n" for i, s in enumerate(seqs)))
    path = tmp_path / "prompt.fasta"
    path.write_text("<END_PROMPT>\n".join(blocks))
    return path


def test_score_with_prompt_file(tmp_path, inputs):
    from plmserve.models.poet import PoET

    variants = tmp_path / "variants.fasta"
    variants.write_text("".join(f">v{i}\n{s}\n" for i, s in enumerate(inputs["variants"][:3])))
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["poet", "score", "--prompt", str(_prompt_file(tmp_path, inputs)),
                              "--variants", str(variants), "-o", str(out), "--checkpoint", CKPT])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    assert rows[0] == ["name", "sequence", "score_1", "score_2"]
    assert [r[0] for r in rows[1:]] == ["v0", "v1", "v2"] and rows[1][1] == inputs["variants"][0]
    model = PoET.from_checkpoint(CKPT)
    ref = model.score([inputs["prompt"][0:2], inputs["prompt"][2:4]], inputs["variants"][:3])
    np.testing.assert_allclose(np.array([[float(x) for x in r[2:]] for r in rows[1:]]).T, ref, atol=1e-6)


def test_score_with_msa_sampling_and_plain_variant_lines(tmp_path, inputs):
    variants = tmp_path / "variants.txt"
    variants.write_text("\n".join(inputs["variants"][1:3]) + "\n")
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["poet", "score", "--msa", A3M, "--num-sequences", "3", "--replicates", "2",
                              "--seed", "5", "--variants", str(variants), "-o", str(out), "--checkpoint", CKPT,
                              "--no-reverse"])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    assert rows[0] == ["name", "sequence", "score_1", "score_2"]
    assert [r[0] for r in rows[1:]] == ["sequence-1", "sequence-2"]
    assert all(float(x) < 0 for r in rows[1:] for x in r[2:])


def test_single_site(tmp_path, inputs):
    out = tmp_path / "ssp.csv"
    res = runner.invoke(app, ["poet", "single-site", "--prompt", str(_prompt_file(tmp_path, inputs, 1)),
                              "--sequence", "MKTAYIAK", "-o", str(out), "--checkpoint", CKPT])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    assert rows[0] == ["mut_code", "score_1"]
    assert rows[1][0] == "WT" and rows[2][0] == "M1A" and rows[-1][0] == "K8V"
    assert len(rows) == 2 + 19 * 8


def test_generate_csv_and_fasta(tmp_path, inputs):
    out = tmp_path / "gen.csv"
    args = ["poet", "generate", "--prompt", str(_prompt_file(tmp_path, inputs)), "-n", "3", "--max-length", "20",
            "--sample-seed", "11", "--checkpoint", CKPT]
    res = runner.invoke(app, args + ["-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    assert rows[0] == ["name", "sequence", "score_1", "score_2"]
    assert [r[0] for r in rows[1:]] == ["generated-sequence-1", "generated-sequence-2", "generated-sequence-3"]
    assert all(1 <= len(r[1]) <= 20 for r in rows[1:])
    fasta = tmp_path / "gen.fasta"
    assert runner.invoke(app, args + ["-o", str(fasta)]).exit_code == 0
    seqs = [line for line in fasta.read_text().splitlines() if not line.startswith(">")]
    assert seqs == [r[1] for r in rows[1:]]  # same seed, same samples


def test_errors_are_one_line_exit_2(tmp_path, inputs):
    variants = tmp_path / "bad.fasta"
    variants.write_text(">a\nMKT\n>b\nMK1T\n")
    prompt = _prompt_file(tmp_path, inputs, 1)
    res = runner.invoke(app, ["poet", "score", "--prompt", str(prompt), "--variants", str(variants),
                              "-o", str(tmp_path / "x.csv"), "--checkpoint", CKPT])
    assert res.exit_code == 2 and "invalid character '1' at position 3" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["poet", "score", "--variants", str(variants), "-o", str(tmp_path / "x.csv"),
                              "--checkpoint", CKPT])
    assert res.exit_code == 2 and "--prompt" in res.output
    res = runner.invoke(app, ["poet", "generate", "--prompt", str(prompt), "--temperature", "0",
                              "-o", str(tmp_path / "g.csv"), "--checkpoint", CKPT])
    assert res.exit_code == 2 and "temperature" in res.output
    res = runner.invoke(app, ["poet", "single-site", "--prompt", str(prompt), "--sequence", "MKT",
                              "-o", str(tmp_path / "s.csv"), "--checkpoint", str(tmp_path / "missing.ckpt")])
    assert res.exit_code == 2 and "missing.ckpt" in res.output


def test_ensemble_score_reproduces_fixture(tmp_path):
    ref = json.loads(shared_path("fixtures", "poet", "ensemble.json").read_text())
    records = shared_path("data", "BLAT_ECOLX_Jacquier_2013_variants.fasta").read_text().splitlines()[:6]
    variants = tmp_path / "v.fasta"
    variants.write_text("\n".join(records) + "\n")
    out = tmp_path / "ens.csv"
    grid = ",".join(f"{t}:{s}" for t, s in ref["grid"][:2])
    res = runner.invoke(app, ["poet", "ensemble-score", "--msa", A3M, "--variants", str(variants), "--grid", grid,
                              "-o", str(out), "--checkpoint", CKPT])
    assert res.exit_code == 0, res.output
    rows = _read(out)
    assert rows[0] == ["name", "sequence", "score"] and [r[0] for r in rows[1:]] == ref["variant_names"][:3]
    want = np.mean([c["average"][:3] for c in ref["per_config"][:2]], axis=0)
    got = np.array([float(r[2]) for r in rows[1:]])
    assert np.all(np.abs(got - want) <= 1e-3 + 2e-6 * np.abs(want))
    bad = runner.invoke(app, ["poet", "ensemble-score", "--msa", A3M, "--variants", str(variants), "--grid", "6144",
                              "-o", str(out), "--checkpoint", CKPT])
    assert bad.exit_code == 2 and "MAX_TOKENS:MAX_SIMILARITY" in bad.output
