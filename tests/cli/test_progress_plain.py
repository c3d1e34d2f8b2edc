"""Progress when stderr is not a terminal: periodic plain lines with done/total, rate and ETA
(issue 12 item 4)."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from plmserve.cli import _common, app
from plmserve.cli._common import PlainProgress
from tests.conftest import shared_path


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_plain_lines_every_interval_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    with PlainProgress(interval=10, out=Console(file=out, width=200), get_time=clock) as bar:
        task = bar.add_task("score", total=100)
        for _ in range(50):  # 2 items per second for 25 s
            clock.now += 0.5
            bar.advance(task)
    lines = out.getvalue().splitlines()
    # a line at 10 s and 20 s (20 and 40 done), and a last one at the end (25 s, 50 done)
    assert len(lines) == 3, lines
    assert lines[0] == "score: 20/100 (20%), 2/s, ETA 0:00:40"
    assert lines[1] == "score: 40/100 (40%), 2/s, ETA 0:00:30"
    assert lines[2] == "score: 50/100 (50%) in 0:00:25, 2/s"


def test_short_task_prints_nothing():
    clock, out = Clock(), io.StringIO()
    with PlainProgress(interval=10, out=Console(file=out), get_time=clock) as bar:
        task = bar.add_task("score", total=3)
        for _ in range(3):
            clock.now += 1
            bar.advance(task)
    assert out.getvalue() == ""


def test_unknown_total_and_update():
    clock, out = Clock(), io.StringIO()
    with PlainProgress(interval=5, out=Console(file=out, width=200), get_time=clock) as bar:
        task = bar.add_task("search", total=None)
        clock.now += 6
        bar.update(task, completed=12)
    assert out.getvalue().splitlines()[0] == "search: 12, 2/s"


def test_progress_picks_plain_lines_when_stderr_is_no_terminal(capsys):
    assert isinstance(_common.progress(), PlainProgress)
    assert not isinstance(_common.progress(disable=True), PlainProgress)


@pytest.mark.usefixtures("one_torch_thread")
def test_poet_score_prints_progress_lines_into_a_log(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "PROGRESS_INTERVAL_S", 0.0)
    inputs = json.loads(shared_path("fixtures", "poet", "inputs.json").read_text())
    prompt = tmp_path / "prompt.fasta"
    prompt.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(inputs["prompt"][:2])))
    variants = tmp_path / "variants.fasta"
    variants.write_text("".join(f">v{i}\n{s}\n" for i, s in enumerate(inputs["variants"][:4])))
    res = CliRunner().invoke(app, ["poet", "score", "--prompt", str(prompt), "--variants", str(variants),
                                   "-o", str(tmp_path / "s.csv"),
                                   "--checkpoint", str(shared_path("fixtures", "poet", "model.ckpt"))])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("score: ")]
    assert lines, res.stderr
    assert re.fullmatch(r"score: (\d+)/\1 \(100%\) in 0:00:\d\d, [\d.]+/s", lines[-1]), lines
    assert len(lines) >= 3 and all(re.search(r"ETA 0:00:\d\d$", line) for line in lines[:-1]), lines
