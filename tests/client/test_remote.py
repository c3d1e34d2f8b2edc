"""RemoteEngine (``plmserve poet ... --server``): the local engine's interface computed by a server."""

from __future__ import annotations

import numpy as np
import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.client.remote import RemoteEngine, format_prompt_file
from plmserve.errors import InvalidParameterError
from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer

REPS = [[("a", "MKTAYIAKQR"), ("b", "MKTAY")], [("c", "MRTAYIAKQK")]]


@pytest.fixture
def remote(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=["key-1"]))
    app.state.models.put("poet", FakePoetEngine())
    with LiveServer(app) as srv:
        with pc.connect(srv.url, api_key="key-1", poll_interval=0.05) as s:
            yield RemoteEngine(s, poll_interval=0.05)


def test_format_prompt_file():
    assert format_prompt_file(REPS) == b">a\nMKTAYIAKQR\n>b\nMKTAY\n<END_PROMPT>\n>c\nMRTAYIAKQK\n"
    assert format_prompt_file([["MKT"]]) == b">prompt-1\nMKT\n"


def test_remote_engine_matches_the_local_interface(remote):
    local = FakePoetEngine()
    seqs = ["MKTAYIAKQR", "MKTAYIAKQW"]
    seen = []
    got = remote.score(REPS, seqs, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_allclose(got, local.score(REPS, seqs))
    assert got.shape == (2, 2) and seen[-1] == (100, 100)
    one = remote.score(REPS[0], seqs)  # a single prompt -> [n_sequences]
    np.testing.assert_allclose(one, local.score(REPS[0], seqs))
    ss = remote.single_site(REPS, "MK")
    ref = local.single_site(REPS, "MK")
    assert [c for c, _ in ss] == [c for c, _ in ref] and ss[0][0] == "WT"
    np.testing.assert_allclose(np.array([v for _, v in ss]), np.array([v for _, v in ref]))
    gen = remote.generate(REPS, 3, seed=4, top_k=5)
    assert [s for s, _ in gen] == [s for s, _ in local.generate(REPS, 3, seed=4, top_k=5)]
    assert all(v.shape == (2,) for _, v in gen)
    with pytest.raises(InvalidParameterError, match="--no-reverse"):
        remote.score(REPS, seqs, reverse=False)
