"""``plmserve poet score|single-site|generate --server URL``: the CLI computes on a running server."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from plmserve.api.app import create_app
from plmserve.cli import app as cli
from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer

runner = CliRunner()


@pytest.fixture
def server(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "srv", api_keys=["cli-key"]))
    app.state.models.put("poet", FakePoetEngine())
    with LiveServer(app) as srv:
        yield srv


def read(path):
    with open(path) as fh:
        return list(csv.reader(fh))


def test_poet_commands_with_server(server, tmp_path):
    prompt = tmp_path / "prompt.fasta"
    prompt.write_text(">a\nMKTAYIAKQR\n>b\nMKTAY\n<END_PROMPT>\n>c\nMRTAYIAKQK\n")
    variants = tmp_path / "variants.fasta"
    variants.write_text(">wt\nMKTAYIAKQR\n>w10\nMKTAYIAKQW\n")
    remote = ["--server", server.url, "--api-key", "cli-key", "--prompt", str(prompt)]
    out = tmp_path / "scores.csv"
    r = runner.invoke(cli, ["poet", "score", "--variants", str(variants), "-o", str(out), *remote])
    assert r.exit_code == 0, r.output
    rows = read(out)
    assert rows[0] == ["name", "sequence", "score_1", "score_2"]
    assert rows[1][:2] == ["wt", "MKTAYIAKQR"]
    assert [float(x) for x in rows[2][2:]] == pytest.approx(
        [FakePoetEngine.one(2, "MKTAYIAKQW"), FakePoetEngine.one(1, "MKTAYIAKQW")])
    out = tmp_path / "ssp.csv"
    r = runner.invoke(cli, ["poet", "single-site", "--sequence", "MK", "-o", str(out), *remote])
    assert r.exit_code == 0, r.output
    rows = read(out)
    assert rows[0] == ["mut_code", "score_1", "score_2"] and [x[0] for x in rows[1:4]] == ["WT", "M1A", "M1R"]
    assert len(rows) == 1 + 1 + 19 * 2
    out = tmp_path / "gen.csv"
    r = runner.invoke(cli, ["poet", "generate", "-n", "3", "--sample-seed", "5", "-o", str(out), *remote])
    assert r.exit_code == 0, r.output
    assert [x[0] for x in read(out)[1:]] == ["generated-sequence-1", "generated-sequence-2", "generated-sequence-3"]
    # errors are one line, no traceback
    r = runner.invoke(cli, ["poet", "score", "--variants", str(variants), "-o", str(out), "--no-reverse", *remote])
    assert r.exit_code == 2 and "--no-reverse" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["poet", "score", "--variants", str(variants), "-o", str(out), "--server", server.url,
                            "--api-key", "wrong", "--prompt", str(prompt)])
    assert r.exit_code == 2 and "invalid API key" in r.output
