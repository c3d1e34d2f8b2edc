"""Benchmark: plmserve's ESM-2 ``encode`` (mean embeddings, last layer) vs fair-esm's reference path.

Both run in this process, on the same CPU threads, with the same random weights of the real
ESM-2 shapes (esm2-8m: 6 x 320, esm2-35m: 12 x 480): a fair-esm ``ESM2`` is built with a fixed seed
and converted with plmserve's own fair-esm -> HF conversion. The sequences are >= 200 real,
ungapped BLAT_ECOLX homologs from ``tests/data/data/BLAT_ECOLX_ColabFold_2202.a3m`` (gaps removed,
lower-case insertions kept as residues, the query and duplicates skipped).

Reference path = fair-esm's ``scripts/extract.py``: ``FastaBatchedDataset.get_batch_indices
(toks_per_batch=4096, extra_toks_per_seq=1)``, ``alphabet.get_batch_converter()``, ``torch.no_grad()``,
``model(toks, repr_layers=[n])``, mean over residues. plmserve: ``ESM2Engine.encode(seqs,
include=["mean"])`` with ``toks_per_batch=4096``. The two are timed alternately (``--repeats``
rounds, order swapped each round) and the best time of each is used, because the machine may be
shared. ``peak_fraction`` = plmserve's useful FLOP/s (linear layers + attention on real tokens) /
this machine's fp32 matmul peak measured in the same run.

Prints one JSON line per model (keys: model, plmserve_residues_per_s, fairesm_residues_per_s, ratio,
max_abs_diff, peak_fraction, plus details), ordered so that the last line has the slowest ratio.

Usage: ``python bench/esm2_encode.py [--models esm2-8m,esm2-35m] [--n-seqs 224] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from plmserve.models.esm2.alphabet import RESIDUE_LETTERS  # noqa: E402
from plmserve.models.esm2.engine import ESM2Engine, build_hf_model  # noqa: E402
from plmserve.models.esm2.weights import fair_esm_to_hf  # noqa: E402
from plmserve.models.registry import get_spec  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.datafiles import shared_path  # noqa: E402

A3M = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")


def load_homologs(path: Path, n: int, min_len: int = 30) -> list[str]:
    """The first ``n`` distinct ungapped homologs of the a3m (query excluded)."""
    names, seqs, cur = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur))
            cur = []
            names.append(line)
        elif line.strip():
            cur.append(line.strip())
    if cur:
        seqs.append("".join(cur))
    query = seqs[0].replace("-", "").upper()
    seen = {query}
    out = []
    for s in seqs[1:]:
        u = s.replace("-", "").replace(".", "").upper()
        if len(u) < min_len or u in seen or any(c not in RESIDUE_LETTERS for c in u):
            continue
        seen.add(u)
        out.append(u)
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} usable homologs in {path}")
    return out


def matmul_peak_flops(size: int = 1536, repeats: int = 5) -> float:
    """Best fp32 GEMM FLOP/s of this machine (torch.mm, current thread count)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def model_flops(lengths: list[int], layers: int, dim: int) -> float:
    """Useful forward FLOPs on the real tokens (L + 2 per sequence): 24 d^2 per token per layer for
    the linear layers (QKV, output, 4d FFN) and 4 T d per token per layer for attention."""
    total = 0.0
    for L in lengths:
        T = L + 2
        total += layers * (24 * dim * dim * T + 4 * T * T * dim)
    return total


def build_models(slug: str, seed: int = 0):
    """A fair-esm ESM2 of the registry shape with seeded random weights, and the same weights in
    a plmserve engine (converted with plmserve's conversion)."""
    import esm

    spec = get_spec(slug)
    c = spec.config
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(seed)
    ref = esm.model.esm2.ESM2(
        num_layers=c["num_layers"], embed_dim=c["embed_dim"], attention_heads=c["attention_heads"],
        alphabet=alphabet, token_dropout=True,
    ).eval()  # fmt: skip
    with torch.no_grad():  # non-trivial LayerNorms/biases so that a wrong mapping would show
        for name, p in ref.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
    config, state = fair_esm_to_hf({"model": ref.state_dict()}, attention_heads=c["attention_heads"])
    ours = ESM2Engine(build_hf_model(config, state), slug=slug, load_format="dummy", device="cpu",
                      dtype="float32", toks_per_batch=4096)  # fmt: skip
    return ref, alphabet, ours


def run_fair_esm(model, alphabet, seqs: list[str], toks_per_batch: int = 4096) -> tuple[float, list[np.ndarray]]:
    import esm

    dataset = esm.data.FastaBatchedDataset([str(i) for i in range(len(seqs))], seqs)
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=alphabet.get_batch_converter(1022), batch_sampler=batches)
    n = model.num_layers
    means: list[np.ndarray | None] = [None] * len(seqs)
    t = time.perf_counter()
    with torch.no_grad():
        for labels, strs, toks in loader:
            out = model(toks, repr_layers=[n], return_contacts=False)
            rep = out["representations"][n]
            for b, label in enumerate(labels):
                L = min(1022, len(strs[b]))
                means[int(label)] = rep[b, 1 : L + 1].mean(0).clone().numpy()
    return time.perf_counter() - t, means  # type: ignore[return-value]


def run_plmserve(engine: ESM2Engine, seqs: list[str]) -> tuple[float, list[np.ndarray]]:
    t = time.perf_counter()
    out = engine.encode(seqs, include=["mean"], repr_layers=[-1])
    dt = time.perf_counter() - t
    return dt, [o["mean_representations"][engine.num_layers] for o in out]


def bench_model(slug: str, seqs: list[str], repeats: int) -> dict:
    ref, alphabet, ours = build_models(slug)
    run_fair_esm(ref, alphabet, seqs[:8])  # warm-up
    run_plmserve(ours, seqs[:8])
    t_ref, t_ours = [], []
    for r in range(repeats):
        order = ("ref", "ours") if r % 2 == 0 else ("ours", "ref")
        for who in order:
            if who == "ref":
                dt, ref_means = run_fair_esm(ref, alphabet, seqs)
                t_ref.append(dt)
            else:
                dt, our_means = run_plmserve(ours, seqs)
                t_ours.append(dt)
            print(f"# {slug} round {r}: {who} {dt:.2f} s", file=sys.stderr, flush=True)
    residues = sum(len(s) for s in seqs)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(our_means, ref_means))
    flops = model_flops([len(s) for s in seqs], ours.num_layers, ours.embed_dim)
    return {
        "model": slug,
        "plmserve_residues_per_s": round(residues / min(t_ours), 1),
        "fairesm_residues_per_s": round(residues / min(t_ref), 1),
        "ratio": round(min(t_ref) / min(t_ours), 3),
        "max_abs_diff": float(f"{diff:.3g}"),
        "peak_fraction": None,  # filled in by main() with the final peak
        "plmserve_gflops": round(flops / min(t_ours) / 1e9, 2),
        "n_sequences": len(seqs),
        "residues": residues,
        "plmserve_s": [round(x, 3) for x in t_ours],
        "fairesm_s": [round(x, 3) for x in t_ref],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="esm2-8m,esm2-35m")
    ap.add_argument("--n-seqs", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--a3m", type=Path, default=A3M)
    args = ap.parse_args()
    seqs = load_homologs(args.a3m, args.n_seqs)
    peak = matmul_peak_flops()
    results = [bench_model(slug, seqs, args.repeats) for slug in args.models.split(",")]
    peak = max(peak, matmul_peak_flops())  # measured again after the runs: the better of the two
    for r in results:
        r["matmul_peak_gflops"] = round(peak / 1e9, 1)
        r["peak_fraction"] = round(r["plmserve_gflops"] * 1e9 / peak, 4)
    for r in sorted(results, key=lambda r: -r["ratio"]):
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
