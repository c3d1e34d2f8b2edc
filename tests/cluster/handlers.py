"""Small job handlers for the Ray executor tests (importable on the Ray workers).

``/test/sleep``: ``steps`` progress reports ``delay`` seconds apart, then a result naming the
worker process (pid) and the attempt; ``/test/crash``: the worker process exits (a dead worker).
"""

from __future__ import annotations

import json
import os
import time

from plmserve.jobs.executor import JobContext, JobOutput


def run_sleep(ctx: JobContext) -> JobOutput:
    steps, delay = int(ctx.args.get("steps", 5)), float(ctx.args.get("delay", 0.2))
    for i in range(steps):
        ctx.progress(i, steps, f"step {i}")
        time.sleep(delay)
    return JobOutput({"result.json": json.dumps({"pid": os.getpid(), "attempt": ctx.job.attempts,
                                                 "value": ctx.args.get("value")}).encode()}, num_records=1)


def run_crash(ctx: JobContext) -> JobOutput:
    ctx.progress(0, 1, "about to die")
    os._exit(3)


def run_bad(ctx: JobContext) -> JobOutput:
    from plmserve.errors import InvalidInputError

    raise InvalidInputError("bad input in row 3")


def handlers():
    return {"/test/sleep": run_sleep, "/test/crash": run_crash, "/test/bad": run_bad}


def hold_cpu(started: str, release: str, timeout: float = 300.0) -> int:
    """A plain Ray task body that holds its CPU until the file ``release`` exists (tests pin it to
    a node to keep jobs off that node); writes ``started`` first. Returns its pid."""
    from pathlib import Path

    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()
