"""Benchmark of ESM3 ``generate_tensor``: sampler overhead and cross-request batching.

Dummy (random) weights, a reduced trunk (default d_model 256, 4 heads, 16 geometric heads,
4 layers; the full model is 1536/24/256/48), a fully masked sequence of L = 128 residues, 20 steps,
the Forge defaults otherwise. Prints ONE JSON line:

- ``sampler_overhead``: (time per decoding step of ``generate_tensor``) / (time of a bare trunk
  forward pass on the same inputs) - 1. Target <= 0.10.
- ``batch8_over_single``: wall time of 8 concurrent requests through the batching engine over the
  wall time of one request. Target <= 3 (8 sequential requests would be ~8).
- ``batch_outputs_identical``: the 8 batched outputs equal unbatched ``generate_tensor`` runs
  with the same seeds, token for token.

Both ratios are measured against a reference in the same run. ``--full`` instead times the full
1.4 B trunk (dummy weights): seconds per step at L = 128 (few steps; needs ~6 GB RAM in fp32).

    python bench/esm3_generate.py                    # reduced trunk, CPU (or CUDA if present)
    python bench/esm3_generate.py --threads 1 --device cpu
    python bench/esm3_generate.py --full --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from plmserve.models.esm3.engine import GenerationEngine
from plmserve.models.esm3.model import ESM3, ESM3Config
from plmserve.models.esm3.sampler import GenerationConfig, GenerationSession, empty_tokens, generate_tensor, run_trunk


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompt(length: int):
    tokens = empty_tokens(length)
    return type(tokens)(sequence=tokens.sequence)  # sequence only, other tracks null (as Forge)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--v-heads", type=int, default=16)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="the full 1.4B trunk: seconds per step only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = ESM3Config.open_small() if args.full else ESM3Config(
        d_model=args.d_model, n_heads=args.n_heads, v_heads=args.v_heads, n_layers=args.n_layers)
    t0 = time.perf_counter()
    model = ESM3.dummy(config, seed=0, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    gen_cfg = GenerationConfig(track="sequence", num_steps=args.steps)  # Forge server defaults
    prompt = _prompt(args.length)
    inputs = GenerationSession(prompt, gen_cfg, seed=0).forward_inputs()

    def bare_forward() -> float:
        _sync(device)
        start = time.perf_counter()
        run_trunk(model, inputs, tracks=("sequence",))
        _sync(device)
        return time.perf_counter() - start

    def one_generate(seed: int) -> float:
        _sync(device)
        start = time.perf_counter()
        res = generate_tensor(model, prompt, gen_cfg, seed=seed)
        _sync(device)
        return (time.perf_counter() - start) / res.num_steps

    result: dict = {
        "bench": "esm3_generate",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "trunk": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "length": args.length,
        "num_steps": args.steps,
        "build_s": round(build_s, 2),
    }
    if args.full:
        bare_forward()  # warm-up
        forward = [bare_forward() for _ in range(max(1, args.repeats))]
        res_steps = generate_tensor(model, prompt, gen_cfg, seed=0)  # noqa: F841 (warm path)
        result["forward_s"] = round(statistics.median(forward), 3)
        result["seconds_per_step"] = round(statistics.median([one_generate(s) for s in range(1)]), 3)
        print(json.dumps(result))
        return

    # warm-up
    for _ in range(2):
        bare_forward()
    one_generate(0)
    # interleave the two measurements so machine load affects both alike
    forward, per_step = [], []
    for r in range(args.repeats):
        forward.extend(bare_forward() for _ in range(4))
        per_step.append(one_generate(r))
    fwd = statistics.median(forward)
    step = statistics.median(per_step)
    result["forward_ms"] = round(fwd * 1e3, 3)
    result["step_ms"] = round(step * 1e3, 3)
    result["sampler_overhead"] = round(step / fwd - 1.0, 4)

    # batching: one request vs `batch` concurrent requests through the engine
    seeds = list(range(100, 100 + args.batch))
    reference = [generate_tensor(model, prompt, gen_cfg, seed=s).tokens.sequence.tolist() for s in seeds]
    singles, batches, identical = [], [], True
    engine = GenerationEngine(model, batch_window_ms=5.0, max_batch_size=max(16, args.batch))
    try:
        engine.generate(prompt, gen_cfg, seed=1)  # start the worker
        for r in range(max(1, args.repeats // 2)):
            start = time.perf_counter()
            engine.generate(prompt, gen_cfg, seed=seeds[0])
            _sync(device)
            singles.append(time.perf_counter() - start)
            start = time.perf_counter()
            futures = [engine.submit(prompt, gen_cfg, seed=s) for s in seeds]
            outs = [f.result() for f in futures]
            _sync(device)
            batches.append(time.perf_counter() - start)
            identical &= [o.tokens.sequence.tolist() for o in outs] == reference
    finally:
        engine.close()
    single = statistics.median(singles)
    batch = statistics.median(batches)
    result["single_request_s"] = round(single, 4)
    result[f"batch{args.batch}_s"] = round(batch, 4)
    result[f"batch{args.batch}_over_single"] = round(batch / single, 3)
    result["batch_outputs_identical"] = bool(identical)
    result["mean_rows_per_forward"] = round(engine.stats.rows / max(1, engine.stats.forward_passes), 2)
    result["targets"] = {"sampler_overhead": 0.10, f"batch{args.batch}_over_single": 3.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
