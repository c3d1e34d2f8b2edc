"""Cost of the HTTP layer: BioLM ``encode`` through a real uvicorn server vs the engine called
directly, on the same dummy-weight model, in one run.

Sequences: the first N distinct ungapped homologs of ``tests/data/data/BLAT_ECOLX_ColabFold_2202.a3m``.
Each scenario (``mean`` only; ``mean,contacts,logits`` with its large JSON) is timed both ways:
``engine.encode`` on the whole list, and ``POST /api/v2/<slug>/encode/`` in requests of
``--items`` sequences (httpx, one connection). Prints one JSON line per scenario with
``http_residues_per_s``, ``direct_residues_per_s``, ``ratio`` (http / direct) and the
``max_abs_diff`` between the two results.

    python bench/biolm_http.py --model esm2-8m --n 64
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import sys
import time
from pathlib import Path

import numpy as np


def homologs(n: int, max_len: int = 1022) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.datafiles import shared_path

    path = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
    seen: list[str] = []
    for line in path.read_text().splitlines():
        if not line or line.startswith(">"):
            continue
        seq = line.replace("-", "").upper()  # a3m: '-' deletion, lower case = insertion (kept)
        if 30 <= len(seq) <= max_len and seq not in seen:
            seen.append(seq)
        if len(seen) == n:
            break
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="esm2-8m")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--items", type=int, default=8, help="sequences per HTTP request (BioLM allows 8)")
    args = ap.parse_args()

    import httpx
    import torch
    import uvicorn

    from plmserve.api.app import create_app
    from plmserve.models.registry import ModelManager
    from plmserve.settings import Settings

    settings = Settings(no_auth=True, load_format="dummy", max_items=args.items, max_residues=10**6)
    models = ModelManager(settings)
    engine = models.get(args.model, "esm2")
    seqs = homologs(args.n)
    residues = sum(map(len, seqs))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, models), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    url = f"http://127.0.0.1:{port}/api/v2/{args.model}/encode/"
    try:
        with httpx.Client(timeout=600) as client:
            for include in (["mean"], ["mean", "contacts", "logits"]):
                engine.encode(seqs[:2], include=include)  # warm-up
                t0 = time.perf_counter()
                direct = engine.encode(seqs, include=include)
                t_direct = time.perf_counter() - t0
                t0 = time.perf_counter()
                http = []
                for i in range(0, len(seqs), args.items):
                    body = {"params": {"include": include},
                            "items": [{"sequence": s} for s in seqs[i:i + args.items]]}
                    r = client.post(url, json=body)
                    r.raise_for_status()
                    http.extend(r.json()["results"])
                t_http = time.perf_counter() - t0
                diff = 0.0
                layer = str(engine.num_layers)
                for d, h in zip(direct, http):
                    diff = max(diff, float(np.abs(d["mean_representations"][engine.num_layers]
                                                  - np.asarray(h["mean_representations"][layer])).max()))
                    for key in ("contacts", "logits"):
                        if key in include:
                            diff = max(diff, float(np.abs(d[key] - np.asarray(h[key])).max()))
                print(json.dumps({
                    "model": args.model, "load_format": "dummy", "include": ",".join(include),
                    "sequences": len(seqs), "residues": residues, "items_per_request": args.items,
                    "threads": torch.get_num_threads(),
                    "http_residues_per_s": round(residues / t_http, 1),
                    "direct_residues_per_s": round(residues / t_direct, 1),
                    "ratio": round(t_direct / t_http, 3), "max_abs_diff": diff,
                }))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
