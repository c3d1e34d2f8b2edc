"""PoET scoring through the model's batching scheduler (:class:`~plmserve.serving.scheduler.ModelScheduler`).

PoET jobs (``/poet``, ``/poet/score``, ``/poet/score/indel``, ``/poet/single_site``) run in job
worker threads; before, each called the engine directly, so with several job workers the model
ran on several threads at once and a 1-variant score job waited behind, or competed with, a
100,000-variant single-site scan. Here every PoET forward pass of those jobs is a unit of the
loaded model's one scheduler:

* **Units.** Per prompt replicate and direction (forward, backward), one unit embeds the prompt
  (``poet_prompt``; for a single-site scan it also decodes the wild type once:
  ``poet_site``); then one unit per variant (``poet_score``: cost = its padded tokens, ``L + 2``)
  or per substitution (``poet_single_site``: cost = the suffix it decodes after the wild type's
  cached prefix, ``L + 1 - p``). The job waits for the prompt unit, then queues the variant
  units of that replicate/direction and waits (one prompt cache alive per job at a time, as
  :meth:`PoET.score <plmserve.models.poet.engine.PoET.score>` keeps it).
* **Batches.** Variant units only share a batch when they have the same key: the same
  computation and the same prompt (and, for a scan, wild type and direction), compared by a
  digest of the sequences, because a batch attends to one prompt's encoded memory. Two jobs
  scoring against the same prompt therefore share forward passes. Inside a batch the engine
  groups rows of similar length (:meth:`PoET._batches`) and masks the padding, so batched
  scores equal unbatched ones (to float rounding; ``tests/serving/test_poet_scheduler.py``).
* **Fairness.** The principal of a job's units is ``owner/job id``
  (:func:`plmserve.jobs.poet.job_principal`): batches go round-robin between principals, so a
  1-variant score job is served between the chunks of a long scan, not after it (within one
  principal: least attained service first).
* **Cancellation.** A canceled job's queued units are dropped (never computed) at its next poll
  (at most ``poll_s``, 0.2 s, after the executor's cancel), see :meth:`ModelScheduler.run_sync`.
* **Queue full.** A job's units that do not fit in the bounded queue wait and are retried; the
  job does not fail.

Engines without the prompt-cache API (test doubles with only ``score``/``single_site``) are
called directly by the job functions (:func:`supports`).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Callable, Sequence

import numpy as np

from plmserve.serving.scheduler import BatchMethod, ModelScheduler, Unit, register_method

Progress = Callable[[int, int], None]

FAMILY = "poet"


def supports(engine: Any) -> bool:
    """Whether ``engine`` has the prompt-cache API the scheduled path needs (a real PoET)."""
    return all(hasattr(engine, a) for a in ("embed", "score_direction", "single_site_prefix", "single_site_suffix"))


def digest(*parts: Any) -> str:
    """A short content key (SHA-1 of the parts' ``repr``) for a prompt / wild type / direction."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------
# batch methods (run in the model's worker thread)


def _run_prompt(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    """payload ``(prompt sequences, reverse)`` -> :class:`PromptCache`."""
    return [engine.embed(list(p), reverse=r) for p, r in payloads]


def _run_site(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    """payload ``(prompt sequences, reverse, wild type)`` -> :class:`SiteContext`."""
    return [engine.single_site_prefix(engine.embed(list(p), reverse=r), wt) for p, r, wt in payloads]


def _run_score(engine: Any, payloads: list[Any], params: dict) -> list[float]:
    """payload ``(PromptCache, sequence)`` -> log-likelihood in the cache's direction. Every
    payload of a batch has the same key (prompt digest and direction), so the first payload's
    cache serves them all."""
    cache = payloads[0][0]
    return [float(x) for x in engine.score_direction(cache, [s for _, s in payloads])]


def _run_single_site(engine: Any, payloads: list[Any], params: dict) -> list[float]:
    """payload ``(SiteContext, (residue index, amino-acid id))`` -> the mutant's log-likelihood;
    rows grouped by suffix length like :meth:`PoET.single_site`."""
    site = payloads[0][0]
    muts = [m for _, m in payloads]
    out = np.zeros(len(muts), dtype=np.float64)
    for batch in engine._batches([site.suffix_length(i) for i, _ in muts]):
        out[batch] = engine.single_site_suffix(site, [muts[j] for j in batch])
    return out.tolist()


def decode_arrays(engine: Any, cache: Any, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-residue logits ``[L, V]`` and final (LayerNorm-ed) hidden states ``[L, D]`` (float32)
    of one checked ``sequence`` after the prompt ``cache`` (forward direction; conventions in
    :mod:`plmserve.jobs.poet_v1`): one decoder pass over ``*SEQ``, unpadded, the hidden states
    read by a forward hook on the output projection that only records this thread's pass (other
    threads may use the model at the same time)."""
    import torch

    from plmserve.models.poet import alphabet as A

    model = engine.model
    tok = torch.as_tensor(A.encode_sequence(sequence), device=engine.device)[None, :-1]  # [1, L+1]
    pos = torch.arange(tok.shape[1], device=engine.device)[None, :]
    L = len(sequence)
    me = threading.get_ident()
    seen: list = []

    def hook(_m, inp, _o):
        if threading.get_ident() == me:
            seen.append(inp[0])

    handle = model.linear.register_forward_hook(hook)
    try:
        logits, _ = model.decode(tok, pos, memory=cache.memory)
    finally:
        handle.remove()
    return logits[0, :L].float().cpu().numpy(), seen[0][0, 1: L + 1].float().cpu().numpy()


def _run_arrays(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    """payload ``(PromptCache, sequence)`` -> ``(logits [L, V], hidden [L, D])``, one pass each."""
    cache = payloads[0][0]
    return [decode_arrays(engine, cache, s) for _, s in payloads]


def _no_expand(engine: Any, items: Sequence[Any], params: dict) -> list[Unit]:
    raise NotImplementedError("PoET units are built by plmserve.serving.poet_batching")


PROMPT = BatchMethod(expand=_no_expand, run=_run_prompt)
SITE = BatchMethod(expand=_no_expand, run=_run_site)
SCORE = BatchMethod(expand=_no_expand, run=_run_score)
SINGLE_SITE = BatchMethod(expand=_no_expand, run=_run_single_site)
ARRAYS = BatchMethod(expand=_no_expand, run=_run_arrays)
for _name, _method in (("poet_prompt", PROMPT), ("poet_site", SITE), ("poet_score", SCORE),
                       ("poet_single_site", SINGLE_SITE), ("poet_arrays", ARRAYS)):
    register_method(FAMILY, _name, _method)


# ------------------------------------------------------------------------------------------------
# the scheduler of a loaded PoET engine


class PoetSchedulers:
    """The schedulers of the PoET engines a job process uses (one per loaded engine object).

    Args:
        settings: ``max_queue_items``, ``batch_target_s``, ``express_max_tokens`` (the batching
            settings of every model); the token budget of a batch is the engine's
            ``batch_tokens`` (4,096).
    """

    def __init__(self, settings: Any = None):
        self.settings = settings
        self._lock = threading.Lock()
        self._by_slug: dict[str, ModelScheduler] = {}

    def get(self, engine: Any, slug: str = "poet") -> ModelScheduler:
        """The scheduler of ``engine`` (created on first use; replaced when the model was reloaded)."""
        with self._lock:
            sched = self._by_slug.get(slug)
            if sched is not None and sched.engine is engine and sched.alive():
                return sched
            if sched is not None:
                sched.stop(timeout=0)
            s = self.settings
            sched = ModelScheduler(slug, engine,
                                   toks_per_batch=int(getattr(engine, "batch_tokens", 0) or 4096),
                                   max_queue_items=int(getattr(s, "max_queue_items", 65536) or 65536),
                                   batch_target_s=getattr(s, "batch_target_s", None),
                                   express_max_tokens=int(getattr(s, "express_max_tokens", 0) or 0))
            self._by_slug[slug] = sched
            return sched

    def items(self) -> list[tuple[str, ModelScheduler]]:
        """``(slug, scheduler)`` of every scheduler created so far (readiness checks)."""
        with self._lock:
            return list(self._by_slug.items())

    def stop(self) -> None:
        """Stop every scheduler (queued work fails with 503; shut-down)."""
        with self._lock:
            scheds = list(self._by_slug.values())
            self._by_slug.clear()
        for sched in scheds:
            sched.stop()


# ------------------------------------------------------------------------------------------------
# the operations (called from job threads)


def _stage(progress: Progress | None, offset: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _n: progress(offset + done, total)


def _one(sched: ModelScheduler, principal: str, name: str, method: BatchMethod, unit: Unit, params: dict,
         progress: Progress | None) -> Any:
    return sched.run_sync(principal, [(name, method, [unit], params)], check=progress)[0][0]


def _prompt_tokens(prompt: Sequence[str]) -> int:
    return max(1, sum(len(s) + 2 for s in prompt))


def score(sched: ModelScheduler, principal: str, prompts: Sequence[Sequence[str]], sequences: Sequence[str], *,
          reverse: bool = True, progress: Progress | None = None) -> np.ndarray:
    """Log-likelihood of each sequence under each prompt, computed through ``sched``.

    The same numbers as ``PoET.score(prompts, sequences, reverse=reverse)`` (spec §5: natural-log
    sums, forward/backward averaged when ``reverse``), within float rounding.

    Args:
        sched: the scheduler of a loaded PoET engine (:class:`PoetSchedulers`).
        principal: fairness key (the job's owner).
        prompts: the replicates, each a list of ungapped prompt sequences (may be empty).
        sequences: the variants (``X``/``B``/``Z`` allowed).
        progress: ``progress(done, total)`` in variants x replicates x directions; whatever it
            raises (a canceled job) stops the work, dropping the queued units.

    Returns:
        float64 ``[n_prompts, n_sequences]``.

    Raises:
        InvalidInputError: no sequences, or a bad character (names the item and position).
    """
    from plmserve.errors import InvalidInputError
    from plmserve.models.poet import alphabet as A

    seqs = [A.check_sequence(s, what="sequence", item=i) for i, s in enumerate(sequences)]
    if not seqs:
        raise InvalidInputError("no sequences to score")
    prompts = [[s.replace("-", "").replace(".", "") for s in p] for p in prompts]
    directions = [False, True] if reverse else [False]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths share batches
    total = len(seqs) * len(prompts) * len(directions)
    out = np.zeros((len(prompts), len(directions), len(seqs)), dtype=np.float64)
    offset = 0
    for pi, prompt in enumerate(prompts):
        key = digest(prompt)
        for di, rev in enumerate(directions):
            cache = _one(sched, principal, "poet_prompt", PROMPT, Unit(_prompt_tokens(prompt), 0, (prompt, rev)),
                         {}, None if progress is None else (lambda d, n, at=offset: progress(at, total)))
            units = [Unit(cost=len(seqs[i]) + 2, item=i, payload=(cache, seqs[i])) for i in order]
            params = {"prompt": key, "reverse": rev}
            vals = sched.run_sync(principal, [("poet_score", SCORE, units, params)],
                                  check=_stage(progress, offset, total))[0]
            out[pi, di, order] = vals
            offset += len(seqs)
            cache = units = None  # free the prompt cache before the next one is computed
    return out.mean(axis=1)


def single_site_mutants(wt: str, positions: Sequence[int] | None = None) -> tuple[list[tuple[int, int]], list[str]]:
    """The substitutions of a single-site scan, as :meth:`PoET.single_site` orders them:
    ``[(0-based residue, amino-acid id)]`` and the codes ``["WT", "A1R", ...]``."""
    from plmserve.models.poet import alphabet as A

    scan = range(len(wt)) if positions is None else [int(p) - 1 for p in positions]
    muts, codes = [], ["WT"]
    for i in scan:
        for a, aa in enumerate(A.AMINO_ACIDS):
            if aa != wt[i]:
                muts.append((i, a))
                codes.append(f"{wt[i]}{i + 1}{aa}")
    return muts, codes


def single_site(sched: ModelScheduler, principal: str, prompts: Sequence[Sequence[str]], sequence: str, *,
                reverse: bool = True, positions: Sequence[int] | None = None,
                progress: Progress | None = None) -> list[tuple[str, np.ndarray]]:
    """The single-site scan of ``sequence`` under each prompt, computed through ``sched``: the
    same rows as ``PoET.single_site(prompts, sequence, reverse=reverse)`` (``("WT", s)`` then
    ``A1R``... in scan order; absolute log-likelihoods, forward/backward averaged).

    ``positions``: scan only these 1-based positions (default: all), in the given order.

    Per replicate and direction one ``poet_site`` unit embeds the prompt and decodes the wild
    type once; then every substitution is a unit decoding only its suffix.

    Returns:
        ``[(code, float64 [n_prompts])]``.

    Raises:
        InvalidInputError: a bad character in ``sequence`` or a prompt; a position outside
            ``1..len(sequence)``.
    """
    from plmserve.errors import InvalidInputError
    from plmserve.models.poet import alphabet as A

    wt = A.check_sequence(sequence, what="sequence")
    for p in positions or ():
        if not 1 <= int(p) <= len(wt):
            raise InvalidInputError(f"position {p} is outside the sequence (1..{len(wt)})", position=int(p))
    prompts = [[s.replace("-", "").replace(".", "") for s in p] for p in prompts]
    muts, codes = single_site_mutants(wt, positions)
    directions = [False, True] if reverse else [False]
    total = len(muts) * len(prompts) * len(directions)
    cols = np.zeros((len(prompts), len(directions), len(codes)), dtype=np.float64)
    offset = 0
    for pi, prompt in enumerate(prompts):
        key = digest(prompt)
        for di, rev in enumerate(directions):
            site = _one(sched, principal, "poet_site", SITE,
                        Unit(_prompt_tokens(prompt) + len(wt) + 2, 0, (prompt, rev, wt)), {},
                        None if progress is None else (lambda d, n, at=offset: progress(at, total)))
            # longest suffixes first: consecutive units (one batch) have similar lengths
            order = sorted(range(len(muts)), key=lambda j, st=site: -st.suffix_length(muts[j][0]))
            units = [Unit(cost=site.suffix_length(muts[j][0]), item=j, payload=(site, muts[j])) for j in order]
            params = {"prompt": key, "reverse": rev, "wild_type": digest(wt)}
            vals = sched.run_sync(principal, [("poet_single_site", SINGLE_SITE, units, params)],
                                  check=_stage(progress, offset, total))[0]
            cols[pi, di, 0] = site.wt_score
            cols[pi, di, 1 + np.asarray(order, dtype=np.int64)] = vals
            offset += len(muts)
            site = units = None  # free the prompt cache before the next one is computed
    mat = cols.mean(axis=1)  # [P, rows]
    return [(code, mat[:, r]) for r, code in enumerate(codes)]


def arrays(sched: ModelScheduler, principal: str, prompts: Sequence[Sequence[str]], sequences: Sequence[str], *,
           progress: Progress | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-residue logits and final hidden states of every sequence under every prompt
    (forward direction), computed through ``sched``: per replicate one ``poet_prompt`` unit,
    then one ``poet_arrays`` unit per sequence (cost ``L + 2``; decoded alone, unpadded).

    Args:
        sequences: checked sequences (:func:`plmserve.jobs.poet.check_sequence`).
        progress: ``progress(done, total)`` in sequences x replicates.

    Returns:
        Per sequence ``(logits [N, L, V], hidden [N, L, D])`` float32, ``N`` = replicates.
    """
    prompts = [[s.replace("-", "").replace(".", "") for s in p] for p in prompts]
    total = len(sequences) * len(prompts)
    per_prompt: list[list[Any]] = []
    offset = 0
    for prompt in prompts:
        cache = _one(sched, principal, "poet_prompt", PROMPT, Unit(_prompt_tokens(prompt), 0, (prompt, False)), {},
                     None if progress is None else (lambda d, n, at=offset: progress(at, total)))
        units = [Unit(cost=len(s) + 2, item=i, payload=(cache, s)) for i, s in enumerate(sequences)]
        per_prompt.append(sched.run_sync(principal, [("poet_arrays", ARRAYS, units, {"prompt": digest(prompt)})],
                                         check=_stage(progress, offset, total))[0])
        offset += len(sequences)
        cache = units = None  # free the prompt cache before the next one is computed
    return [(np.stack([r[i][0] for r in per_prompt]), np.stack([r[i][1] for r in per_prompt]))
            for i in range(len(sequences))]
