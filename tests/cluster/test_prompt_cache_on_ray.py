"""PoET prompt caches through Ray's object store, on a real local Ray cluster (head + second node,
one CPU each) with a PostgreSQL job store and the PoET fixture checkpoint.

Job A scores variants under a 2-replicate BLAT prompt: its worker encodes the 4 prompt caches
(2 replicates x 2 directions) and publishes them. Then A's node is kept busy (a task pinned to it
holds its only CPU), so job B -- a single-site scan under the same prompt -- runs in a worker
process on the *other* node: the dispatcher's record shows B's 4 prompt encodings were read from
the object store (hits, no miss), and both jobs' scores equal the in-process executor's. Then the
worker process that computed the encodings is killed: job C still reads them (the dispatcher owns
the objects), with A's scores.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from plmserve.bio.msa import read_msa
from plmserve.jobs import poet as pj
from plmserve.jobs.ray_executor import RayExecutor
from plmserve.jobs.store import SUCCESS, JobStore
from plmserve.settings import Settings
from tests.cluster.handlers import hold_cpu
from tests.cluster.support import run_in_process
from tests.conftest import shared_path

pytestmark = [pytest.mark.ray, pytest.mark.postgres]


def _started(ex, job_id):
    import ray

    for j, what, detail in ray.get(ex.dispatcher.history.remote()):
        if j == job_id and what == "started":
            _, pid, _, _, node = detail.split(" ")  # "pid <pid> on node <node id>"
            return int(pid), node
    raise AssertionError(f"no start recorded for {job_id}")


def _run(store, ex, job_type, args, prompt_id, artifacts=None):
    job = store.create_job(job_type, "me", args, prerequisite_job_id=prompt_id, artifacts=artifacts)
    ex.submit(job.job_id)
    deadline = time.monotonic() + 300
    while store.status_of(job.job_id) != SUCCESS:
        assert store.status_of(job.job_id) in ("PENDING", "RUNNING"), store.get_job(job.job_id)
        assert time.monotonic() < deadline, store.get_job(job.job_id)
        time.sleep(0.1)
    return job.job_id, json.loads(store.get_artifact(job.job_id, pj.ART_RESULT))


def _in_process(store, settings, job_type, args, prompt_id, artifacts=None):
    job_id = run_in_process(store, settings, job_type, args, prompt_id, artifacts, timeout=300)
    return json.loads(store.get_artifact(job_id, pj.ART_RESULT))


def test_second_job_on_another_node_reads_the_prompt_from_the_object_store(
        tmp_path, postgres_url, ray_cluster, ray_driver):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    blat = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    reps = [[(f"r{k}s{i}", blat.sequences[1 + 7 * i + k]) for i in range(3)] for k in range(2)]
    variants = [[f"v{i}", blat.query[:i] + "A" + blat.query[i + 1:]] for i in range(40, 46)]
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    settings = Settings(data_dir=tmp_path, database_url=postgres_url, executor="ray", ray_address=ray_cluster.address,
                        model_dir=model_dir, device="cpu", dtype="float32")
    store = JobStore(postgres_url)
    prompt = store.create_job(pj.JOB_PROMPT, "me", {}, status=SUCCESS,
                              artifacts={pj.ART_PROMPT: pj.prompt_json(reps, 0)})
    ex = RayExecutor(store, settings)
    ex.start()
    release = tmp_path / "release"
    held = None
    try:
        score_args = {"prompt_id": prompt.job_id}
        inputs = {pj.ART_INPUT: json.dumps(variants).encode()}
        a, rows_a = _run(store, ex, pj.JOB_SCORE, score_args, prompt.job_id, inputs)
        pid_a, node_a = _started(ex, a)
        events = ray.get(ex.dispatcher.prompt_cache_events.remote())
        mine = [(what, pid) for j, what, _, pid, _ in events if j == a]
        assert sorted(mine) == sorted([("miss", pid_a)] * 4 + [("publish", pid_a)] * 4), events

        # hold node A's only CPU: job B can only run on the other node
        started = tmp_path / "held"
        held = ray.remote(hold_cpu).options(
            num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_a, soft=False)
        ).remote(str(started), str(release))
        deadline = time.monotonic() + 120
        while not started.exists():
            assert time.monotonic() < deadline, "the CPU-holding task did not start"
            time.sleep(0.05)
        scan_args = {"prompt_id": prompt.job_id, "variant": blat.query[:12]}
        b, rows_b = _run(store, ex, pj.JOB_SINGLE_SITE, scan_args, prompt.job_id)
        pid_b, node_b = _started(ex, b)
        assert node_b != node_a and pid_b != pid_a
        events = ray.get(ex.dispatcher.prompt_cache_events.remote())
        mine_b = [(what, pid, node) for j, what, _, pid, node in events if j == b]
        assert mine_b == [("hit", pid_b, node_b)] * 4, events  # all 4 encodings read, none computed
        keys_a = {k for j, what, k, _, _ in events if j == a and what == "publish"}
        assert {k for j, _, k, _, _ in events if j == b} == keys_a
        stats = ray.get(ex.dispatcher.prompt_cache_stats.remote())
        assert stats["entries"] == 4 and stats["bytes"] > 0 and stats["hit"] >= 4

        # the same numbers as the in-process executor (which encodes the prompt itself)
        ref_a = _in_process(store, settings, pj.JOB_SCORE, score_args, prompt.job_id, inputs)
        ref_b = _in_process(store, settings, pj.JOB_SINGLE_SITE, scan_args, prompt.job_id)
        for got, ref in ((rows_a, ref_a), (rows_b, ref_b)):
            assert [r["sequence"] for r in got] == [r["sequence"] for r in ref]
            np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in ref], rtol=1e-6, atol=1e-6)
        assert len(rows_b) == 1 + 19 * 12

        # the worker that computed and published the encodings dies: they are the dispatcher's
        # objects, so a later job still reads them
        release.write_text("go")
        ray.get(held, timeout=60)
        held = None
        os.kill(pid_a, signal.SIGKILL)
        c, rows_c = _run(store, ex, pj.JOB_SCORE, score_args, prompt.job_id, inputs)
        pid_c, _ = _started(ex, c)
        assert pid_c != pid_a
        events = ray.get(ex.dispatcher.prompt_cache_events.remote())
        assert [what for j, what, _, _, _ in events if j == c] == ["hit"] * 4, events
        np.testing.assert_allclose([r["score"] for r in rows_c], [r["score"] for r in ref_a], rtol=1e-6, atol=1e-6)
    finally:
        release.write_text("go")
        if held is not None:
            ray.get(held, timeout=60)
        ex.shutdown_dispatcher()
        store.close()
