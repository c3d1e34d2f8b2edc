"""Remote twins of the PoET CLI computations (plmserve.client.remote) against a live server."""

from __future__ import annotations

import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.client.remote import format_prompt_file, generate_remote, score_remote, single_site_remote
from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer

REPS = [[("a", "MKTAYIAKQR"), ("b", "MKTAY")], [("c", "MRTAYIAKQK")]]


@pytest.fixture
def session(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=["key-1"]))
    app.state.models.put("poet", FakePoetEngine())
    with LiveServer(app) as srv:
        with pc.connect(srv.url, api_key="key-1", poll_interval=0.05) as s:
            yield s


def test_format_prompt_file():
    assert format_prompt_file(REPS) == b">a\nMKTAYIAKQR\n>b\nMKTAY\n<END_PROMPT>\n>c\nMRTAYIAKQK\n"


def test_remote_score_single_site_generate(session):
    seen = []
    header, rows = score_remote(session, REPS, [("wt", "MKTAYIAKQR"), ("w", "MKTAYIAKQW")],
                                on_progress=lambda d, t: seen.append((d, t)))
    assert header == ["name", "sequence", "score_1", "score_2"]
    assert [r[:2] for r in rows] == [["wt", "MKTAYIAKQR"], ["w", "MKTAYIAKQW"]]
    assert rows[0][2:] == pytest.approx([FakePoetEngine.one(2, "MKTAYIAKQR"), FakePoetEngine.one(1, "MKTAYIAKQR")])
    assert seen and seen[-1] == (100, 100)
    header, rows = single_site_remote(session, REPS, "MK")
    assert header == ["mut_code", "score_1", "score_2"]
    assert [r[0] for r in rows[:3]] == ["WT", "M1A", "M1R"] and len(rows) == 39
    header, rows = generate_remote(session, REPS, 3, seed=4, top_k=5)
    assert [r[0] for r in rows] == ["generated-sequence-1", "generated-sequence-2", "generated-sequence-3"]
    assert all(len(r) == 4 for r in rows)
