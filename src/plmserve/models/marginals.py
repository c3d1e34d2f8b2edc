"""Zero-shot substitution scores from a masked language model's log-probabilities, shared by the
ESM-2 and ESM C engines (ESM-1v's masked / wild-type marginals, Meier et al. 2021; ProteinGym).

The engines supply the forward passes; this module parses the mutation codes and combines the
log-probabilities, so both families score variants by exactly the same rule.
"""

from __future__ import annotations

from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from plmserve.bio.mutations import Substitution, parse_mutant
from plmserve.errors import InvalidInputError, InvalidParameterError

METHODS = ("masked_marginals", "wt_marginals")


def check_method(method: str) -> None:
    """Raises ``InvalidParameterError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise InvalidParameterError(
            f"score_mutants: unknown method '{method}'; use 'masked_marginals' or 'wt_marginals'")


def parse_substitutions(wild_type: str, mutants: Sequence[str] | str,
                        residue_letters: Collection[str]) -> list[list[Substitution]]:
    """Parse mutation codes (``A42G`` or ``A42G:L50P``, 1-based) against ``wild_type``.

    Raises:
        InvalidInputError: malformed code, wild-type residue mismatch, position out of range, or a
            mutant residue not in ``residue_letters`` (messages name the 0-based row).
    """
    if isinstance(mutants, str):
        mutants = [mutants]
    parsed = []
    for row, code in enumerate(mutants):
        subs = parse_mutant(str(code), wild_type, row=row)
        for s in subs:
            if s.mt not in residue_letters:
                raise InvalidInputError(
                    f"row {row}: mutation '{s}' has mutant residue '{s.mt}', not an amino-acid letter",
                    item=row, character=s.mt)  # fmt: skip
        parsed.append(subs)
    return parsed


def marginal_scores(
    parsed: list[list[Substitution]],
    residues: np.ndarray,
    token_id: Mapping[str, int],
    method: str,
    wt_log_probs: Callable[[], np.ndarray],
    masked_log_probs: Callable[[list[tuple[np.ndarray, tuple[int, ...]]]], list[np.ndarray]],
) -> np.ndarray:
    """Σ_{i∈M} [log p(x_i = mt) − log p(x_i = wt)] for each mutant with substitutions at positions M.

    Args:
        parsed: from :func:`parse_substitutions`.
        residues: the wild type's token ids, int ``[L]``.
        token_id: residue letter -> vocabulary column.
        method: ``masked_marginals`` (log-probabilities with all of M masked; one pass per distinct
            set M, requested from ``masked_log_probs([(residues, M), ...])``, each answer float
            ``[len(M), V]`` in M's order) or ``wt_marginals`` (one unmasked pass: ``wt_log_probs()``
            float ``[L, V]`` over the residue positions).

    Returns:
        float64 ``[len(parsed)]``, natural-log units; higher = more favourable than the wild type.
    """
    check_method(method)
    if method == "wt_marginals":
        lp = wt_log_probs()
        return np.array([sum(lp[s.index, token_id[s.mt]] - lp[s.index, token_id[s.wt]] for s in subs)
                         for subs in parsed], dtype=np.float64)  # fmt: skip
    sets = sorted({tuple(sorted(s.index for s in subs)) for subs in parsed})
    table = dict(zip(sets, masked_log_probs([(residues, m) for m in sets])))
    scores = np.empty(len(parsed), dtype=np.float64)
    for k, subs in enumerate(parsed):
        m = tuple(sorted(s.index for s in subs))
        lp = table[m]
        scores[k] = sum(lp[m.index(s.index), token_id[s.mt]] - lp[m.index(s.index), token_id[s.wt]] for s in subs)
    return scores
