"""ESM C encode throughput: plmserve's engine vs the official ``esm`` package's ``ESMC``, one run.

Model: the ESM C 300M shape (960 wide, 30 blocks, 15 heads) with seeded random weights
(``--load-format dummy``); the official model gets the very same weights in its own ``.pth`` layout
(plmserve's ``hf_to_official``), strictly loaded.

Sequences: the first N (default 200) distinct ungapped homologs of the BLAT_ECOLX MSA
(``tests/data/data/BLAT_ECOLX_ColabFold_2202.a3m``), query excluded.

Reference: ``esm==3.2.1.post1`` (EvolutionaryScale) in its own virtual environment
(``.ci/sdk_venvs.sh``; interpreter from ``--esm-python`` / ``$PLMSERVE_ESM_SDK_PYTHON``), run in a
worker process that keeps the model loaded, through the package's documented path, one protein at a
time: ``model.logits(model.encode(ESMProtein(sequence=s)), LogitsConfig(sequence=True,
return_embeddings=True))`` (``--reference-mode batched``: the package's private
``_BatchedESMProteinTensor`` with the same length-sorted batches as plmserve). plmserve:
``engine.forward_tokens(tokens, logits=False, embeddings=True)`` on the whole chunk (length-sorted
token-budget batches). Both produce the final-LayerNorm embeddings; the result compared is the per-sequence mean over residues.

To be fair on a shared machine the two alternate over chunks of ``--chunk`` sequences (reference,
then plmserve, chunk after chunk) with the same number of torch threads; each side's time is the
sum over chunks. One JSON line: ``model``, ``plmserve_residues_per_s``,
``reference_residues_per_s``, ``ratio`` (plmserve / reference), ``max_abs_diff`` (mean
embeddings), plus the counts and settings.

    python bench/esmc_encode.py                       # 200 sequences, 300M shape
    python bench/esmc_encode.py --n 16 --layers 4     # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from plmserve.models.esmc.alphabet import RESIDUE_LETTERS, tokenize  # noqa: E402
from plmserve.models.esmc.engine import ESMCEngine  # noqa: E402
from plmserve.models.esmc.weights import hf_to_official  # noqa: E402

WORKER = r'''
import json, sys, time
import numpy as np
import torch
from esm.models.esmc import ESMC
from esm.sdk.api import ESMProtein, LogitsConfig
from esm.tokenization import EsmSequenceTokenizer

d, h, n, path, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
model = ESMC(d_model=d, n_heads=h, n_layers=n, tokenizer=EsmSequenceTokenizer(), use_flash_attn=False).eval()
model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
cfg = LogitsConfig(sequence=True, return_embeddings=True)
print(json.dumps({"ready": True, "esm": __import__("esm").__version__}), flush=True)
mode, budget = sys.argv[6], int(sys.argv[7])
from esm.utils.sampling import _BatchedESMProteinTensor


def batches(lengths):
    """Length-sorted groups whose padded token count n x max(T) stays within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur, cur_max = [], [], 0
    for i in order:
        t = lengths[i] + 2
        if cur and (len(cur) + 1) * max(cur_max, t) > budget:
            out.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, t)
    return out + ([cur] if cur else [])


for line in sys.stdin:
    req = json.loads(line)
    seqs = req["seqs"]
    t0 = time.perf_counter()
    if mode == "batched":
        means = [None] * len(seqs)
        for group in batches([len(s) for s in seqs]):
            toks = model._tokenize([seqs[i] for i in group])
            emb = model.logits(_BatchedESMProteinTensor(sequence=toks), cfg).embeddings
            for row, i in enumerate(group):
                means[i] = emb[row, 1:len(seqs[i]) + 1].float().mean(0)
    else:
        means = []
        for s in seqs:
            out = model.logits(model.encode(ESMProtein(sequence=s)), cfg)
            means.append(out.embeddings[0, 1:-1].float().mean(0))
    dt = time.perf_counter() - t0
    np.save(req["out"], torch.stack(means).numpy())
    print(json.dumps({"seconds": dt}), flush=True)
'''


def homologs(n: int, max_len: int = 2048) -> list[str]:
    from tests.datafiles import shared_path

    seqs, cur = [], []
    for line in shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m").read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur))
            cur = []
        elif line.strip():
            cur.append(line.strip())
    if cur:
        seqs.append("".join(cur))
    query = seqs[0].replace("-", "").upper()
    seen, out = {query}, []
    for s in seqs[1:]:
        u = s.replace("-", "").replace(".", "").upper()
        if len(u) < 30 or len(u) > max_len or u in seen or any(c not in RESIDUE_LETTERS for c in u):
            continue
        seen.add(u)
        out.append(u)
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"only {len(out)} usable homologs")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of BLAT homologs")
    ap.add_argument("--chunk", type=int, default=25, help="sequences per alternation round")
    ap.add_argument("--dim", type=int, default=960)
    ap.add_argument("--heads", type=int, default=15)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--toks-per-batch", type=int, default=4096)
    ap.add_argument("--reference-mode", choices=("per-protein", "batched"), default="per-protein",
                    help="per-protein: the package's public ESMC.encode + ESMC.logits, one protein at a time; "
                    "batched: its private _BatchedESMProteinTensor with plmserve's length-sorted batches")
    ap.add_argument("--esm-python", default=os.environ.get("PLMSERVE_ESM_SDK_PYTHON", "/tmp/plmserve-sdk/esm/bin/python"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    seqs = homologs(args.n)
    spec = {"num_layers": args.layers, "embed_dim": args.dim, "attention_heads": args.heads}
    engine = ESMCEngine.dummy(spec, seed=0, slug="esmc-300m", device="cpu", dtype="float32",
                              toks_per_batch=args.toks_per_batch)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="esmc-bench-"))
    pth = tmp / "esmc_dummy.pth"
    torch.save(hf_to_official({k: v.contiguous() for k, v in engine.model.state_dict().items()}), pth)

    if not Path(args.esm_python).exists():
        raise SystemExit(f"the official esm package's interpreter {args.esm_python} is missing: run "
                         "`source .ci/sdk_venvs.sh` (or pass --esm-python)")
    worker = subprocess.Popen([args.esm_python, "-c", WORKER, str(args.dim), str(args.heads), str(args.layers),
                               str(pth), str(args.threads), args.reference_mode, str(args.toks_per_batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))  # fmt: skip
    ready = json.loads(worker.stdout.readline())

    def reference(chunk: list[str], out: Path) -> float:
        worker.stdin.write(json.dumps({"seqs": chunk, "out": str(out)}) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())["seconds"]

    def ours(chunk: list[str]) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        res = engine.forward_tokens([tokenize(s) for s in chunk], logits=False, embeddings=True)
        means = np.stack([r["embeddings"][1:-1].mean(0) for r in res])
        return time.perf_counter() - t0, means

    warm = seqs[:2]  # warm-up, not timed
    reference(warm, tmp / "warm.npy")
    ours(warm)
    t_ref = t_ours = 0.0
    ref_means, our_means = [], []
    for k in range(0, len(seqs), args.chunk):
        chunk = seqs[k:k + args.chunk]
        t_ref += reference(chunk, tmp / f"ref{k}.npy")
        ref_means.append(np.load(tmp / f"ref{k}.npy"))
        dt, m = ours(chunk)
        t_ours += dt
        our_means.append(m)
        done = k + len(chunk)
        print(f"{done}/{len(seqs)} sequences: plmserve {t_ours:.1f} s, reference {t_ref:.1f} s", file=sys.stderr,
              flush=True)
    worker.stdin.close()
    worker.wait(60)
    residues = sum(len(s) for s in seqs)
    diff = float(np.abs(np.concatenate(ref_means) - np.concatenate(our_means)).max())
    ours_rps, ref_rps = residues / t_ours, residues / t_ref
    print(json.dumps({
        "model": f"esmc-300m shape ({args.dim} wide, {args.layers} blocks, {args.heads} heads), dummy weights, fp32 CPU",
        "plmserve_residues_per_s": round(ours_rps, 1),
        "reference_residues_per_s": round(ref_rps, 1),
        "ratio": round(ours_rps / ref_rps, 3),
        "max_abs_diff": diff,
        "n_sequences": len(seqs),
        "residues": residues,
        "threads": args.threads,
        "reference": f"esm=={ready.get('esm')} ESMC.logits (return_embeddings), {args.reference_mode}, own venv",
        "plmserve": f"ESMCEngine.forward_tokens, toks_per_batch={args.toks_per_batch}",
    }))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
