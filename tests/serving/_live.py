"""Start ``plmserve serve`` in a subprocess on a free port (helpers for the live-server tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.client.support import free_port

KEY = "serving-test-key"
AUTH = {"Authorization": f"Token {KEY}"}


class LiveServer:
    """A running server: ``base`` URL, ``proc``, ``log`` (its stdout+stderr file).

    ``plmserve serve --host 127.0.0.1 --port <free> --load-format <load_format> *args`` with the
    API key :data:`KEY`, data in ``tmp/data`` and ``env`` added to the environment; the constructor
    returns once ``/health`` answers 200 (RuntimeError with the server's output if it exits or takes
    over 120 s). ``load_format=None`` leaves the flag out (the server's default).
    """

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None,
                 load_format: str | None = "dummy"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        full_env = {**os.environ, "PLMSERVE_API_KEYS": f'["{KEY}"]', "HF_HUB_OFFLINE": "1",
                    "PLMSERVE_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1", **(env or {})}
        full_env.pop("PLMSERVE_DATABASE_URL", None)
        cmd = [sys.executable, "-c", "from plmserve.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *(("--load-format", load_format) if load_format else ()), *args]
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._fh, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 120 s")
            time.sleep(0.3)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample (0.0 when absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        return 0.0

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
