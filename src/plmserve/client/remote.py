"""``RemoteEngine``: the PoET engine interface, computed by a plmserve server (``--server URL``).

It has the methods of :class:`plmserve.models.poet.engine.PoET` that the CLI uses --
``score``, ``single_site``, ``generate``, each taking a list of prompt replicates and a
``progress(done, total)`` callback -- so ``plmserve poet ... --server URL`` only swaps the engine.
Each call uploads the replicates as a prompt (``upload_prompt``), submits the job, reports the
job's progress (percent) and returns the same shapes as the local engine:

- ``score`` -> float64 ``[n_replicates, n_sequences]``;
- ``single_site`` -> ``[("WT", scores), ("A1R", scores), ...]`` with ``scores`` ``[n_replicates]``;
- ``generate`` -> ``[(sequence, scores[n_replicates])]``.

The server always averages forward and backward scores (``reverse=True``).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Sequence

import numpy as np

from plmserve.client.errors import JobFailedException
from plmserve.client.jobs import AsyncJobFuture, Job
from plmserve.errors import InvalidInputError, InvalidParameterError

Progress = Callable[[int, int], None]


def format_prompt_file(replicates: Sequence[Sequence[Any]]) -> bytes:
    """FASTA blocks separated by ``<END_PROMPT>`` lines (the ``upload_prompt`` format).
    Prompt items are sequences or ``(name, sequence)`` pairs."""
    blocks = []
    for rep in replicates:
        lines = []
        for i, item in enumerate(rep, start=1):
            name, seq = item if isinstance(item, (tuple, list)) else (f"prompt-{i}", item)
            lines.append(f">{name}\n{seq}\n")
        blocks.append("".join(lines))
    return "<END_PROMPT>\n".join(blocks).encode()


def _is_list_of_lists(prompt: Any) -> bool:
    """Several replicates (a list of prompts), as the local engine decides."""
    return bool(prompt) and isinstance(prompt[0], list)


def _as_ensemble(prompt: Any) -> list:
    return list(prompt) if _is_list_of_lists(prompt) else [prompt]


class RemoteEngine:
    """PoET computed by the server at ``session`` (a :class:`plmserve.client.Session`).

    Args:
        session: a logged-in SDK session.
        poll_interval: seconds between job-status polls.
    """

    is_dummy = False

    def __init__(self, session: Any, poll_interval: float = 0.5):
        self.session = session
        self.poll_interval = poll_interval

    def _prompt(self, prompt: Any) -> tuple[str, int]:
        reps = _as_ensemble(prompt)
        return self.session.poet.upload_prompt(format_prompt_file(reps)).prompt_id, len(reps)

    def _wait(self, future: AsyncJobFuture, progress: Progress | None) -> None:
        while True:
            future.refresh()
            if progress is not None:
                progress(future.progress, 100)
            if future.done():
                if future.status.value != "SUCCESS":
                    raise JobFailedException(future.id, future.job.failure_message, future.status.value)
                return
            time.sleep(self.poll_interval)

    @staticmethod
    def _check_reverse(reverse: bool) -> None:
        if not reverse:
            raise InvalidParameterError(
                "forward-only scores (--no-reverse) are not available with --server: the server averages "
                "the forward and backward scores")

    def score(self, prompt: Any, sequences: Sequence[str], *, reverse: bool = True,
              progress: Progress | None = None) -> np.ndarray:
        """``[n_replicates, n_sequences]`` log-likelihoods (``[n_sequences]`` for one plain prompt)."""
        from plmserve.client.poet import PoetScoreFuture

        self._check_reverse(reverse)
        prompt_id, n_reps = self._prompt(prompt)
        fasta = "".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)).encode()
        job = Job(**self.session.post("v1/poet/score", params={"prompt_id": prompt_id},
                                      files={"variant_file": fasta}).json())
        future = PoetScoreFuture(self.session, job)
        self._wait(future, progress)
        out = np.array([r.score for r in future.get()], dtype=np.float64).T
        return out if _is_list_of_lists(prompt) else out[0]

    def single_site(self, prompt: Any, sequence: str, *, reverse: bool = True,
                    positions: list[int] | None = None,
                    progress: Progress | None = None) -> list[tuple[str, Any]]:
        """``[("WT", scores), ("A1R", scores), ...]``; with ``positions`` (1-based) the server's full
        scan is filtered to the wild type and those positions, in the given order."""
        self._check_reverse(reverse)
        prompt_id, _ = self._prompt(prompt)
        future = self.session.poet.single_site(prompt_id, sequence)
        self._wait(future, progress)
        many = _is_list_of_lists(prompt)
        rows = [(r.sequence.decode(),  # the SDK already names the wild-type row WT
                 np.array(r.score) if many else float(r.score[0])) for r in future.get()]
        if positions is None:
            return rows
        for p in positions:
            if not 1 <= p <= len(sequence):
                raise InvalidInputError(f"position {p} is outside the sequence (1..{len(sequence)})", position=p)
        keep, by_position = [], {}
        for code, score in rows:
            match = re.fullmatch(r"[A-Z](\d+)[A-Z]", code)
            if match is None:  # the wild-type row
                keep.append((code, score))
            else:
                by_position.setdefault(int(match.group(1)), []).append((code, score))
        return keep + [row for p in positions for row in by_position.get(p, [])]

    def generate(self, prompt: Any, n: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, max_length: int = 1000, seed: int | None = None,
                 progress: Progress | None = None) -> list[tuple[str, Any]]:
        """``[(sequence, scores)]`` sampled by the server (same seed -> same sequences)."""
        prompt_id, _ = self._prompt(prompt)
        future = self.session.poet.generate(prompt_id, num_samples=n, temperature=temperature, topk=top_k,
                                            topp=top_p, max_length=max_length, seed=seed)
        self._wait(future, progress)
        many = _is_list_of_lists(prompt)
        return [(r.sequence.decode(), np.array(r.score) if many else float(r.score[0])) for r in future.get()]

