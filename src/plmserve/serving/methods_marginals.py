"""Variant scoring (masked / wild-type marginals) through the batching scheduler, for ESM-2 and ESM C.

Scoring mutants of a wild type (ESM-1v's masked marginals, Meier et al. 2021; ProteinGym) takes
one forward pass per distinct set M of mutated positions (``masked_marginals``: M masked
together) or one unmasked pass over the wild type (``wt_marginals``). Those passes are the
scheduler's units here, registered for both families:

* ``masked_log_probs``: an item is ``(residue_ids int64[L], positions)``; result float64
  ``[len(positions), V]`` (the engine's ``masked_log_probs``);
* ``unmasked_log_probs``: an item is ``residue_ids int64[L]``; result float64 ``[L, V]`` (the
  engine's ``unmasked_log_probs``).

:func:`score_mutants_batched` parses the codes (errors before anything is queued), queues the
passes and combines them with :func:`plmserve.models.marginals.marginal_scores`, the rule the
engines' own ``score_mutants`` use, so a scheduled score equals the engine's direct one up to
float32 summation order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from plmserve.serving.scheduler import BatchMethod, Unit, register_method, run_batched


def _masked_units(engine: Any, jobs: Sequence[Any], params: dict) -> list[Unit]:
    return [Unit(cost=len(r) + 2, item=i, payload=(np.asarray(r, dtype=np.int64), tuple(int(p) for p in m)))
            for i, (r, m) in enumerate(jobs)]  # fmt: skip


def _masked(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    return engine.masked_log_probs(payloads)


def _unmasked_units(engine: Any, rows: Sequence[Any], params: dict) -> list[Unit]:
    return [Unit(cost=len(r) + 2, item=i, payload=np.asarray(r, dtype=np.int64)) for i, r in enumerate(rows)]


def _unmasked(engine: Any, payloads: list[Any], params: dict) -> list[Any]:
    return engine.unmasked_log_probs(payloads)


for _family in ("esm2", "esmc"):
    register_method(_family, "masked_log_probs", BatchMethod(expand=_masked_units, run=_masked))
    register_method(_family, "unmasked_log_probs", BatchMethod(expand=_unmasked_units, run=_unmasked))


def _alphabet(family: str):
    if family == "esmc":
        from plmserve.models.esmc.alphabet import RESIDUE_LETTERS, TOKEN_ID, encode_residues
    else:
        from plmserve.models.esm2.alphabet import RESIDUE_LETTERS, TOKEN_ID, encode_residues
    return RESIDUE_LETTERS, TOKEN_ID, encode_residues


async def score_mutants_batched(request: Any, slug: str, engine: Any, wild_type: str, mutants: Sequence[str],
                                method: str = "masked_marginals", *, family: str = "esm2",
                                principal: Any = None) -> np.ndarray:
    """``engine.score_mutants(wild_type, mutants, method)`` with its forward passes computed by the
    model's batching scheduler (shared with every other client's requests).

    Args:
        request: the Starlette request (app state, disconnect detection).
        slug: model name; ``family``: ``esm2`` or ``esmc``.
        engine: the loaded engine (validation only; the passes run in the scheduler's worker).
        wild_type: validated wild-type sequence; ``mutants``: codes ``A42G`` / ``A42G:L50P`` (1-based).
        method: ``masked_marginals`` (one pass per distinct set of mutated positions) or
            ``wt_marginals`` (one unmasked pass).

    Returns:
        float64 ``[len(mutants)]``, natural-log units (higher = more favourable than the wild type).

    Raises:
        InvalidInputError: a malformed code / wild-type mismatch (names the row), before queueing.
        InvalidParameterError: unknown method. ServiceUnavailableError: the model's queue is full.
    """
    from plmserve.models.marginals import check_method, marginal_scores, parse_substitutions

    check_method(method)
    letters, token_id, encode_residues = _alphabet(family)
    parsed = parse_substitutions(wild_type, list(mutants), letters)
    r = encode_residues(wild_type)
    if method == "wt_marginals":
        (wt_lp,) = await run_batched(request, slug, "unmasked_log_probs", [r], family=family, principal=principal)
        return marginal_scores(parsed, r, token_id, method, lambda: wt_lp, None)  # type: ignore[arg-type]
    sets = sorted({tuple(sorted(s.index for s in subs)) for subs in parsed})
    lps = await run_batched(request, slug, "masked_log_probs", [(r, m) for m in sets], family=family,
                            principal=principal)  # fmt: skip
    table = dict(zip(sets, lps))
    return marginal_scores(parsed, r, token_id, method, lambda: None,  # type: ignore[arg-type,return-value]
                           lambda jobs: [table[tuple(m)] for _, m in jobs])
