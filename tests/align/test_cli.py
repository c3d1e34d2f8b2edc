"""``plmserve msa search|info`` and ``plmserve prompt sample|info``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from plmserve.bio.msa import read_msa
from plmserve.bio.prompt import read_prompt
from plmserve.cli import app
from tests.conftest import shared_path

BLAT = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_msa_info_reports_rows_columns_neff():
    res = invoke("msa", "info", str(BLAT), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["rows"], info["columns"], info["query_length"]) == (4501, 286, 286)
    assert info["n_eff"] == pytest.approx(3378.248, abs=1e-3)


def test_prompt_sample_replicates_and_seed(tmp_path):
    out = tmp_path / "prompt.fasta"
    res = invoke("prompt", "sample", str(BLAT), "--num-residues", "3000", "--replicates", "3", "--seed", "188257",
                 "-o", str(out))
    assert res.exit_code == 0, res.output
    reps = read_prompt(out)
    assert len(reps) == 3
    fixture = json.loads(shared_path("fixtures", "poet", "sampler.json").read_text())
    msa = read_msa(BLAT)
    expected = [msa.names[i] for i in fixture["configs"][0]["prompts"]["3000"]["a3m_rows"]]
    assert [n for n, _ in reps[0]] == expected
    res = invoke("prompt", "info", str(out))
    assert res.exit_code == 0 and "replicate 1: 12 sequences, 3285 tokens" in res.stdout
    csv_out = tmp_path / "prompt.csv"
    res = invoke("prompt", "sample", str(BLAT), "--num-sequences", "5", "--seed", "7", "-o", str(csv_out))
    assert res.exit_code == 0, res.output
    assert len(csv_out.read_text().splitlines()) == 5 and "," in csv_out.read_text()


def test_cli_errors_are_one_line_exit_2(tmp_path):
    res = invoke("prompt", "sample", str(BLAT), "--num-residues", "30000", "-o", str(tmp_path / "p.fasta"))
    assert res.exit_code == 2
    assert "The 'num_residues' must be between 0 and 24577." in res.output
    assert "Traceback" not in res.output
    bad = tmp_path / "bad.a3m"
    bad.write_text(">q\nACDEF\n>h\nACDE\n")
    res = invoke("msa", "info", str(bad))
    assert res.exit_code == 2 and "row 2 `h` has 4 columns, the query has 5" in res.output
    res = invoke("msa", "info", str(tmp_path / "missing.a3m"))
    assert res.exit_code == 2 and "missing.a3m" in res.output
    res = invoke("msa", "search", "MKTAYIAK", "--db", str(tmp_path / "nope.fasta"), "-o", str(tmp_path / "o.a3m"))
    assert res.exit_code == 2 and "sequence database not found" in res.output


def test_msa_search_writes_a3m(tmp_path):
    msa = read_msa(BLAT)
    db = tmp_path / "db.fasta"
    db.write_text("".join(f">hom{i}\n{msa.sequences[i]}\n" for i in range(1, 40))
                  + shared_path("data", "decoy_proteome_938293.faa").read_text()[:200_000])
    seed = tmp_path / "seed.fasta"
    seed.write_text(f">wt\n{msa.query}\n")
    out = tmp_path / "out.a3m"
    res = invoke("msa", "search", "--db", str(db), str(seed), "-o", str(out), "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    found = read_msa(out)
    assert found.query == msa.query
    hits = set(found.names[1:])
    assert len(hits) >= 37 and all(h.startswith("hom") for h in hits)
