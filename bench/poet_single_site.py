"""Benchmark: PoET single-site scan, plmserve vs the official recipe, measured in one run.

    python bench/poet_single_site.py                       # default: 256 wide x 4 layers, dummy weights
    python bench/poet_single_site.py --positions-step 1    # the whole scan (19 x 286 variants; slow on CPU)
    python bench/poet_single_site.py --full-size-score      # 1024 x 12 dummy: score 100 variants (throughput)
    python bench/poet_single_site.py --scheduler            # plmserve side through the batching scheduler

Setup: the BLAT_ECOLX wild type (286 aa, row 0 of ``tests/data/data/BLAT_ECOLX_ColabFold_2202.a3m``); a
prompt sampled from that MSA with the align service's sampler (``--prompt-tokens`` budget, seed
188257); a dummy-weight PoET (same seed in both recipes); forward direction only (both recipes).

* ``plmserve``: ``PoET.single_site`` -- the wild type is decoded once; each mutant decodes only
  the suffix after its substitution, attending to the wild type's cached prefix states and to the
  prompt cache, both shared by every batch row (never copied); batches grouped by suffix length.
  With ``--scheduler`` the same scan runs as the server's jobs run it: every substitution a unit
  of the model's batching scheduler (``plmserve.serving.poet_batching.single_site``), computed
  by its worker thread.
* ``official recipe`` (written here, after ``scripts/score.py``): the cached prompt; every variant
  decoded in full, batch 8; per layer the prompt K/V are copied for each row and concatenated
  with the row's own K/V; attention with an explicit bottom-right causal mask.

Each recipe runs in its own subprocess, so its peak memory is measured alone: on CPU the growth
of the peak resident set size (``ru_maxrss``) over the process's size just before the recipe; on
CUDA ``torch.cuda.max_memory_allocated`` growth. Rates on CPU with one thread (the default) use
the process CPU time (wall time on a shared machine measures the neighbours' load; the JSON also
gives ``wall_ratio``). Scores must agree within the fixture tolerance (|d| <= 1e-3 + 2e-6 |score|).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.datafiles import shared_dir  # noqa: E402

SHARED = shared_dir()
A3M = SHARED / "data" / "BLAT_ECOLX_ColabFold_2202.a3m"


def _setup(args):
    from plmserve.align import sample_prompt
    from plmserve.bio.msa import read_msa
    from plmserve.models.poet import PoET

    torch.set_num_threads(args.threads)
    msa = read_msa(A3M)
    wt = msa.query
    sampled = sample_prompt(msa, method="NEIGHBORS_NONGAP_NORM_NO_LIMIT", num_residues=args.prompt_tokens,
                            random_seed=188257)
    prompt = [s for _, s in sampled.replicates[0]]
    model = PoET.dummy(d_model=args.d_model, n_layers=args.layers, seed=0, device=args.device,
                       dtype=args.dtype)
    positions = list(range(1, len(wt) + 1, args.positions_step))
    return model, wt, prompt, positions


def _mutants(wt: str, positions: list[int]) -> tuple[list[str], list[str]]:
    from plmserve.models.poet.alphabet import AMINO_ACIDS

    codes, seqs = [], []
    for p in positions:
        for aa in AMINO_ACIDS:
            if aa != wt[p - 1]:
                codes.append(f"{wt[p - 1]}{p}{aa}")
                seqs.append(wt[: p - 1] + aa + wt[p:])
    return codes, seqs


@torch.inference_mode()
def official_recipe(model, cache, seqs: list[str], batch_size: int = 8) -> np.ndarray:
    """Every variant decoded in full, batch ``batch_size``, the prompt K/V copied per row."""
    from plmserve.models.poet import alphabet as A

    net = model.model
    dev = model.device
    out = []
    for b0 in range(0, len(seqs), batch_size):
        batch = seqs[b0 : b0 + batch_size]
        width = max(len(s) for s in batch) + 2
        x = torch.full((len(batch), width), A.MASK, dtype=torch.long)
        for r, s in enumerate(batch):
            x[r, : len(s) + 2] = torch.as_tensor(A.encode_sequence(s))
        x = x.to(dev)
        inp, tgt = x[:, :-1], x[:, 1:]
        B, L = inp.shape
        pos = torch.arange(L, device=dev).expand(B, L)
        h = net.token_embed(inp)
        for li, layer in enumerate(net.layers):
            q, k, v = layer.self_attn.qkv(layer.norm1(h), pos)
            h = h + layer.self_attn.project_out(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=net.scale))
            q, k, v = layer.multihead_attn.qkv(layer.norm2(h), pos)
            pk, pv = cache.memory[li]
            k_all = torch.cat([pk[None].expand(B, -1, -1, -1).clone(), k], dim=2)  # copy per row
            v_all = torch.cat([pv[None].expand(B, -1, -1, -1).clone(), v], dim=2)
            T = pk.shape[1]
            mask = torch.ones(L, T + L, dtype=torch.bool, device=dev).tril_(T)  # bottom-right causal
            o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=net.scale)
            h = h + layer.multihead_attn.project_out(o)
            h = h + layer.ffn(h)
        logits = net.head(h).float()
        lp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
        lp = lp.masked_fill(tgt == A.MASK, 0.0)
        out.append(lp.sum(-1).double().cpu().numpy())
    return np.concatenate(out)


def _peak_start(dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_growth(dev: torch.device, start: float) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - start
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


def worker(args) -> None:
    model, wt, prompt, positions = _setup(args)
    codes, seqs = _mutants(wt, positions)
    cache = model.embed(prompt)
    start = _peak_start(model.device)
    t0 = time.perf_counter()
    c0 = time.process_time()
    if args.recipe == "plmserve" and args.scheduler:
        from plmserve.serving.poet_batching import single_site
        from plmserve.serving.scheduler import ModelScheduler

        sched = ModelScheduler("poet", model, toks_per_batch=model.batch_tokens)
        rows = single_site(sched, "bench", [prompt], wt, reverse=False, positions=positions)
        sched.stop()
        rows = [(c, float(v[0])) for c, v in rows]
        assert [c for c, _ in rows[1:]] == codes
        scores = np.array([s for _, s in rows[1:]])
    elif args.recipe == "plmserve":
        rows = model.single_site(cache, wt, positions=positions)
        assert [c for c, _ in rows[1:]] == codes
        scores = np.array([s for _, s in rows[1:]])
    else:
        scores = official_recipe(model, cache, seqs)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    peak = _peak_growth(model.device, start)
    np.save(args.out, scores)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak, "n": len(seqs),
                      "prompt_tokens": cache.num_tokens, "device": str(model.device)}))


def full_size_score(args) -> None:
    model, wt, prompt, _ = _setup(args)
    codes, seqs = _mutants(wt, list(range(1, len(wt) + 1, max(1, len(wt) // 6))))
    seqs = seqs[: args.n_score]
    cache = model.embed(prompt)
    model.score(cache, seqs[:2])  # warm-up
    t0 = time.perf_counter()
    c0 = time.process_time()
    model.score(cache, seqs)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(json.dumps({"model": f"dummy {args.d_model}x{args.layers}", "device": str(model.device),
                      "dtype": str(model.dtype), "threads": args.threads, "prompt_tokens": cache.num_tokens,
                      "n_variants": len(seqs), "seconds": round(dt, 2),
                      "variants_per_s": round(len(seqs) / dt, 3), "cpu_seconds": round(cpu, 2),
                      "variants_per_cpu_s": round(len(seqs) / cpu, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=2048, help="prompt token budget (sampled from the MSA)")
    ap.add_argument("--positions-step", type=int, default=15, help="scan every k-th position (1 = all 286)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = stable on a shared box)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--scheduler", action="store_true",
                    help="plmserve side through the batching scheduler (as the server's jobs run it)")
    ap.add_argument("--full-size-score", action="store_true", help="1024x12 dummy: score --n-score variants")
    ap.add_argument("--n-score", type=int, default=100)
    ap.add_argument("--recipe", choices=["plmserve", "official"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.full_size_score:
        if args.d_model == 256 and args.layers == 4:
            args.d_model, args.layers = 1024, 12
        full_size_score(args)
        return
    if args.recipe:
        worker(args)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("official", "plmserve"):
            out = os.path.join(tmp, f"{recipe}.npy")
            cmd = [sys.executable, __file__, "--recipe", recipe, "--out", out] + [
                a for a in sys.argv[1:]
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"{recipe} worker failed")
            results[recipe] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[recipe]["scores"] = np.load(out)
    off, ours = results["official"], results["plmserve"]
    diff = np.abs(ours["scores"] - off["scores"])
    ok = bool(np.all(diff <= 1e-3 + 2e-6 * np.abs(off["scores"])))
    # On CPU with one thread the rate uses process CPU time: on a shared machine wall time mostly
    # measures the neighbours' load. On CUDA (or several threads) it uses wall time.
    key = "cpu_seconds" if ours["device"] == "cpu" and args.threads == 1 else "seconds"
    ours_rate = ours["n"] / ours[key]
    off_rate = off["n"] / off[key]
    print(json.dumps({
        "plmserve_variants_per_s": round(ours_rate, 3),
        "official_recipe_variants_per_s": round(off_rate, 3),
        "ratio": round(ours_rate / off_rate, 3),
        "plmserve_peak_mib": round(ours["peak_mib"], 1),
        "official_recipe_peak_mib": round(off["peak_mib"], 1),
        "max_abs_diff": float(diff.max()),
        "scores_agree": ok,
        "n_variants": ours["n"],
        "prompt_tokens": ours["prompt_tokens"],
        "model": f"dummy {args.d_model}x{args.layers}",
        "device": ours["device"],
        "threads": args.threads,
        "timing": "process CPU time" if key == "cpu_seconds" else "wall clock",
        "plmserve_path": "batching scheduler" if args.scheduler else "engine",
        "wall_ratio": round((ours["n"] / ours["seconds"]) / (off["n"] / off["seconds"]), 3),
    }))


if __name__ == "__main__":
    main()
