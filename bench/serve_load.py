"""Serving under load: a real uvicorn server (``plmserve serve --load-format dummy``), BioLM
``encode`` of real BLAT_ECOLX homologs, in one run:

(a) one client sending ``--requests`` encode requests sequentially (each 1-5 homologs);
(b) ``--clients`` concurrent clients, each sending ``--requests`` such requests (its own random mix);
(c) while (b) runs, a probe client sending one 50-residue encode every 0.5 s; the same probe is
    first timed on the idle server.

Sequences: distinct ungapped homologs of ``tests/data/data/BLAT_ECOLX_ColabFold_2202.a3m`` between
200 and 400 residues (mostly ~260-290). Prints one JSON line: ``single_client_residues_per_s``,
``concurrent_residues_per_s``, ``throughput_ratio`` (b / a), ``probe_idle_p50_s``,
``probe_loaded_p95_s``, ``probe_p95_over_idle``, ``errors`` (non-200 answers and transport errors),
plus the settings and the machine's load average.

    python bench/serve_load.py --model esm2-8m --clients 20 --requests 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
AUTH = {"Authorization": f"Token {KEY}"}


def homologs(min_len: int = 200, max_len: int = 400) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from tests.datafiles import shared_path

    seen: list[str] = []
    for line in shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m").read_text().splitlines():
        if not line or line.startswith(">"):
            continue
        seq = "".join(c for c in line if c.isalpha()).upper()  # a3m: '-' deletions dropped, insertions kept
        if min_len <= len(seq) <= max_len and seq not in seen:
            seen.append(seq)
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PLMSERVE_API_KEYS": f'["{KEY}"]', "HF_HUB_OFFLINE": "1",
           "PLMSERVE_DATA_DIR": str(workdir), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    cmd = [sys.executable, "-c", "from plmserve.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--load-format", "dummy", "--models", model, "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


class Client:
    """One client: a keep-alive connection, its request mix, its counts."""

    def __init__(self, base: str, model: str, seqs: list[str], n_requests: int, seed: int):
        rng = random.Random(seed)
        self.url = f"{base}/api/v2/{model}/encode/"
        self.requests = [rng.sample(seqs, rng.randint(1, 5)) for _ in range(n_requests)]
        self.residues = 0
        self.errors = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        with httpx.Client(timeout=600) as http:
            for items in self.requests:
                t0 = time.perf_counter()
                try:
                    r = http.post(self.url, json={"items": [{"sequence": s} for s in items]}, headers=AUTH)
                    ok = r.status_code == 200 and len(r.json()["results"]) == len(items)
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - t0)
                if ok:
                    self.residues += sum(len(s) for s in items)
                else:
                    self.errors += 1


def probe(base: str, model: str, seq: str, stop: threading.Event, out: list[float], errors: list[int],
          interval: float = 0.5, count: int | None = None) -> None:
    with httpx.Client(timeout=600) as http:
        n = 0
        while not stop.is_set() and (count is None or n < count):
            t0 = time.perf_counter()
            try:
                r = http.post(f"{base}/api/v2/{model}/encode/", json={"items": [{"sequence": seq}]}, headers=AUTH)
                if r.status_code != 200:
                    errors.append(r.status_code)
            except httpx.HTTPError:
                errors.append(-1)
            out.append(time.perf_counter() - t0)
            n += 1
            time.sleep(max(0.0, interval - (time.perf_counter() - t0)))


def batch_stats(base: str, model: str) -> dict[str, float]:
    """The server's own batch counters for ``model`` from ``/metrics`` (Prometheus text format):
    ``{"batches", "items", "padded_tokens"}`` so far (summed over the main and short-request lanes)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"batches": 0.0, "items": 0.0, "padded_tokens": 0.0}
    text = httpx.get(f"{base}/metrics", headers=AUTH, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "plmserve_batch_size_count":
                out["batches"] += sample.value
            elif sample.name == "plmserve_batch_size_sum":
                out["items"] += sample.value
            elif sample.name == "plmserve_batch_tokens_sum":
                out["padded_tokens"] += sample.value
    return out


def _mean(before: dict[str, float], after: dict[str, float], key: str) -> float:
    batches = after["batches"] - before["batches"]
    return round((after[key] - before[key]) / batches, 2) if batches else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="esm2-8m")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--probe-residues", type=int, default=50)
    args = ap.parse_args()

    import tempfile

    load_start = round(os.getloadavg()[0], 2)
    seqs = homologs()
    probe_seq = seqs[0][: args.probe_residues]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(args.model, port, Path(tmp))
        try:
            warm = Client(base, args.model, seqs, 3, seed=999)  # loads the model
            warm.run()
            idle: list[float] = []
            idle_errors: list[int] = []
            probe(base, args.model, probe_seq, threading.Event(), idle, idle_errors, interval=0.2, count=10)

            print(f"idle probe p50 {statistics.median(idle):.3f} s", file=sys.stderr, flush=True)
            single = Client(base, args.model, seqs, args.requests, seed=0)
            before_single = batch_stats(base, args.model)
            cpu0 = (time.process_time(), cpu_seconds(proc.pid))
            t0 = time.perf_counter()
            single.run()
            single_s = time.perf_counter() - t0
            cpu1 = (time.process_time(), cpu_seconds(proc.pid))
            before_conc = batch_stats(base, args.model)
            print(f"single client: {single.residues / single_s:.1f} residues/s, {single.errors} errors",
                  file=sys.stderr, flush=True)

            clients = [Client(base, args.model, seqs, args.requests, seed=1 + i) for i in range(args.clients)]
            threads = [threading.Thread(target=c.run) for c in clients]
            stop = threading.Event()
            loaded: list[float] = []
            probe_errors: list[int] = []
            prober = threading.Thread(target=probe, args=(base, args.model, probe_seq, stop, loaded, probe_errors))
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            prober.start()
            for t in threads:
                t.join()
            conc_s = time.perf_counter() - t0
            cpu2 = (time.process_time(), cpu_seconds(proc.pid))
            stop.set()
            prober.join()
            after_conc = batch_stats(base, args.model)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    single_rps = single.residues / single_s
    conc_rps = sum(c.residues for c in clients) / conc_s
    idle_p50 = statistics.median(idle)
    loaded_p95 = p95(loaded)
    errors = single.errors + sum(c.errors for c in clients) + len(probe_errors) + len(idle_errors) + warm.errors
    print(json.dumps({
        "bench": "serve_load", "model": args.model, "load_format": "dummy", "clients": args.clients,
        "requests_per_client": args.requests,
        "single_client_residues_per_s": round(single_rps, 1),
        "concurrent_residues_per_s": round(conc_rps, 1),
        "throughput_ratio": round(conc_rps / single_rps, 3),
        "single_client_p50_latency_s": round(statistics.median(single.latencies), 3),
        "concurrent_p50_latency_s": round(statistics.median([x for c in clients for x in c.latencies]), 3),
        "concurrent_p95_latency_s": round(p95([x for c in clients for x in c.latencies]), 3),
        "concurrent_max_latency_s": round(max(x for c in clients for x in c.latencies), 3),
        "probe_idle_p50_s": round(idle_p50, 4),
        "probe_loaded_p95_s": round(loaded_p95, 4),
        "probe_p95_over_idle": round(loaded_p95 / idle_p50, 2),
        "probes_loaded": len(loaded),
        "errors": errors,
        # the server's batches in each phase (the concurrent one includes the probe's short-lane batches)
        "single_mean_batch_items": _mean(before_single, before_conc, "items"),
        "concurrent_mean_batch_items": _mean(before_conc, after_conc, "items"),
        # the 20 clients' batches alone (each probe request is one batch of one item)
        "concurrent_mean_batch_items_without_probe": _mean(
            before_conc, {k: v - len(loaded) for k, v in after_conc.items() if k != "padded_tokens"}, "items"),
        # CPU seconds per second of each phase: the server process, and this load generator (its
        # client threads run on the same cores)
        "single_server_cpu_per_s": round((cpu1[1] - cpu0[1]) / single_s, 2),
        "single_client_cpu_per_s": round((cpu1[0] - cpu0[0]) / single_s, 2),
        "concurrent_server_cpu_per_s": round((cpu2[1] - cpu1[1]) / conc_s, 2),
        "concurrent_client_cpu_per_s": round((cpu2[0] - cpu1[0]) / conc_s, 2),
        "loadavg_1m_start_end": [load_start, round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
