"""Overhead of the job service: PoET scoring through HTTP + job store + SDK vs the engine called
directly, in the same run, with the PoET fixture checkpoint (tiny random model).

    python bench/jobs_overhead.py [--variants 24] [--replicates 3] [--repeats 3]

Prints one JSON line: seconds per path (best of ``repeats``) and their ratio. Both paths score
the same variants (the first Jacquier BLAT_ECOLX variants) under the same prompt replicates.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", type=int, default=24)
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--prompt-size", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import plmserve.client as pc
    from plmserve.api.app import create_app
    from plmserve.bio.msa import read_msa
    from plmserve.models.poet.engine import PoET
    from plmserve.settings import Settings
    from tests.client.support import LiveServer
    from tests.conftest import shared_path

    blat = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    rng = np.random.default_rng(0)
    reps = [[blat.sequences[i] for i in rng.choice(np.arange(1, len(blat)), args.prompt_size, replace=False)]
            for _ in range(args.replicates)]
    with shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv").open() as fh:
        variants = [r["mutated_sequence"] for r in list(csv.DictReader(fh))[: args.variants]]
    engine = PoET.from_checkpoint(shared_path("fixtures", "poet", "model.ckpt"), device="cpu", dtype="float32")

    direct = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        expected = engine.score(reps, variants)
        direct.append(time.perf_counter() - t)

    prompt_file = "<END_PROMPT>\n".join("".join(f">p{j}\n{s}\n" for j, s in enumerate(r)) for r in reps).encode()
    with tempfile.TemporaryDirectory() as d:
        app = create_app(Settings(data_dir=d, api_keys=["bench-key"]))
        app.state.models.put("poet", engine)
        served = []
        with LiveServer(app) as srv:
            session = pc.connect(srv.url, api_key="bench-key", poll_interval=0.02)
            prompt = session.poet.upload_prompt(prompt_file)
            for _ in range(args.repeats):
                t = time.perf_counter()
                res = session.poet.score(prompt, [v.encode() for v in variants]).wait()
                served.append(time.perf_counter() - t)
            got = np.array([r.score for r in res]).T
            # fixed cost of one job: a 10-residue variant under a 1-sequence prompt
            tiny_prompt = session.poet.upload_prompt(b"MKTAYIAKQR\n")
            tiny_served, tiny_direct = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                session.poet.score(tiny_prompt, [b"MKTAYIAKQW"]).wait()
                tiny_served.append(time.perf_counter() - t)
                t = time.perf_counter()
                engine.score([["MKTAYIAKQR"]], ["MKTAYIAKQW"])
                tiny_direct.append(time.perf_counter() - t)
    assert np.allclose(got, expected), "served scores differ from the engine's"
    print(json.dumps({
        "bench": "jobs_overhead", "variants": args.variants, "replicates": args.replicates,
        "prompt_sequences": args.prompt_size, "threads": args.threads,
        "engine_direct_s": round(min(direct), 4), "http_job_sdk_s": round(min(served), 4),
        "overhead_s": round(min(served) - min(direct), 4), "ratio": round(min(served) / min(direct), 3),
        "tiny_job_direct_s": round(min(tiny_direct), 4), "tiny_job_http_s": round(min(tiny_served), 4),
    }))


if __name__ == "__main__":
    main()
