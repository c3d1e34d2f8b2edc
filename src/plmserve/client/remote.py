"""Remote twins of the local PoET CLI computations (``plmserve poet ... --server URL``).

Each function has the signature and return value of its local counterpart in
:mod:`plmserve.cli.poet` (``score_local``, ``single_site_local``, ``generate_local``) with the
model replaced by an SDK session: the prompt replicates are uploaded (``upload_prompt``), the job
is submitted, its progress is reported through ``on_progress(done, total)`` (percent), and the
rows come back in the CLI's CSV layout (``name,sequence,score_1..score_N``;
``mut_code,score_1..`` with the wild-type row ``WT``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from plmserve.client import Session
from plmserve.client.errors import JobFailedException
from plmserve.client.jobs import AsyncJobFuture

Replicates = list[list[tuple[str, str]]]


def format_prompt_file(replicates: Replicates) -> bytes:
    """FASTA blocks separated by ``<END_PROMPT>`` lines (the ``upload_prompt`` format)."""
    blocks = ["".join(f">{name}\n{seq}\n" for name, seq in rep) for rep in replicates]
    return "<END_PROMPT>\n".join(blocks).encode()


def _wait(future: AsyncJobFuture, on_progress: Callable[[int, int], None] | None, poll: float = 0.5) -> None:
    while True:
        future.refresh()
        if on_progress is not None:
            on_progress(future.progress, 100)
        if future.done():
            if future.status.value != "SUCCESS":
                raise JobFailedException(future.id, future.job.failure_message, future.status.value)
            return
        time.sleep(poll)


def _columns(n: int) -> list[str]:
    return [f"score_{i + 1}" for i in range(n)]


def score_remote(session: Session, replicates: Replicates, variants: list[tuple[str, str]], *,
                 on_progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Score ``(name, sequence)`` variants on the server; returns ``(header, rows)``."""
    prompt = session.poet.upload_prompt(format_prompt_file(replicates))
    fasta = "".join(f">{name}\n{seq}\n" for name, seq in variants).encode()
    from plmserve.client.jobs import Job
    from plmserve.client.poet import PoetScoreFuture

    job = Job(**session.post("v1/poet/score", params={"prompt_id": prompt.prompt_id},
                             files={"variant_file": fasta}).json())
    future = PoetScoreFuture(session, job)
    _wait(future, on_progress)
    rows = [[r.name, r.sequence.decode(), *r.score] for r in future.get()]
    return ["name", "sequence"] + _columns(len(replicates)), rows


def single_site_remote(session: Session, replicates: Replicates, sequence: str, *,
                       on_progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[list[Any]]]:
    """The single-site scan on the server; rows ``WT`` then ``A1R``...."""
    prompt = session.poet.upload_prompt(format_prompt_file(replicates))
    future = session.poet.single_site(prompt, sequence)
    _wait(future, on_progress)
    rows = [["WT" if r.sequence == b"input" else r.sequence.decode(), *r.score] for r in future.get()]
    return ["mut_code"] + _columns(len(replicates)), rows


def generate_remote(session: Session, replicates: Replicates, n: int, *, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, max_length: int = 1000,
                    seed: int | None = None, on_progress: Callable[[int, int], None] | None = None
                    ) -> tuple[list[str], list[list[Any]]]:
    """Generate ``n`` sequences on the server; rows ``generated-sequence-<i>,seq,scores``."""
    prompt = session.poet.upload_prompt(format_prompt_file(replicates))
    future = session.poet.generate(prompt, num_samples=n, temperature=temperature, topk=top_k, topp=top_p,
                                   max_length=max_length, seed=seed)
    _wait(future, on_progress)
    rows = [[r.name, r.sequence.decode(), *r.score] for r in future.get()]
    return ["name", "sequence"] + _columns(len(replicates)), rows
