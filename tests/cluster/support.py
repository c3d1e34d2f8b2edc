"""A real local Ray cluster for tests and benchmarks (not a test module).

:class:`LocalRayCluster` starts a head (``ray start --head --block``) and more node processes
(``ray start --address``) on 127.0.0.1, each with its own ``--num-cpus``, on free ports and in a
private temp dir, with this checkout on the workers' ``PYTHONPATH``. :meth:`LocalRayCluster.stop`
ends exactly the processes it started (the ``ray start --block`` processes and their process
trees, found by pid), never ``ray stop`` (which would end every Ray process on the machine).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.client.support import free_port
from tests.datafiles import REPO_ROOT


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return shutil.which("ray") is not None or Path(sys.executable).with_name("ray").exists()


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Ray nodes and API processes: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    # RAY_AUTH_MODE: a private loopback cluster, independent of a token in ~/.ray of this machine
    env.update({"PYTHONPATH": os.pathsep.join(paths), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


class LocalRayCluster:
    """Head + nodes on 127.0.0.1 (see module docstring).

    Args:
        head_cpus: ``--num-cpus`` of the head (its ``CPU`` resource; 0 keeps jobs off the head).
        object_store_mb: per node (small: the tests move little data).
    """

    def __init__(self, head_cpus: float = 1, object_store_mb: int = 80):
        self.head_cpus = head_cpus
        self.object_store_mb = object_store_mb
        self.temp_dir = Path(tempfile.mkdtemp(prefix="plmray", dir="/tmp"))  # short: socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.env = cluster_env()

    def _common(self, num_cpus: float) -> list[str]:
        base = random.randrange(12000, 30000, 200)  # below the ephemeral range free_port() draws from
        return [f"--num-cpus={num_cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                f"--object-store-memory={self.object_store_mb * 10**6}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--min-worker-port={base}", f"--max-worker-port={base + 150}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}", "--block"]

    def _spawn(self, args: list[str], tag: str) -> subprocess.Popen:
        log = self.temp_dir / f"{tag}.log"
        self.logs.append(log)
        proc = subprocess.Popen([_ray_cli(), "start", *args], env=self.env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120) -> "LocalRayCluster":
        """Start the head and wait until it accepts a driver."""
        self._spawn(["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
                     f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}",
                     *self._common(self.head_cpus)], "head")
        self.wait_for(cpus=self.head_cpus, nodes=1, timeout=timeout)
        return self

    def add_node(self, num_cpus: float = 1, timeout: float = 120) -> subprocess.Popen:
        """Start one more node process (``ray start --address``) and wait until it joined."""
        before = self.alive_nodes()
        proc = self._spawn([f"--address={self.address}", *self._common(num_cpus)], f"node{len(self.procs)}")
        self.wait_for(nodes=before + 1, timeout=timeout)
        return proc

    def _status(self) -> dict:
        code = ("import ray,json;ray.init(address=%r,log_to_driver=False);"
                "print(json.dumps({'nodes':sum(n['Alive'] for n in ray.nodes()),"
                "'cpus':ray.cluster_resources().get('CPU',0)}))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        import json

        for line in out.stdout.splitlines()[::-1]:
            if line.startswith("{"):
                return json.loads(line)
        return {"nodes": 0, "cpus": 0}

    def alive_nodes(self) -> int:
        return int(self._status()["nodes"])

    def wait_for(self, *, nodes: int, cpus: float | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a ray node exited ({p.returncode}):\n{self.log_tail()}")
            try:
                st = self._status()
                if st["nodes"] >= nodes and (cpus is None or st["cpus"] >= cpus):
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not come up:\n{self.log_tail()}")
            time.sleep(1)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:])
                         for log in self.logs if log.exists())

    def stop_node(self, proc: subprocess.Popen) -> None:
        """End one node process and its process tree (by pid)."""
        _end_tree(proc)

    def stop(self) -> None:
        """End every process this cluster started (nodes first, then the head) and remove its temp dir."""
        for proc in reversed(self.procs):
            _end_tree(proc)
        # anything still running that belongs to this cluster's session dir (by pid, our dir only)
        import psutil

        mine = str(self.temp_dir)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(mine in a for a in (p.info["cmdline"] or [])):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _end_tree(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM ``proc`` (``ray start --block`` then drains and ends its daemons), then SIGKILL
    whatever of its process tree is left."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for child in tree:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


class ApiProcess:
    """``plmserve serve`` as a real separate process (so it can be killed with SIGKILL).

    Args:
        args: extra ``serve`` flags (e.g. ``["--executor", "ray", "--ray-address", addr]``).
        env: extra environment (``PLMSERVE_*`` settings).
        log: file receiving the server's output.
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int | None = None):
        self.args, self.extra_env, self.log = list(args), dict(env), log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "ApiProcess":
        import httpx

        cmd = [sys.executable, "-c", "from plmserve.cli import main; main()", "serve", "--port", str(self.port),
               *self.args]
        self.proc = subprocess.Popen(cmd, env=cluster_env(self.extra_env), stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plmserve serve exited ({self.proc.returncode}):\n"
                                   + self.log.read_text(errors="replace")[-4000:])
            try:
                if httpx.get(self.url + "/docs", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("plmserve serve did not start:\n" + self.log.read_text(errors="replace")[-4000:])
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the API process (no shut-down hooks run)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def run_in_process(store, settings, job_type: str, args: dict, prerequisite: str | None,
                   artifacts: dict | None = None, timeout: float = 600) -> str:
    """Run one job with the default in-process executor (the reference the Ray runs are compared
    with); asserts it succeeded and returns its id."""
    from plmserve.jobs import poet as pj
    from plmserve.jobs.executor import InProcessExecutor
    from plmserve.jobs.store import SUCCESS
    from plmserve.models.registry import ModelManager

    job = store.create_job(job_type, "reference", args, prerequisite_job_id=prerequisite, artifacts=artifacts)
    ex = InProcessExecutor(store, pj.handlers(), resources=pj.PoetResources(settings, ModelManager(settings)))
    ex.start()
    try:
        ex.submit(job.job_id)
        assert ex.wait_idle(timeout)
    finally:
        ex.stop()
    assert store.get_job(job.job_id).status == SUCCESS, store.get_job(job.job_id)
    return job.job_id
