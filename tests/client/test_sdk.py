"""The plmserve SDK against a real HTTP server (uvicorn in a thread), PoET engine double.

Checks the seed's method names, futures, typed results and exception types; the real PoET
engine runs in tests/e2e.
"""

from __future__ import annotations

import time

import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.jobs.store import JobStore
from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer, make_app

MSA_FASTA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"


@pytest.fixture
def live(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=["admin-key"])
    app = make_app(settings, {"poet": FakePoetEngine()})
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture
def session(live):
    s = pc.connect(live.url, "alice", "alice-password", poll_interval=0.05)
    yield s
    s.close()


def test_connect_errors(live):
    with pytest.raises(pc.AuthError) as exc:
        pc.connect(live.url, "alice", "wrong-password")
    assert exc.value.status_code == 401 and "invalid username or password" in exc.value.message
    with pytest.raises(pc.APIError, match="cannot reach"):
        pc.connect("http://127.0.0.1:9", "alice", "alice-password")
    s = pc.connect(live.url + "/api/", api_key="admin-key")  # API keys work too; /api/ suffix accepted
    assert s.jobs.list() == []


def test_poet_workflow_typed_results(session):
    poet = session.poet
    msa = poet.upload_msa(MSA_FASTA)
    assert isinstance(msa, pc.MSAFuture) and msa.msa_id == msa.id and msa.prompt_id is None
    assert list(msa.wait()) == [["query", "MKTAYIAKQR"], ["hom1", "MKTAY-AKQR"], ["hom2", "MRTAYIAKQK"],
                                ["hom3", "MKSAYLAKQR"]]
    prompt = msa.sample_prompt(num_sequences=3, num_ensemble_prompts=2, random_seed=5,
                               method=pc.MSASamplingMethod.TOP)
    assert isinstance(prompt, pc.PromptFuture)
    assert prompt.prompt_id == prompt.id and prompt.msa_id == msa.id
    all_reps = list(prompt.wait())
    assert ["<END_PROMPT>"] in all_reps
    rep1 = list(prompt.get_prompt(1))
    assert rep1 and all(len(row) == 2 and "-" not in row[1] for row in rep1)

    queries = [b"MKTAYIAKQR", b"MKTAYIAKQW", b"MKTAY"]
    score = poet.score(prompt, queries)
    assert isinstance(score, pc.PoetScoreFuture)
    results = score.wait()
    assert [type(r) for r in results] == [pc.PoetScoreResult] * 3
    assert [r.sequence for r in results] == queries
    assert [r.name for r in results] == ["sequence-1", "sequence-2", "sequence-3"]
    assert all(len(r.score) == 2 for r in results)
    assert score.done() and score.status == pc.JobStatus.SUCCESS and score.progress == 100
    # inputs through the score job's lineage
    assert list(score.get_prompt(1)) == rep1
    assert list(score.get_msa())[0] == ["query", "MKTAYIAKQR"]
    assert list(score.get_seed())[0] == ["query", "MKTAYIAKQR"]

    ssp = poet.single_site(prompt, b"MKT").wait()
    assert [type(r) for r in ssp] == [pc.PoetSSPResult] * (1 + 19 * 3)
    assert ssp[0].sequence == b"WT" and ssp[1].sequence == b"M1A" and ssp[-1].sequence == b"T3V"

    gen = poet.generate(prompt, num_samples=4, seed=9, topk=10, topp=0.9, temperature=0.7)
    assert isinstance(gen, pc.PoetGenerateFuture)
    samples = gen.wait()
    assert [s.name for s in samples] == [f"generated-sequence-{i}" for i in range(1, 5)]
    assert all(isinstance(s.sequence, bytes) and len(s.score) == 2 for s in samples)
    assert [s.sequence for s in poet.generate(prompt.prompt_id, num_samples=4, seed=9, topk=10, topp=0.9,
                                              temperature=0.7).wait()] == [s.sequence for s in samples]
    assert list(gen.stream())[0] == samples[0]

    # reload jobs by id
    assert isinstance(poet.load_poet_job(score.id), pc.PoetScoreFuture)
    assert isinstance(poet.load_poet_job(gen.id), pc.PoetGenerateFuture)
    reloaded = poet.load_prompt_job(prompt.id)
    assert reloaded.msa_id == msa.id and reloaded.prompt_id == prompt.id
    assert poet.load_msa_job(msa.id).msa_id == msa.id
    assert poet.get_prompt_job(prompt.id).prompt_id == prompt.id
    with pytest.raises(pc.InvalidJob, match="is not a MSA job"):
        poet.load_msa_job(score.id)
    with pytest.raises(pc.InvalidJob, match="is not a PoET job"):
        poet.load_poet_job(msa.id)
    with pytest.raises(pc.InvalidJob, match="is not a prompt job"):
        poet.load_prompt_job(msa.id)

    jobs = session.jobs.list()
    assert {j.job_id for j in jobs} >= {msa.id, prompt.id, score.id, gen.id}
    assert session.jobs.args(prompt.id)["root_msa"] == msa.id
    assert session.jobs.get(score.id).job_type == "/poet"


def test_upload_prompt_and_file_objects(session, tmp_path):
    path = tmp_path / "prompt.fasta"
    path.write_bytes(b">a\nMKTAYIAKQR\n<END_PROMPT>\n>b\nMRTAYIAKQK\n>c\nMKSAY\n")
    with open(path, "rb") as fh:
        prompt = session.poet.upload_prompt(fh)
    assert prompt.prompt_id == prompt.id and prompt.msa_id is None
    assert list(session.poet.get_prompt(prompt.job, prompt_index=2)) == [["b", "MRTAYIAKQK"],
                                                                         ["c", "MKSAY"]]
    again = session.poet.upload_prompt(str(path))
    assert list(again.get_prompt(1)) == [["a", "MKTAYIAKQR"]]


def test_client_side_validation_messages(session):
    poet = session.poet
    prompt = poet.upload_prompt(b"MKTAYIAKQR\n")
    msa = poet.upload_msa(MSA_FASTA)
    with pytest.raises(pc.InvalidParameterError, match="'homology_level' must be between"):
        msa.sample_prompt(homology_level=1.5)
    with pytest.raises(pc.MissingParameterError, match="but not both"):
        msa.sample_prompt(num_sequences=3, num_residues=100)
    with pytest.raises(pc.InvalidParameterError, match="'num_sequences' must be between"):
        msa.sample_prompt(num_sequences=100)
    with pytest.raises(pc.MissingParameterError, match="Must include queries for scoring!"):
        poet.score(prompt, [])
    with pytest.raises(pc.MissingParameterError, match="Must include prompt_id in request!"):
        poet.score("", [b"MKT"])
    with pytest.raises(pc.InvalidParameterError, match="'temperature' must be between"):
        poet.generate(prompt, temperature=3)
    with pytest.raises(pc.InvalidParameterError, match="'topk' must be between"):
        poet.generate(prompt, topk=25)
    with pytest.raises(pc.InvalidParameterError, match="'topp' must be between"):
        poet.generate(prompt, topp=1.5)
    with pytest.raises(pc.InvalidParameterError, match="'random_seed' must be between"):
        poet.generate(prompt, seed=2**33)
    with pytest.raises(pc.APIError) as exc:
        poet.score(prompt, [b"MKT*"])
    assert exc.value.status_code == 400 and "invalid character '*' at position 4" in exc.value.message
    assert exc.value.message.startswith("Failed to post poet score")


def test_failed_job_raises_job_failed_exception(session):
    msa = session.poet.create_msa(b"MKTAYIAKQR")  # this server has no search database
    with pytest.raises(pc.JobFailedException) as exc:
        msa.wait()
    assert "PLMSERVE_MSA_DATABASE" in exc.value.failure_message
    assert list(msa.get_seed()) == [["seed", "MKTAYIAKQR"]]


def test_timeout_cancel_and_isolation(live, session):
    live.app.state.models.put("poet", FakePoetEngine(delay=0.01))
    prompt = session.poet.upload_prompt(b"MKTAYIAKQR\n")
    fut = session.poet.score(prompt, [b"MKTAYIAKQR"] * 200)
    with pytest.raises(pc.TimeoutException, match="exceeded timeout"):
        fut.wait(timeout=0.2)
    fut.cancel()
    assert fut.cancelled()
    with pytest.raises(pc.JobFailedException, match="CANCELED"):
        fut.wait()
    bob = pc.connect(live.url, "bob", "bob-password", poll_interval=0.05)
    assert bob.jobs.list() == []
    with pytest.raises(pc.APIError) as exc:
        bob.jobs.get(fut.id)
    assert exc.value.status_code == 404
    with pytest.raises(pc.APIError) as exc:
        bob.poet.load_poet_job(fut.id)
    assert exc.value.status_code == 404


def test_job_interrupted_by_shutdown_reruns_after_restart(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=["k1"])
    app = create_app(settings)
    app.state.models.put("poet", FakePoetEngine(delay=0.05))
    with LiveServer(app) as srv:
        s = pc.connect(srv.url, api_key="k1", poll_interval=0.05)
        prompt = s.poet.upload_prompt(b"MKTAYIAKQR\n")
        fut = s.poet.score(prompt, [b"MKTAYIAKQR"] * 100)
        deadline = time.monotonic() + 30
        while s.jobs.get(fut.id).progress_counter in (None, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        job_id = fut.id
    # the server stopped in the middle of the job: it is queued again, not lost and not failed
    store = JobStore(settings.resolved_database_url())
    assert store.get_job(job_id).status == "PENDING"
    store.close()
    app2 = create_app(settings)
    app2.state.models.put("poet", FakePoetEngine())
    with LiveServer(app2) as srv2:
        s2 = pc.connect(srv2.url, api_key="k1", poll_interval=0.05)
        results = s2.poet.load_poet_job(job_id).wait(timeout=60)
        assert len(results) == 100 and s2.jobs.get(job_id).status == pc.JobStatus.SUCCESS
