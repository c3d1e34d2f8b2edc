"""Benchmark: PoET neighbour weights (``plmserve.align.sampling.neighbor_counts``).

Cases, each run in a fresh subprocess so that its peak memory can be measured:

* ``blat``: the real BLAT_ECOLX MSA (4501 x 286), theta 0.2;
* ``rows50k``: a synthetic 50 000-row MSA of the same width (BLAT rows with 15 % random
  substitutions and the BLAT gap pattern), theta 0.2;
* ``blat_reference``: a straightforward numpy implementation (one row against all rows per step,
  uint8 comparisons, the formula of ``poet-model.md`` §6.1) on BLAT, measured in the same run;
  the counts must be identical.

Wall seconds and CPU seconds (all threads) are both reported, with the 1-minute load average:
on a shared machine the wall time depends on the other jobs. Peak memory is the increase of the
process's peak RSS during the computation (MiB), after the MSA is loaded and torch is imported.
Prints one JSON line.

    python bench/msa_weights.py
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.datafiles import shared_path  # noqa: E402

BLAT = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _matrix(case: str):
    import numpy as np

    from plmserve.bio.msa import read_msa

    m = read_msa(BLAT).aligned_matrix()
    if case == "rows50k":
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(m), 50_000)
        out = m[rows].copy()
        mutate = (rng.random(out.shape) < 0.15) & (out != 20)
        out[mutate] = rng.integers(0, 20, int(mutate.sum()))
        return out
    return m


def _reference_counts(matrix, theta):
    import numpy as np

    masked = matrix.copy()
    masked[masked == 20] = 255
    nongap = (matrix != 20).sum(axis=1)
    counts = np.empty(len(matrix), dtype=np.int64)
    for i in range(len(matrix)):
        sim = (matrix[i] == masked).sum(axis=1) / nongap[i]
        counts[i] = int(((1.0 - sim) <= theta).sum())
    return counts


def _run(case: str, queue) -> None:
    import numpy as np
    import torch  # noqa: F401  (import cost is not part of the measurement)

    from plmserve.align.sampling import neighbor_counts

    matrix = _matrix(case)
    neighbor_counts(matrix[:64], 0.2)  # warm-up
    base = _peak_mib()
    start = time.perf_counter()
    cpu = time.process_time()
    if case == "blat_reference":
        counts = _reference_counts(matrix, 0.2)
    else:
        counts = neighbor_counts(matrix, 0.2)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": _peak_mib() - base, "counts": np.asarray(counts).tolist()})


def measure(case: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(case, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    threads = torch.get_num_threads()
    blat = measure("blat")
    ref = measure("blat_reference")
    big = measure("rows50k")
    out = {
        "blat_seconds": round(blat["seconds"], 3),
        "blat_peak_mib": round(blat["peak_mib"], 1),
        "blat_cpu_seconds": round(blat["cpu_seconds"], 3),
        "rows50k_seconds": round(big["seconds"], 2),
        "rows50k_peak_mib": round(big["peak_mib"], 1),
        "rows50k_cpu_seconds": round(big["cpu_seconds"], 2),
        "blat_reference_seconds": round(ref["seconds"], 3),
        "blat_reference_peak_mib": round(ref["peak_mib"], 1),
        "blat_counts_identical_to_reference": blat["counts"] == ref["counts"],
        "speedup_vs_reference": round(ref["seconds"] / blat["seconds"], 1),
        "torch_threads": threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
