"""Seconds per ESM3 trunk forward pass (dummy weights), with an in-run matmul reference.

Usage::

    python bench/esm3_trunk.py                      # full esm3_sm_open_v1 shape (1.4 B), L = 128, CPU fp32
    python bench/esm3_trunk.py --layers 8 --repeats 3
    python bench/esm3_trunk.py --device cuda --dtype bfloat16

Prints one JSON line: ``forward_s`` (median seconds per forward of one protein of ``length``
tokens, all tracks given as in the generate path), ``build_s``, the achieved GFLOP/s of the forward
and ``reference_matmul_gflops``: a plain ``[L, d] x [d, F]`` GEMM measured in the same run, so
``efficiency = achieved / reference`` says how close the trunk gets to the machine's matmul speed.
Memory: the full model needs 5.6 GB in fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from plmserve.models.esm3 import ESM3, ESM3Config, default_inputs
from plmserve.models.esm3.layers import swiglu_hidden_width


def forward_flops(cfg: ESM3Config, length: int) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add): projections, attention, heads."""
    d, n, v = cfg.d_model, cfg.n_layers, cfg.v_heads
    f = swiglu_hidden_width(d)
    per_token = n * (4 * d * d + 3 * f * d) + 18 * v * d + 6 * d * d + 7748 * d
    attention = n * 2 * length * length * d  # QK^T and PV
    return 2.0 * (per_token * length + attention)


def matmul_gflops(length: int, d: int, f: int, device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    a = torch.randn(length, d, device=device, dtype=dtype)
    b = torch.randn(d, f, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    n = 0
    _sync(device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    _sync(device)
    return 2.0 * length * d * f * n / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=128, help="tokens incl. BOS/EOS")
    parser.add_argument("--layers", type=int, default=None, help="override n_layers (default 48)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cfg = ESM3Config.open_small()
    if args.layers:
        cfg = ESM3Config(cfg.d_model, cfg.n_heads, cfg.v_heads, args.layers)
    start = time.perf_counter()
    model = ESM3.dummy(cfg, seed=0, device=device, dtype=dtype)
    build_s = time.perf_counter() - start

    kw = default_inputs(args.length - 2, device=device)
    g = torch.Generator().manual_seed(0)
    kw["sequence_tokens"][0, 1:-1] = torch.randint(4, 24, (args.length - 2,), generator=g).to(device)
    times = []
    with torch.inference_mode():
        model(**kw)  # warm-up
        for _ in range(args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(**kw)
            _sync(device)
            times.append(time.perf_counter() - t0)
    forward_s = statistics.median(times)
    achieved = forward_flops(cfg, args.length) / forward_s / 1e9
    reference = matmul_gflops(args.length, cfg.d_model, swiglu_hidden_width(cfg.d_model), device, dtype)
    print(
        json.dumps(
            {
                "bench": "esm3_trunk_forward",
                "config": cfg.to_dict(),
                "parameters": model.num_parameters(),
                "device": str(device),
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "length": args.length,
                "build_s": round(build_s, 2),
                "forward_s": round(forward_s, 3),
                "forward_s_all": [round(t, 3) for t in times],
                "achieved_gflops": round(achieved, 1),
                "reference_matmul_gflops": round(reference, 1),
                "efficiency": round(achieved / reference, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
