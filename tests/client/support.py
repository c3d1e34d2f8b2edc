"""Test support for the job service, the SDK and the end-to-end tests (not a test module).

- :func:`fresh_postgres_url`: a brand-new PostgreSQL database on the server named by
  ``PLMSERVE_TEST_POSTGRES_URL`` (dropped afterwards), so tests never share state.
- :class:`LiveServer`: a real uvicorn server on 127.0.0.1 in a background thread; ``stop()`` and
  ``start()`` again with a new app simulate a server restart.
- :func:`make_app`: ``create_app(settings)`` with job-service users added and engines installed.
- :func:`run_sdk_script`: run a client script in an official SDK's own python and read the JSON
  line it prints last.
- :func:`poet_fixture_engine`: the real PoET engine of the fixture checkpoint (cached);
  :func:`install_esm2_fixture` / :func:`install_esmc_fixture`: the tiny ESM-2 / ESM C fixtures
  copied into a model folder where the server finds them (as ``esm2-8m`` / ``esmc-<size>``).
- :class:`FakePoetEngine`: a deterministic stand-in for the PoET engine's interface
  (``score``/``single_site``/``generate``) for wire-format tests of the API layer; the
  end-to-end tests use the real engine with the fixture checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

POSTGRES_ENV = "PLMSERVE_TEST_POSTGRES_URL"


@contextlib.contextmanager
def fresh_postgres_url() -> Iterator[str]:
    """Yield the URL of a new empty database (``CREATE DATABASE``), dropped on exit."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(os.environ[POSTGRES_ENV])
    name = f"plmserve_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ), {"n": name})
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


USERS = {"alice": "alice-password", "bob": "bob-password"}


def add_users(database_url: str, users: Mapping[str, str] = USERS) -> None:
    """Add job-service ``users`` (name -> password) to the database at ``database_url``."""
    from plmserve.jobs.store import JobStore

    store = JobStore(database_url)
    for name, password in users.items():
        store.add_user(name, password)
    store.close()


def make_app(settings, models: Mapping[str, Any] | None = None, users: Mapping[str, str] = USERS):
    """``create_app(settings)`` after adding ``users`` to its database, with ``models``
    (slug -> engine, e.g. ``{"poet": FakePoetEngine()}``) installed in its model manager."""
    from plmserve.api.app import create_app

    add_users(settings.resolved_database_url(), users)
    app = create_app(settings)
    for slug, engine in (models or {}).items():
        app.state.models.put(slug, engine)
    return app


def wait_job(client, headers: Mapping[str, str] | None, job_id: str, timeout: float = 60.0,
             api: str = "/api/v1") -> dict:
    """Poll ``GET {api}/jobs/{job_id}`` with ``client`` (a ``TestClient`` or ``httpx.Client``) until the
    job is SUCCESS, FAILURE or CANCELED and return its JSON; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{api}/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def run_sdk_script(python: str, script: str | Path, *args: str, env: Mapping[str, str] | None = None,
                   timeout: float = 300, cwd: str | Path | None = None) -> Any:
    """Run ``python script *args`` (an official SDK's interpreter), assert it exits 0 (failing with
    the tail of its stderr) and return the JSON value of the last line it printed."""
    proc = subprocess.run([python, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else dict(env), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1:<port> in a thread (lifespan hooks run)."""

    def __init__(self, app, port: int | None = None):
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None
        self._thread = None

    def start(self) -> "LiveServer":
        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=60)
            self._server = None

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@functools.lru_cache(maxsize=1)
def poet_fixture_engine():
    """The PoET engine of the fixture checkpoint (CPU, float32), loaded once per test process."""
    from plmserve.models.poet.engine import PoET
    from tests.conftest import shared_path

    return PoET.from_checkpoint(shared_path("fixtures", "poet", "model.ckpt"), device="cpu", dtype="float32")


def install_esm2_fixture(model_dir: Path) -> None:
    """Copy the tiny fair-esm ESM-2 fixture (and its contact regression) into ``model_dir`` under
    the file names of ``esm2_t6_8M_UR50D``, so the server serves it as ``esm2-8m``."""
    from tests.conftest import shared_path

    src = shared_path("fixtures", "esm2")
    shutil.copy(src / "esm2_tiny.pt", model_dir / "esm2_t6_8M_UR50D.pt")
    shutil.copy(src / "esm2_tiny-contact-regression.pt", model_dir / "esm2_t6_8M_UR50D-contact-regression.pt")


def install_esmc_fixture(model_dir: Path, size: str = "300m") -> None:
    """Copy the tiny official-layout ESM C fixture into ``model_dir/esmc-<size>/data/weights/``
    (the official snapshot layout, with a ``config.json`` giving its 4 heads)."""
    from tests.conftest import shared_path

    w = model_dir / f"esmc-{size}" / "data" / "weights"
    w.mkdir(parents=True)
    shutil.copy(shared_path("fixtures", "esmc", "model.pth"), w / f"esmc_{size}_2024_12_v0.pth")
    (w / "config.json").write_text(json.dumps({"n_heads": 4}))


class FakePoetEngine:
    """Deterministic test double with the PoET engine's interface
    (:class:`plmserve.models.poet.engine.PoET`: ``score``, ``single_site``, ``generate``, each
    taking one prompt or a list of replicate prompts and a ``progress(done, total)`` callback).

    ``score`` of one sequence under one prompt = -(len(seq) + 0.5 * number of prompt sequences
    + 0.01 * (index of the first 'W' + 1)), so scores differ per replicate and per sequence.
    ``generate`` draws from ``numpy.random.default_rng(seed)``. ``delay`` seconds are slept per
    sequence (to observe RUNNING jobs, progress and cancellation).
    """

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    @staticmethod
    def _prompts(prompt):
        return prompt if prompt and isinstance(prompt[0], list) else [prompt]

    @staticmethod
    def one(prompt_len: int, seq: str) -> float:
        return -(len(seq) + 0.5 * prompt_len + 0.01 * (seq.find("W") + 1))

    def score(self, prompt, sequences, *, reverse=True, progress=None):
        prompts = self._prompts(prompt)
        out = np.zeros((len(prompts), len(sequences)))
        for i, seq in enumerate(sequences):
            if self.delay:
                time.sleep(self.delay)
            out[:, i] = [self.one(len(p), seq) for p in prompts]
            if progress is not None:
                progress(i + 1, len(sequences))
        return out if prompt and isinstance(prompt[0], list) else out[0]

    def single_site(self, prompt, sequence, *, reverse=True, progress=None):
        mutants = [("WT", sequence)]
        for pos, wt in enumerate(sequence, start=1):
            for aa in "ARNDCQEGHILKMFPSTWYV":
                if aa != wt:
                    mutants.append((f"{wt}{pos}{aa}", sequence[: pos - 1] + aa + sequence[pos:]))
        scores = self.score(self._prompts(prompt), [m for _, m in mutants], progress=progress)
        return [(code, scores[:, i]) for i, (code, _) in enumerate(mutants)]

    def generate(self, prompt, n, *, temperature=1.0, top_k=None, top_p=None, max_length=1000, seed=None,
                 progress=None):
        prompts = self._prompts(prompt)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            length = int(rng.integers(5, 12))
            seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length))
            out.append((seq, np.array([self.one(len(p), seq) for p in prompts])))
        return out


def _postgres_url_fixture():
    import pytest

    @pytest.fixture
    def postgres_url():
        """A fresh PostgreSQL database (CI runs one; locally: ``bash .ci/start_postgres.sh``)."""
        if not os.environ.get(POSTGRES_ENV):
            pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it; locally run .ci/start_postgres.sh and export it)")
        with fresh_postgres_url() as url:
            yield url

    return postgres_url


postgres_url = _postgres_url_fixture()
