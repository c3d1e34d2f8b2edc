"""End-to-end PoET workflow on real data, through HTTP with the SDK (issue 5, item 6).

A real uvicorn server with the PoET fixture checkpoint (``tests/data/fixtures/poet/model.ckpt``,
found as ``poet.ckpt`` in the model directory) and a local search database of 500 BLAT homologs
planted among the decoy proteome:

create_msa(BLAT wild type) -> sample_prompt(num_ensemble_prompts=3) -> score the first 24
Jacquier variants (3 scores each) -> single_site over the wild type -> generate 5 with a seed
(repeatable) -> restart the server -> read every result again. Scores are checked against the
engine called directly with the same prompts.

The SQLite flow scans every position of the wild type (1 + 19 x 286 rows). The PostgreSQL flow
runs the same steps with the single-site scan limited to the first 30 residues (submitted with
``parent_id`` = the score job), to keep CI time down: the job and result code paths are the same.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.bio.msa import read_msa
from plmserve.settings import Settings
from tests.client.support import LiveServer, add_users, poet_fixture_engine
from tests.conftest import shared_path

pytestmark = pytest.mark.slow
N_PLANTED = 500
PW = {"alice": "alice-password", "bob": "bob-password"}


@pytest.fixture(scope="module")
def blat():
    return read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))


@pytest.fixture(scope="module")
def search_db(blat, tmp_path_factory):
    """FASTA: 500 ungapped BLAT homologs (rows of the ColabFold a3m) + the decoy proteome."""
    path = tmp_path_factory.mktemp("db") / "blat_planted_plus_decoys.fasta"
    rows = np.random.default_rng(20261121).choice(np.arange(1, len(blat)), N_PLANTED, replace=False)
    with path.open("w") as fh:
        for i in sorted(int(i) for i in rows):
            fh.write(f">planted_{i}\n{blat.sequences[i]}\n")
        fh.write(shared_path("data", "decoy_proteome_938293.faa").read_text())
    return path, {f"planted_{int(i)}" for i in rows}


@pytest.fixture(scope="module")
def jacquier():
    with shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:24]
    return [(r["mutant"], r["mutated_sequence"]) for r in rows]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The CI machine has 2 cores; one intra-op thread avoids oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_app(data_dir: Path, database_url: str | None, search_db: Path):
    model_dir = data_dir / "models"
    model_dir.mkdir(exist_ok=True)
    link = model_dir / "poet.ckpt"
    if not link.exists():
        link.symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    settings = Settings(data_dir=data_dir, database_url=database_url, api_keys=["admin-key"], msa_database=search_db,
                        model_dir=model_dir, device="cpu", dtype="float32", workers=1)
    return create_app(settings), settings


reference_engine = poet_fixture_engine  # the engine called directly (no server, no jobs), for the expected numbers


def run_flow(tmp_path, database_url, search_db, blat, jacquier, *, single_site_len=None):
    db_path, planted = search_db
    app, settings = make_app(tmp_path, database_url, db_path)
    add_users(settings.resolved_database_url(), PW)
    wt = blat.query
    scan = wt if single_site_len is None else wt[:single_site_len]
    seen = {}
    with LiveServer(app) as srv:
        s = pc.connect(srv.url, "alice", PW["alice"], poll_interval=0.2)
        poet = s.poet
        msa = poet.create_msa(wt.encode())
        # the prompt is requested while the search may still run: it waits for the MSA job
        prompt = msa.sample_prompt(num_sequences=5, num_ensemble_prompts=3, random_seed=42)
        msa_rows = list(msa.wait(timeout=600))
        assert msa_rows[0] == ["seed", wt]
        hits = {name for name, _ in msa_rows[1:]}
        assert hits <= planted and len(hits) >= 0.95 * N_PLANTED  # homologs found, no decoy
        assert all(len(row) == len(wt) for _, row in msa_rows)
        prompt_rows = list(prompt.wait(timeout=600))
        assert prompt_rows.count(["<END_PROMPT>"]) == 2
        replicates = [[seq for _, seq in prompt.get_prompt(k)] for k in (1, 2, 3)]
        assert all(len(r) == 5 and all(q.isalpha() and q.isupper() for q in r) for r in replicates)

        score = poet.score(prompt, [seq.encode() for _, seq in jacquier])
        if single_site_len is None:
            ssp = poet.single_site(prompt, scan.encode())
        else:
            score.wait_until_done(timeout=600)
            job = s.post("v1/poet/single_site", params={"variant": scan, "parent_id": score.id}).json()
            ssp = pc.PoetSingleSiteFuture(s, pc.Job(**job))
        gen_a = poet.generate(prompt, num_samples=5, seed=7, max_length=300)
        gen_b = poet.generate(prompt, num_samples=5, seed=7, max_length=300)

        scores = score.wait(timeout=900)
        assert [r.name for r in scores] == [f"sequence-{i:02d}" for i in range(1, 25)]
        assert [r.sequence.decode() for r in scores] == [seq for _, seq in jacquier]
        got = np.array([r.score for r in scores])  # [24, 3]
        assert got.shape == (24, 3) and np.all(np.isfinite(got)) and np.all(got < 0)
        expected = reference_engine().score(replicates, [seq for _, seq in jacquier])  # [3, 24]
        np.testing.assert_allclose(got, expected.T, rtol=1e-5, atol=1e-4)
        assert s.jobs.get(score.id).progress_counter == 100

        ssp_rows = ssp.wait(timeout=1500)
        assert len(ssp_rows) == 1 + 19 * len(scan)
        assert ssp_rows[0].sequence == b"WT"
        assert ssp_rows[1].sequence == b"M1A" and ssp_rows[-1].sequence == f"{scan[-1]}{len(scan)}V".encode()
        by_code = {r.sequence.decode(): r.score for r in ssp_rows}
        wt_score = reference_engine().score(replicates, [scan] if single_site_len else [wt])[:, 0]
        np.testing.assert_allclose(by_code["WT"], wt_score, rtol=1e-5, atol=1e-4)
        if single_site_len is None:  # the scan's mutant rows equal the score job's numbers
            for (code, _), row in zip(jacquier, got):
                np.testing.assert_allclose(by_code[code], row, rtol=1e-4, atol=1e-3)

        samples_a, samples_b = gen_a.wait(timeout=900), gen_b.wait(timeout=900)
        assert [r.name for r in samples_a] == [f"generated-sequence-{i}" for i in range(1, 6)]
        assert [r.sequence for r in samples_a] == [r.sequence for r in samples_b]  # seeded: repeatable
        assert all(len(r.score) == 3 and 0 < len(r.sequence) <= 300 for r in samples_a)

        # another user sees none of it
        bob = pc.connect(srv.url, "bob", PW["bob"])
        assert bob.jobs.list() == []
        for jid in (msa.id, prompt.id, score.id, ssp.id, gen_a.id):
            with pytest.raises(pc.APIError) as exc:
                bob.jobs.get(jid)
            assert exc.value.status_code == 404
        seen = {
            "msa": msa_rows, "prompt": prompt_rows, "scores": scores, "ssp": ssp_rows, "gen": samples_a,
            "ids": (msa.id, prompt.id, score.id, ssp.id, gen_a.id),
        }
        s.close()
        bob.close()

    # restart: a new app (new model manager, new job service) on the same database
    app2, _ = make_app(tmp_path, database_url, db_path)
    with LiveServer(app2) as srv2:
        s2 = pc.connect(srv2.url, "alice", PW["alice"])
        msa_id, prompt_id, score_id, ssp_id, gen_id = seen["ids"]
        assert list(s2.poet.load_msa_job(msa_id).get()) == seen["msa"]
        reloaded_prompt = s2.poet.load_prompt_job(prompt_id)
        assert reloaded_prompt.msa_id == msa_id
        assert list(reloaded_prompt.get()) == seen["prompt"]
        assert s2.poet.load_poet_job(score_id).get() == seen["scores"]
        assert s2.poet.load_poet_job(ssp_id).get() == seen["ssp"]
        assert s2.poet.load_poet_job(gen_id).get() == seen["gen"]
        assert list(s2.poet.load_poet_job(score_id).get_seed()) == [["seed", wt]]
        statuses = {j.job_id: j.status for j in s2.jobs.list()}
        assert all(statuses[j] == pc.JobStatus.SUCCESS for j in seen["ids"])
        s2.close()


def test_workflow_sqlite_with_restart(tmp_path, search_db, blat, jacquier):
    run_flow(tmp_path, None, search_db, blat, jacquier)
    assert (tmp_path / "plmserve.db").is_file()


@pytest.mark.postgres
def test_workflow_postgres_with_restart(tmp_path, postgres_url, search_db, blat, jacquier):
    run_flow(tmp_path, postgres_url, search_db, blat, jacquier, single_site_len=30)
    assert not (tmp_path / "plmserve.db").exists()
