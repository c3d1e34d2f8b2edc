"""Scaling of PoET scoring jobs on a local Ray cluster: 1 worker vs 2 workers (one CPU each).

    python bench/ray_scale.py [--jobs 16] [--repeats 3] [--variants 24] [--replicates 3] [--prompt-size 5]
                              [--database-url postgresql+psycopg://...]

A real Ray cluster is started on 127.0.0.1: a head (``ray start --head --num-cpus 1``) and a second
node (``ray start --address ... --num-cpus 1``). ``--jobs`` PoET ``/poet`` score jobs -- the fixture
checkpoint, a prompt of real BLAT_ECOLX homologs (``--replicates`` x ``--prompt-size`` sequences), the
first ``--variants`` Jacquier variants -- go through the Ray executor (job store, dispatcher actor, one
Ray task per job) in each timed phase:

- **1 worker**: the other node's only CPU is held by an idle task pinned to it (it sleeps), so every
  job runs on one node. The node left working alternates between repetitions (head, second node, ...);
- **2 workers**: both nodes take jobs.

The two phases are interleaved ``--repeats`` times (1, 2, 1, 2, ...), so that both see the same
background load of a shared machine; each phase starts with warm worker processes (models loaded,
prompt caches published: one untimed warm-up job per worker). A phase's time runs from the first
job's creation to the last job's ``end_date`` in the store (not to a polling loop noticing it).

Prints one JSON line: ``jobs_per_s_1`` and ``jobs_per_s_2`` (medians over the repetitions),
``scaling_efficiency`` = the median over the repetitions of jobs_per_s_2 / (2 x jobs_per_s_1) of the
same repetition (1.0 = perfect), the per-repetition figures, the 1-minute load average and the CPU
the rest of the machine used during each phase (``other_cpu_cores``: busy cores minus what this
cluster and this process used; on a quiet machine ~0), and ``cluster_cpu_s_per_job``: the CPU
seconds the cluster's processes (workers, dispatcher, raylets, GCS, agents) and this driver spent per
job -- equal in both phases when running two workers adds no overhead. Every process the benchmark starts is ended
by pid afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def _busy(ct) -> float:
    return ct.user + ct.nice + ct.system + getattr(ct, "irq", 0.0) + getattr(ct, "softirq", 0.0)


def _tree_cpu(roots) -> float:
    """CPU seconds used so far by the processes ``roots`` and their descendants."""
    import psutil

    total, seen = 0.0, set()
    for root in roots:
        try:
            procs = [psutil.Process(root)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=16, help="score jobs per timed phase")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved (1 worker, 2 workers) repetitions")
    ap.add_argument("--variants", type=int, default=24, help="variants per job")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--prompt-size", type=int, default=5)
    ap.add_argument("--database-url", default=None, help="job store (default: SQLite in a temporary folder)")
    args = ap.parse_args()

    import numpy as np
    import psutil

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private loopback cluster (as tests.cluster.support)

    from plmserve.bio.msa import read_msa
    from plmserve.jobs import poet as pj
    from plmserve.jobs.ray_executor import RayExecutor
    from plmserve.jobs.store import SUCCESS, JobStore
    from plmserve.settings import Settings
    from tests.cluster.handlers import hold_cpu
    from tests.cluster.support import LocalRayCluster
    from tests.datafiles import shared_path

    blat = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    rng = np.random.default_rng(0)
    reps = [[(f"p{j}", blat.sequences[i]) for j, i in enumerate(
        rng.choice(np.arange(1, len(blat)), args.prompt_size, replace=False))] for _ in range(args.replicates)]
    with shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv").open() as fh:
        variants = [[f"v{i}", r["mutated_sequence"]] for i, r in enumerate(list(csv.DictReader(fh))[: args.variants])]

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d, LocalRayCluster(head_cpus=1) as cluster:
        cluster.add_node(num_cpus=1)
        model_dir = Path(d) / "models"
        model_dir.mkdir()
        (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
        settings = Settings(data_dir=d, executor="ray", ray_address=cluster.address, model_dir=model_dir,
                            device="cpu", dtype="float32", database_url=args.database_url)
        store = JobStore(settings.resolved_database_url())
        prompt = store.create_job(pj.JOB_PROMPT, "bench", {}, status=SUCCESS,
                                  artifacts={pj.ART_PROMPT: pj.prompt_json(reps, 0)})
        ex = RayExecutor(store, settings)
        ex.start()

        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted((n for n in ray.nodes() if n["Alive"]), key=lambda n: not n.get("Resources", {}).get(
            "node:__internal_head__"))
        node_ids = [n["NodeID"] for n in nodes]  # head first

        def used(job_ids) -> tuple[int, int]:
            """Distinct nodes and worker processes that ran these jobs (the dispatcher's record)."""
            ids = set(job_ids)
            started = [d for j, w, d in ray.get(ex.dispatcher.history.remote()) if j in ids and w == "started"]
            return len({d.split(" on node ")[1] for d in started}), len({d.split(" ")[1] for d in started})

        def run(n: int) -> tuple[float, list[str]]:
            """Submit n jobs; seconds from the first creation to the last end_date in the store."""
            t0 = time.time()
            jobs = [store.create_job(pj.JOB_SCORE, "bench", {"prompt_id": prompt.job_id},
                                     artifacts={pj.ART_INPUT: json.dumps(variants).encode()}) for _ in range(n)]
            for job in jobs:
                ex.submit(job.job_id)
            deadline = time.monotonic() + 3600
            records = []
            for job in jobs:
                while (rec := store.get_job(job.job_id)).status not in ("SUCCESS", "FAILURE", "CANCELED"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("jobs did not finish")
                    time.sleep(0.05)
                if rec.status != SUCCESS:
                    raise RuntimeError(f"job {rec.job_id} ended {rec.status}: {rec.failure_message}")
                records.append(rec)
            end = max(r.end_date for r in records)
            end_ts = end.timestamp() if isinstance(end, datetime) else float(end)
            return end_ts - t0, [j.job_id for j in jobs]

        def phase(workers: int, working_node: int) -> dict:
            held, release = None, Path(d) / f"release-{time.monotonic_ns()}"
            if workers == 1:  # keep the other node busy with an idle task that holds its CPU
                started = Path(d) / f"held-{time.monotonic_ns()}"
                held = ray.remote(hold_cpu).options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id=node_ids[1 - working_node], soft=False)).remote(str(started), str(release), 3600.0)
                while not started.exists():
                    time.sleep(0.05)
            try:
                run(workers)  # warm-up, untimed: one job per worker
                roots = [p.pid for p in cluster.procs] + [os.getpid()]
                c0, mine0, t0 = _busy(psutil.cpu_times()), _tree_cpu(roots), time.monotonic()
                seconds, ids = run(args.jobs)
                wall = time.monotonic() - t0
                c1, mine1 = _busy(psutil.cpu_times()), _tree_cpu(roots)
            finally:
                release.write_text("go")
                if held is not None:
                    ray.get(held)
            return {"workers": workers, "seconds": round(seconds, 3), "jobs_per_s": args.jobs / seconds,
                    "nodes_and_workers": used(ids), "loadavg_1min": round(os.getloadavg()[0], 2),
                    "other_cpu_cores": round(max(0.0, (c1 - c0) - (mine1 - mine0)) / wall, 2),
                    "cluster_cpu_s_per_job": round((mine1 - mine0) / args.jobs, 3)}

        run(2)  # first use: worker processes started, model loaded, prompt caches published
        reps_out = []
        for r in range(args.repeats):
            one = phase(1, working_node=r % 2)
            two = phase(2, working_node=0)
            reps_out.append({"jobs_per_s_1": round(one["jobs_per_s"], 4), "jobs_per_s_2": round(two["jobs_per_s"], 4),
                             "scaling_efficiency": round(two["jobs_per_s"] / (2 * one["jobs_per_s"]), 3),
                             "phase_1": one, "phase_2": two})
            for p in (one, two):
                p["jobs_per_s"] = round(p["jobs_per_s"], 4)
        cache = ray.get(ex.dispatcher.prompt_cache_stats.remote())
        ex.shutdown_dispatcher()
        ex.stop()
        store.close()
    eff = [r["scaling_efficiency"] for r in reps_out]
    print(json.dumps({
        "jobs_per_s_1": round(statistics.median(r["jobs_per_s_1"] for r in reps_out), 4),
        "jobs_per_s_2": round(statistics.median(r["jobs_per_s_2"] for r in reps_out), 4),
        "scaling_efficiency": round(statistics.median(eff), 3),
        "scaling_efficiency_each": eff,
        "jobs": args.jobs, "repeats": args.repeats, "variants_per_job": args.variants,
        "replicates": args.replicates, "prompt_size": args.prompt_size,
        "store": "sqlite" if settings.resolved_database_url().startswith("sqlite") else "postgresql",
        "prompt_cache": {k: cache[k] for k in ("hit", "miss", "publish")},
        "repetitions": reps_out,
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
