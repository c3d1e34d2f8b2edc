"""``RemoteEngine.single_site(..., positions=)``: the server's scan filtered to those positions
(``plmserve poet single-site --positions --server``)."""

from __future__ import annotations

import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.client.remote import RemoteEngine
from plmserve.errors import InvalidInputError
from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer

REPS = [[("a", "MKTAYIAKQR"), ("b", "MKTAY")]]


def test_positions_filter_the_server_scan(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys=["key-1"]))
    app.state.models.put("poet", FakePoetEngine())
    with LiveServer(app) as srv, pc.connect(srv.url, api_key="key-1", poll_interval=0.05) as s:
        remote = RemoteEngine(s, poll_interval=0.05)
        full = remote.single_site(REPS, "MKT")
        part = remote.single_site(REPS, "MKT", positions=[3, 1])
        assert [c for c, _ in part] == [full[0][0]] + [f"T3{aa}" for aa in "ARNDCQEGHILKMFPSWYV"] + \
            [f"M1{aa}" for aa in "ARNDCQEGHILKFPSTWYV"]
        scores = dict(full)
        assert all(scores[c] == v for c, v in part)
        with pytest.raises(InvalidInputError, match=r"position 4 is outside the sequence \(1..3\)"):
            remote.single_site(REPS, "MKT", positions=[4])
