"""``plmserve msa search`` seed handling, output formats and ``msa info`` format names (issue 12 item 2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from plmserve.bio.msa import parse_msa, read_msa
from plmserve.cli import app
from tests.conftest import shared_path

BLAT = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
runner = CliRunner()


@pytest.fixture(scope="module")
def homologs(tmp_path_factory):
    """A small database: 30 BLAT homologs + a slice of the decoy proteome, and the BLAT query."""
    msa = read_msa(BLAT)
    path = tmp_path_factory.mktemp("db") / "db.fasta"
    path.write_text("".join(f">hom{i}\n{msa.sequences[i]}\n" for i in range(1, 31))
                    + shared_path("data", "decoy_proteome_938293.faa").read_text()[:100_000])
    return path, msa.query


def search(tmp_path, db, seed, out_name):
    out = tmp_path / out_name
    res = runner.invoke(app, ["msa", "search", "--db", str(db), seed, "-o", str(out),
                              "--cache-dir", str(tmp_path / "cache")])
    return res, out


def test_long_sequence_seed_is_not_taken_for_a_path(tmp_path, homologs):
    db, query = homologs
    assert len(query) == 286
    res, out = search(tmp_path, db, query, "out.a3m")
    assert res.exit_code == 0, res.output
    assert "File name too long" not in res.output
    found = read_msa(out)
    assert found.names[0] == "seed" and found.query == query and len(found) >= 30


def test_seed_fasta_header_is_kept_also_from_the_cache(tmp_path, homologs):
    db, query = homologs
    seed = tmp_path / "seed.fasta"
    seed.write_text(f">BLAT_ECOLX beta-lactamase TEM\n{query}\n")
    for _ in range(2):  # the second run is answered from the cache
        res, out = search(tmp_path, db, str(seed), "out.a3m")
        assert res.exit_code == 0, res.output
        assert read_msa(out).names[0] == "BLAT_ECOLX"


def test_zero_hits_warns_and_writes_seed_only_msa(tmp_path):
    db = tmp_path / "decoys.fasta"
    db.write_text(shared_path("data", "decoy_proteome_938293.faa").read_text()[:20_000])
    res, out = search(tmp_path, db, "MKTAYIAKQRQISFVKSHFSRQ", "out.a3m")
    assert res.exit_code == 0, res.output
    assert "warning: no hits" in res.stderr
    assert len(read_msa(out)) == 1


def test_sto_output_is_stockholm_and_reads_back_identically(tmp_path, homologs):
    db, query = homologs
    res, out_a3m = search(tmp_path, db, query, "out.a3m")
    assert res.exit_code == 0, res.output
    res, out_sto = search(tmp_path, db, query, "out.sto")
    assert res.exit_code == 0, res.output
    text = out_sto.read_text()
    assert text.startswith("# STOCKHOLM 1.0") and text.rstrip().endswith("//")
    a3m, sto = read_msa(out_a3m), read_msa(out_sto)
    assert sto.format == "stockholm"
    assert (sto.names, sto.aligned, sto.sequences) == (a3m.names, a3m.aligned, a3m.sequences)


def test_unknown_output_suffix_is_refused(tmp_path, homologs):
    db, query = homologs
    res, out = search(tmp_path, db, query, "out.txt")
    assert res.exit_code == 2 and ".sto" in res.output and not out.exists()


def test_expanded_rows_pad_insertions():
    msa = parse_msa(">q\nACDE\n>h\nAcC-E\n>g\nAddCDEk\n")
    assert msa.expanded_rows() == ["A..CDE.", "Ac.C-E.", "AddCDEk"]


def test_msa_info_names_a3m_without_insertions(tmp_path):
    path = tmp_path / "x.a3m"
    path.write_text(">q\nACDE\n>h\nAC-E\n")
    res = runner.invoke(app, ["msa", "info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "a3m"
    fasta = tmp_path / "x.fasta"
    fasta.write_text(path.read_text())
    res = runner.invoke(app, ["msa", "info", str(fasta), "--json"])
    assert json.loads(res.stdout)["format"] == "fasta"
