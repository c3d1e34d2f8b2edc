"""``poet single-site --positions`` and the wild type taken from ``--msa`` (issue 12 item 6), and
the naming of unnamed variants that the docs describe."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from plmserve.bio.msa import parse_msa
from plmserve.cli import app
from plmserve.cli.poet import parse_positions, read_sequences
from plmserve.errors import InvalidParameterError
from tests.conftest import shared_path

CKPT = str(shared_path("fixtures", "poet", "model.ckpt"))
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(path):
    with open(path) as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    inputs = json.loads(shared_path("fixtures", "poet", "inputs.json").read_text())
    path = tmp_path_factory.mktemp("p") / "prompt.fasta"
    path.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(inputs["prompt"][:2])))
    return path


def test_parse_positions():
    assert parse_positions(None) is None
    assert parse_positions("5") == [5]
    assert parse_positions("3,1, 7-9,8") == [3, 1, 7, 8, 9]
    for bad in ("0", "a", "5-2", "1,,2", "-3"):
        with pytest.raises(InvalidParameterError, match="--positions"):
            parse_positions(bad)


def test_positions_scan_only_those_and_match_the_full_scan(tmp_path, prompt_file):
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    base = ["poet", "single-site", "--prompt", str(prompt_file), "--sequence", "MKTAYIAK", "--checkpoint", CKPT]
    assert runner.invoke(app, base + ["-o", str(full)]).exit_code == 0
    res = runner.invoke(app, base + ["-o", str(part), "--positions", "3,7-8"])
    assert res.exit_code == 0, res.output
    rows, ref = _rows(part), {r[0]: r[1] for r in _rows(full)[1:]}
    codes = [r[0] for r in rows[1:]]
    assert codes[1:] == [c for p, wt in ((3, "T"), (7, "A"), (8, "K")) for c in ref if c[1:-1] == str(p)
                         and c[0] == wt]
    assert len(codes) == 1 + 19 * 3
    for code, score in rows[1:]:
        assert float(score) == pytest.approx(float(ref[code]), abs=1e-5)
    res = runner.invoke(app, base + ["-o", str(part), "--positions", "9"])
    assert res.exit_code == 2 and "position 9 is outside the sequence (1..8)" in res.output


def test_wild_type_defaults_to_the_msa_query(tmp_path, prompt_file):
    msa = tmp_path / "msa.a3m"
    msa.write_text(">query\nMKTAYIAK\n>h1\nMKTAYLAK\n>h2\nMRTAYIAK\n")
    out = tmp_path / "ssp.csv"
    res = runner.invoke(app, ["poet", "single-site", "--msa", str(msa), "--num-sequences", "2", "--seed", "3",
                              "--positions", "2", "-o", str(out), "--checkpoint", CKPT])
    assert res.exit_code == 0, res.output
    assert "wild type: the query of" in res.output
    assert [r[0] for r in _rows(out)[2:]] == [f"K2{aa}" for aa in "ARNDCQEGHILMFPSTWYV"]
    res = runner.invoke(app, ["poet", "single-site", "--prompt", str(prompt_file), "-o", str(out),
                              "--checkpoint", CKPT])
    assert res.exit_code == 2 and "--sequence" in res.output and "--msa" in res.output
    assert parse_msa(msa.read_text()).query == "MKTAYIAK"


@pytest.mark.parametrize("count,first,last", [(9, "sequence-1", "sequence-9"), (12, "sequence-01", "sequence-12"),
                                              (100, "sequence-001", "sequence-100")])
def test_unnamed_variant_names_as_documented(tmp_path, count, first, last):
    path = tmp_path / "v.txt"
    path.write_text("".join("MKTAYIAK\n" for _ in range(count)))
    names = [n for n, _ in read_sequences(path)]
    assert (names[0], names[-1]) == (first, last)
