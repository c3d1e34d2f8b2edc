"""The BLAT PoET workflow through HTTP with ``plmserve serve --executor ray`` on a real local Ray
cluster (head + second node, one CPU each) and PostgreSQL, with the PoET fixture checkpoint:

create_msa(BLAT wild type, searched in a small planted database) -> sample_prompt (3 replicates)
-> score 24 Jacquier variants (checked against the engine called directly) -> a single-site scan
whose worker process is killed (by pid) mid-job: it is retried on a worker and its rows equal the
in-process executor's -> a scan running while the API process is SIGKILLed and restarted: it
finishes in its first attempt (the restarted API re-attaches), and a job the dead API had stored
but not handed over is run too. Every job ends SUCCESS with exactly one result.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import numpy as np
import pytest
from sqlalchemy import func, select

import plmserve.client as pc
from plmserve.bio.msa import read_msa
from plmserve.jobs import poet as pj
from plmserve.jobs.models import JobArtifact
from plmserve.jobs.ray_executor import dispatcher_name
from plmserve.jobs.store import RUNNING, SUCCESS, JobStore
from plmserve.settings import Settings
from tests.cluster.support import ApiProcess, run_in_process
from tests.conftest import shared_path

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]
N_PLANTED = 150
SCAN_KILL = 100  # residues of the scan whose worker is killed (1 + 19 x 100 rows)
SCAN_API = SCAN_KILL  # the scan running while the API process is killed (same job again)
KEY = "cluster-test-key"


@pytest.fixture(scope="module")
def blat():
    return read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))


@pytest.fixture(scope="module")
def jacquier():
    with shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:24]
    return [(r["mutant"], r["mutated_sequence"]) for r in rows]


@pytest.fixture(scope="module")
def search_db(blat, tmp_path_factory):
    """FASTA: 150 ungapped BLAT homologs + the first 400 decoy proteins."""
    path = tmp_path_factory.mktemp("db") / "blat_small.fasta"
    rows = np.random.default_rng(11).choice(np.arange(1, len(blat)), N_PLANTED, replace=False)
    decoys = shared_path("data", "decoy_proteome_938293.faa").read_text().split(">")[1:401]
    with path.open("w") as fh:
        for i in sorted(int(i) for i in rows):
            fh.write(f">planted_{i}\n{blat.sequences[i]}\n")
        fh.write("".join(">" + d for d in decoys))
    return path, {f"planted_{int(i)}" for i in rows}


def _settings_env(tmp_path, postgres_url, search_db):
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    env = {"PLMSERVE_DATABASE_URL": postgres_url, "PLMSERVE_DATA_DIR": str(tmp_path / "data"),
           "PLMSERVE_MODEL_DIR": str(model_dir), "PLMSERVE_MSA_DATABASE": str(search_db),
           "PLMSERVE_DEVICE": "cpu", "PLMSERVE_DTYPE": "float32", "PLMSERVE_API_KEYS": json.dumps([KEY])}
    settings = Settings(database_url=postgres_url, data_dir=tmp_path / "data", model_dir=model_dir,
                        msa_database=search_db, device="cpu", dtype="float32")
    return env, settings


def _wait_worker_pid(dispatcher, store, job_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        import ray

        pid = ray.get(dispatcher.running.remote()).get(job_id, {}).get("pid")
        job = store.get_job(job_id)
        if pid and job.status == RUNNING and (job.progress_counter or 0) >= 5:
            return pid
        assert job.status in ("PENDING", RUNNING), job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran: {store.get_job(job_id)}")


def _results(store, job_id):
    with store._session() as s:
        n = s.scalar(select(func.count()).select_from(JobArtifact).where(JobArtifact.job_id == job_id,
                                                                         JobArtifact.name == pj.ART_RESULT))
    assert n == 1
    return json.loads(store.get_artifact(job_id, pj.ART_RESULT))


def _in_process(store, settings, job_type, args, prerequisite):
    """The same job run by the default in-process executor, for the reference rows."""
    return _results(store, run_in_process(store, settings, job_type, args, prerequisite))


def _assert_same_rows(got, expected):
    assert [r["sequence"] for r in got] == [r["sequence"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], rtol=1e-5, atol=1e-5)


def test_blat_workflow_on_ray_survives_a_killed_worker_and_a_killed_api(
        tmp_path, postgres_url, ray_cluster, ray_driver, blat, jacquier, search_db):
    import ray

    from plmserve.models.poet.engine import PoET

    db_path, planted = search_db
    env, settings = _settings_env(tmp_path, postgres_url, db_path)
    args = ["--executor", "ray", "--ray-address", ray_cluster.address]
    api = ApiProcess(args, env, tmp_path / "api.log")
    store = JobStore(postgres_url)
    name = dispatcher_name(postgres_url)
    wt = blat.query
    try:
        api.start()
        s = pc.connect(api.url, api_key=KEY, poll_interval=0.2)
        msa = s.poet.create_msa(wt.encode())
        prompt = msa.sample_prompt(num_sequences=5, num_ensemble_prompts=3, random_seed=42)
        score = s.poet.score(prompt, [seq.encode() for _, seq in jacquier])
        msa_rows = list(msa.wait(timeout=600))
        assert msa_rows[0] == ["seed", wt]
        hits = {n for n, _ in msa_rows[1:]}
        assert hits <= planted and len(hits) >= 0.9 * N_PLANTED
        list(prompt.wait(timeout=600))
        replicates = [[seq for _, seq in prompt.get_prompt(k)] for k in (1, 2, 3)]
        scores = score.wait(timeout=600)
        got = np.array([r.score for r in scores])  # [24, 3]
        engine = PoET.from_checkpoint(shared_path("fixtures", "poet", "model.ckpt"), device="cpu", dtype="float32")
        np.testing.assert_allclose(got, engine.score(replicates, [q for _, q in jacquier]).T, rtol=1e-5, atol=1e-4)
        dispatcher = ray.get_actor(name, namespace="plmserve")

        # 1. the worker process running a scan is killed (SIGKILL, by pid): the job is retried
        job = s.post("v1/poet/single_site", params={"variant": wt[:SCAN_KILL], "prompt_id": prompt.id}).json()
        pid = _wait_worker_pid(dispatcher, store, job["job_id"])
        os.kill(pid, signal.SIGKILL)
        rows = pc.PoetSingleSiteFuture(s, pc.Job(**job)).wait(timeout=900)
        assert len(rows) == 1 + 19 * SCAN_KILL
        done = store.get_job(job["job_id"])
        assert done.status == SUCCESS and done.attempts == 2
        events = [(w, d) for j, w, d in ray.get(dispatcher.history.remote()) if j == job["job_id"]]
        assert [w for w, _ in events].count("retry") == 1 and f"pid {pid} " in events[1][1]
        reference = _in_process(store, settings, pj.JOB_SINGLE_SITE, store.get_job(job["job_id"]).args, prompt.id)
        _assert_same_rows(_results(store, job["job_id"]), reference)

        # 2. the API process is killed while a scan runs, then restarted
        job2 = s.post("v1/poet/single_site", params={"variant": wt[:SCAN_API], "prompt_id": prompt.id}).json()
        _wait_worker_pid(dispatcher, store, job2["job_id"])
        s.close()
        api.kill()
        # a job the dead API had stored but not yet handed to the dispatcher
        orphan = store.create_job(pj.JOB_SCORE, store.get_job(score.id).owner,
                                  dict(store.get_job(score.id).args), parent_id=prompt.id,
                                  artifacts={pj.ART_INPUT: store.get_artifact(score.id, pj.ART_INPUT)})
        api = ApiProcess(args, env, tmp_path / "api.log", port=api.port)
        api.start()
        s = pc.connect(api.url, api_key=KEY, poll_interval=0.2)
        rows2 = pc.PoetSingleSiteFuture(s, s.jobs.get(job2["job_id"])).wait(timeout=900)
        assert len(rows2) == 1 + 19 * SCAN_API
        done2 = store.get_job(job2["job_id"])
        assert done2.status == SUCCESS and done2.attempts == 1  # not re-run: it kept running on the cluster
        _assert_same_rows(_results(store, job2["job_id"]), reference)
        orphan_rows = pc.PoetScoreFuture(s, s.jobs.get(orphan.job_id)).wait(timeout=600)
        np.testing.assert_allclose([r.score for r in orphan_rows], got, rtol=1e-6, atol=1e-6)
        assert store.get_job(orphan.job_id).attempts == 1

        # nothing lost, nothing duplicated
        for j in s.jobs.list():
            assert j.status == pc.JobStatus.SUCCESS, j
        for jid in (score.id, job["job_id"], job2["job_id"], orphan.job_id):
            _results(store, jid)  # exactly one result each
        s.close()
    finally:
        api.stop()
        try:
            ray.kill(ray.get_actor(name, namespace="plmserve"), no_restart=True)
        except ValueError:
            pass
        store.close()
