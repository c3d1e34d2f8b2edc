"""Benchmark of the ESM3 engine's admission between principals (issue 14): does one client's
backlog delay another client's single request?

Dummy (random) weights, a reduced trunk (d_model 256, 4 heads, 16 geometric heads, 4 layers),
fully masked sequences of L = 128 residues, 20 steps. Principal A submits ``--backlog`` (50)
requests at once; principal B then submits one. The engine steps at most ``--max-batch`` (8)
sessions at once. Prints ONE JSON line:

- ``b_latency_s``: wall time from B's submission to its result;
- ``a_backlog_s``: wall time until A's last result (the reference, same run);
- ``b_over_backlog``: their ratio. Admission is not preemptive: B waits at most until a running
  session finishes (one "round" of ``steps`` decoding steps), then runs one round, i.e. about
  2 / ceil(backlog / max_batch) = 2/7 of the backlog's time with the defaults. Target <= 0.35;
  first-come-first-served would give ~1 (B after the whole backlog);
- ``b_finished_rank``: how many requests finished before B (of ``backlog`` + 1);
- ``mean_rows_per_forward``: rows per forward pass (step batching kept while fair).

    python bench/esm3_fairness.py
    python bench/esm3_fairness.py --threads 1 --backlog 50 --max-batch 8
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch

from plmserve.models.esm3.engine import GenerationEngine
from plmserve.models.esm3.model import ESM3, ESM3Config
from plmserve.models.esm3.sampler import GenerationConfig, empty_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backlog", type=int, default=50)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    config = ESM3Config.from_dict({"d_model": 256, "n_heads": 4, "v_heads": 16, "n_layers": 4})
    model = ESM3.dummy(config, seed=0, device=device, dtype=torch.float32)
    tokens = empty_tokens(args.length)
    prompt = type(tokens)(sequence=tokens.sequence)
    cfg = GenerationConfig(track="sequence", num_steps=args.steps, temperature=1.0)

    engine = GenerationEngine(model, batch_window_ms=0, max_batch_size=args.max_batch, name="bench")
    finished: list[str] = []
    lock = threading.Lock()

    def done(name, _fut):
        with lock:
            finished.append(name)

    try:
        engine.generate(prompt, cfg, seed=0)  # warm-up
        passes0, rows0 = engine.stats.forward_passes, engine.stats.rows
        start = time.perf_counter()
        backlog = [engine.submit(prompt, cfg, seed=i, principal="A") for i in range(args.backlog)]
        for i, f in enumerate(backlog):
            f.add_done_callback(lambda fut, i=i: done(f"A{i}", fut))
        b_start = time.perf_counter()
        b = engine.submit(prompt, cfg, seed=10_000, principal="B")
        b.add_done_callback(lambda fut: done("B", fut))
        b.result()
        b_latency = time.perf_counter() - b_start
        for f in backlog:
            f.result()
        a_backlog = time.perf_counter() - start
    finally:
        engine.close()
    passes = engine.stats.forward_passes - passes0
    rows = engine.stats.rows - rows0
    print(json.dumps({
        "benchmark": "esm3_fairness", "device": str(device), "threads": torch.get_num_threads(),
        "length": args.length, "steps": args.steps, "backlog": args.backlog, "max_batch": args.max_batch,
        "b_latency_s": round(b_latency, 3), "a_backlog_s": round(a_backlog, 3),
        "b_over_backlog": round(b_latency / a_backlog, 3), "b_finished_rank": finished.index("B"),
        "mean_rows_per_forward": round(rows / max(1, passes), 2), "targets": {"b_over_backlog": 0.35},
    }))


if __name__ == "__main__":
    main()
