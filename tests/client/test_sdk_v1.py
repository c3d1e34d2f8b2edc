"""plmserve.client's OpenProtein 0.17 surface (session.align, session.prompt,
session.embedding.poet, session.load_job) against a real server with the PoET fixture model."""

from __future__ import annotations

import numpy as np
import pytest

import plmserve.client as pc
from plmserve.client.v1 import (
    EmbeddingsResultFuture,
    GenerateFuture,
    MSAFuture,
    Prompt,
    Protein,
    ScoreFuture,
    SingleSiteFuture,
)
from plmserve.settings import Settings
from tests.client.support import LiveServer, make_app, poet_fixture_engine

MSA_FASTA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"


engine = poet_fixture_engine  # the real engine of the fixture checkpoint, loaded once


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def session(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=["admin-key"])
    app = make_app(settings, {"poet": engine()})
    with LiveServer(app) as srv:
        s = pc.connect(srv.url, "alice", "alice-password", poll_interval=0.05)
        s.url = srv.url
        yield s
        s.close()


def test_v1_surface_end_to_end(session):
    msa = session.align.upload_msa(MSA_FASTA)
    assert isinstance(msa, MSAFuture) and msa.job.job_type == "/align/align"
    rows = msa.wait(timeout=60)
    assert rows[0] == ("query", "MKTAYIAKQR") and len(rows) == 4
    assert msa.get_seed() == "MKTAYIAKQR"
    prompt = msa.sample_prompt(num_sequences=3, num_ensemble_prompts=2, random_seed=0)
    assert isinstance(prompt, Prompt) and prompt.num_replicates == 2 and prompt.metadata.job_id == prompt.id
    reps = prompt.wait(timeout=60)
    assert len(reps) == 2 and all(isinstance(p, Protein) and b"-" not in p.sequence for rep in reps for p in rep)
    seqs = [[p.sequence.decode() for p in rep] for rep in reps]

    poet = session.embedding.poet
    assert poet is session.embedding.get_model("poet") and poet.metadata.dimension == engine().config.hidden_dim
    score = poet.score(["MKTAYIAKQR", "MKTAYIAKQW"], prompt=prompt)
    got = score.wait(timeout=60)
    assert [s.name for s in got] == ["sequence-1", "sequence-2"] and got[1].sequence == b"MKTAYIAKQW"
    np.testing.assert_allclose(np.stack([s.score for s in got]), engine().score(seqs, ["MKTAYIAKQR", "MKTAYIAKQW"]).T,
                               rtol=1e-6, atol=1e-6)
    assert score.sequences == [b"MKTAYIAKQR", b"MKTAYIAKQW"]

    ssp = poet.single_site("MKT", prompt=prompt).wait(timeout=60)
    assert ssp[0].mut_code == "WT" and ssp[1].mut_code == "M1A" and len(ssp) == 1 + 19 * 3
    indel = poet.indel("MKT", insert="A", prompt=prompt.id).wait(timeout=60)
    assert [r.name for r in indel] == ["WT", "1insA", "2insA", "3insA", "4insA"]

    gen = [poet.generate(prompt, num_samples=2, seed=3, max_length=30).wait(timeout=60) for _ in range(2)]
    assert [g.sequence for g in gen[0]] == [g.sequence for g in gen[1]]
    with pytest.raises(pc.InvalidParameterError):
        poet.generate(prompt, temperature=3.0)

    emb = poet.embed(["MKTAY", "MRT"], prompt=prompt).wait(timeout=60)
    assert [s for s, _ in emb] == [b"MKTAY", b"MRT"] and emb[0][1].shape == (2, engine().config.hidden_dim)
    per_res = poet.embed(["MKTAY"], prompt=prompt, reduction=None)
    arr = per_res.wait(timeout=60)[0][1]
    assert arr.shape == (2, 5, engine().config.hidden_dim)
    np.testing.assert_array_equal(per_res.get_item("MKTAY"), arr)
    logits = poet.logits(["MKTAY"], prompt=prompt).wait(timeout=60)
    assert logits[0][1].shape == (2, 5, 24)

    # uploaded prompt, list, reload by id
    up = session.prompt.create_prompt([["MKTAYIAKQR", Protein("MRTAY", "named")], ["MKSAY"]], name="mine")
    assert up.metadata.job_id is None and up.name == "mine"
    assert [[p.sequence for p in rep] for rep in up.wait()] == [[b"MKTAYIAKQR", b"MRTAY"], [b"MKSAY"]]
    assert up.wait()[0][1].name == "named"
    assert {p.id for p in session.prompt.list_prompts()} == {prompt.id, up.id}
    q = session.prompt.create_query("MKTXXAY")
    assert session.prompt.get_query(q.id).id == q.id and q.get() == b">query\nMKTXXAY\n"

    for fut, cls in ((msa, MSAFuture), (score, ScoreFuture), (per_res, EmbeddingsResultFuture)):
        assert isinstance(session.load_job(fut.id), cls)
    assert isinstance(session.load_job(prompt.id), Prompt)
    loaded = session.load_job(per_res.id)
    assert loaded.sequences == [b"MKTAY"] and loaded.get()[0][1].shape == arr.shape
    assert isinstance(session.load_job(session.jobs.list(job_type="/poet/generate")[0].job_id), GenerateFuture)
    assert isinstance(session.load_job(session.jobs.list(job_type="/poet/single_site")[0].job_id), SingleSiteFuture)
    with pytest.raises(pc.APIError) as exc:
        session.load_job("00000000-0000-4000-8000-000000000000")
    assert exc.value.status_code == 404

    bob = pc.connect(session.url, "bob", "bob-password")
    with pytest.raises(pc.APIError) as exc:
        bob.prompt.get_prompt(prompt.id)
    assert exc.value.status_code == 404
    assert bob.prompt.list_prompts() == []
    bob.close()


def test_session_refreshes_an_expired_access_token(session):
    assert session._refresh_token  # logged in through v1/auth/login
    session._client.headers["authorization"] = "Bearer expired-or-revoked"
    assert session.jobs.list() == []  # 401 -> v1/auth/refresh -> retried with the new token
    assert session._client.headers["authorization"] != "Bearer expired-or-revoked"
    session._refresh_token = "forgotten-by-the-server"
    session._client.headers["authorization"] = "Bearer expired-or-revoked"
    with pytest.raises(pc.AuthError):
        session.jobs.list()
