"""Scaling of PoET scoring jobs on a local Ray cluster: 1 worker vs 2 workers (one CPU each).

    python bench/ray_scale.py [--jobs 12] [--variants 24] [--replicates 3] [--prompt-size 5]

A real Ray cluster is started on 127.0.0.1 (``ray start --head --num-cpus 1``, measured alone,
then ``ray start --address ... --num-cpus 1`` joins and both are measured), and ``--jobs`` PoET
``/poet`` score jobs -- the fixture checkpoint, a prompt of real BLAT_ECOLX homologs, the first
Jacquier variants -- go through the Ray executor (job store, dispatcher actor, one Ray task per job)
each time. Worker processes are warmed up (model loaded) before each timed phase. Prints one JSON
line: ``jobs_per_s_1``, ``jobs_per_s_2``, ``scaling_efficiency`` = jobs_per_s_2 / (2 x jobs_per_s_1)
(1.0 = perfect), plus the 1-minute load average before and after (the machine may be shared).
Every process the benchmark starts is ended by pid afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=12, help="score jobs per timed phase")
    ap.add_argument("--variants", type=int, default=24, help="variants per job")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--prompt-size", type=int, default=5)
    args = ap.parse_args()

    import numpy as np

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a private loopback cluster (as tests.cluster.support)

    from plmserve.bio.msa import read_msa
    from plmserve.jobs import poet as pj
    from plmserve.jobs.ray_executor import RayExecutor
    from plmserve.jobs.store import SUCCESS, JobStore
    from plmserve.settings import Settings
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
        model_dir = Path(d) / "models"
        model_dir.mkdir()
        (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
        settings = Settings(data_dir=d, executor="ray", ray_address=cluster.address, model_dir=model_dir,
                            device="cpu", dtype="float32")
        store = JobStore(settings.resolved_database_url())
        prompt = store.create_job(pj.JOB_PROMPT, "bench", {}, status=SUCCESS,
                                  artifacts={pj.ART_PROMPT: pj.prompt_json(reps, 0)})
        ex = RayExecutor(store, settings)
        ex.start()

        import ray

        def nodes_of(job_ids) -> int:
            """Distinct nodes (and worker processes) that ran these jobs (the dispatcher's record)."""
            ids = set(job_ids)
            started = [d for j, w, d in ray.get(ex.dispatcher.history.remote()) if j in ids and w == "started"]
            return len({d.split(" on node ")[1] for d in started}), len({d.split(" ")[1] for d in started})

        last: list[str] = []

        def run(n: int) -> float:
            t = time.perf_counter()
            jobs = [store.create_job(pj.JOB_SCORE, "bench", {"prompt_id": prompt.job_id},
                                     artifacts={pj.ART_INPUT: json.dumps(variants).encode()}) for _ in range(n)]
            for job in jobs:
                ex.submit(job.job_id)
            last[:] = [j.job_id for j in jobs]
            if not ex.wait_idle(3600):
                raise RuntimeError("jobs did not finish")
            elapsed = time.perf_counter() - t
            bad = [store.get_job(j.job_id) for j in jobs if store.status_of(j.job_id) != SUCCESS]
            if bad:
                raise RuntimeError(f"{len(bad)} job(s) did not succeed: {bad[0].failure_message}")
            return elapsed

        run(2)  # warm-up: worker process started, model loaded
        t1 = run(args.jobs)
        used1 = nodes_of(last)
        cluster.add_node(num_cpus=1)
        run(4)  # warm-up of the second node's worker
        t2 = run(args.jobs)
        used2 = nodes_of(last)
        ex.shutdown_dispatcher()
        ex.stop()
        store.close()
    jps1, jps2 = args.jobs / t1, args.jobs / t2
    print(json.dumps({
        "jobs_per_s_1": round(jps1, 4), "jobs_per_s_2": round(jps2, 4),
        "scaling_efficiency": round(jps2 / (2 * jps1), 3),
        "jobs": args.jobs, "variants_per_job": args.variants, "replicates": args.replicates,
        "seconds_1": round(t1, 2), "seconds_2": round(t2, 2),
        "nodes_and_workers_1": used1, "nodes_and_workers_2": used2,
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
