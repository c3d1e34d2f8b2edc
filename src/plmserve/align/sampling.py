"""PoET prompt sampling from an MSA: neighbour weights, the similarity filter, the draw, and
the prompt builder.

Reproduces the official PoET sampler (github.com/OpenProteinAI/PoET ``poet/msa/sampling.py``
and ``scripts/score.py``) exactly, as described in ``shared/specs/poet-model.md`` §5-§6 and checked
against ``shared/fixtures/poet/sampler.json`` (same row indices, same order). The OpenProtein
API parameters and their validation follow ``shared/specs/poet-api.md`` §2.3 and §5.

Methods (``poet-api.md`` §5.1-5.2):

``TOP``
    The MSA rows that pass the similarity filter, in MSA order.
``RANDOM``
    A uniform random order: ``numpy.random.default_rng(seed).permutation`` of the kept rows.
``NEIGHBORS_NONGAP_NORM_NO_LIMIT`` (default)
    The official ``NeighborsSampler``: row *i* is weighted by ``1 / n_i`` where ``n_i`` counts the
    rows *j* (including *i*) whose identity to *i* is at least ``homology_level``; identity =
    columns where *i*'s residue equals *j*'s (a gap in either never matches) divided by the
    number of non-gap columns of *i*. The order is a weighted random permutation of the kept
    rows (``default_rng(seed).choice(n, size=n, replace=False, p=w / w.sum())``).
``NEIGHBORS_NO_LIMIT``
    Undocumented upstream. Our reading (``poet-api.md`` §5.2: the official code says the older
    similarity had "flaws wrt handling gap tokens"): the same draw, but identity is computed over
    the full alignment width ``L`` with gap==gap counted as a match (the older, gap-naive
    definition, the one also used for the similarity filter).
``NEIGHBORS``
    Undocumented upstream; what "LIMIT" caps is unknown. Our reading: like ``NEIGHBORS_NO_LIMIT``
    but only the first :data:`NEIGHBORS_ROW_LIMIT` rows of the MSA (in MSA order, the best hits
    of a search first) are candidates.

Replicates: replicate *k* (0-based) of an ensemble uses the seed ``random_seed + k`` for both
the draw and the prompt shuffle, so replicate 0 equals the official single-prompt result for
``random_seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from plmserve.bio.msa import GAP_INDEX, MSA
from plmserve.errors import InvalidParameterError, MissingParameterError

METHODS = ("TOP", "RANDOM", "NEIGHBORS", "NEIGHBORS_NO_LIMIT", "NEIGHBORS_NONGAP_NORM_NO_LIMIT")
DEFAULT_METHOD = "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
DEFAULT_NUM_RESIDUES = 12288
MAX_NUM_SEQUENCES = 99
MAX_NUM_RESIDUES = 24576
MAX_REPLICATES = 15
MAX_SEED = 2**32 - 1
#: Rows considered by the ``NEIGHBORS`` method (our reading of "LIMIT"; see the module docstring).
NEIGHBORS_ROW_LIMIT = 10_000

# Rows per side of one tile of the pairwise match-count matrix (a 16 MiB int32 tile): bounds
# the memory of neighbour counting to the one-hot MSA plus one tile.
_TILE = 2048


# ---------------------------------------------------------------------------------------------
# neighbour weights
def _feature_ids(matrix: np.ndarray, include_gap: bool) -> tuple[np.ndarray, int]:
    """Feature numbering of the (column, token) pairs held by at least two rows.

    Returns ``(ids, F)``: int32 ``(L, 256)`` with ``ids[c, t]`` the feature of token ``t`` in
    column ``c`` or -1. Pairs held by a single row only add to that row's match with itself,
    which is handled separately (a row is always its own neighbour), so they get no feature."""
    width = matrix.shape[1]
    ids = np.full((width, 256), -1, dtype=np.int32)
    total = 0
    for c in range(width):
        keep = np.bincount(matrix[:, c], minlength=256) >= 2
        if not include_gap:
            keep[GAP_INDEX] = False
        k = int(keep.sum())
        ids[c, keep] = np.arange(total, total + k, dtype=np.int32)
        total += k
    return ids, total


def _one_hot(rows: np.ndarray, ids: np.ndarray, num_features: int):
    """int8 one-hot ``(n, F)`` torch tensor of ``rows`` (uint8 ``(n, L)``) under ``ids``."""
    import torch

    n, width = rows.shape
    feats = np.zeros((n, num_features), dtype=np.int8)
    index = np.arange(n)
    for c in range(width):
        f = ids[c, rows[:, c]]
        ok = f >= 0
        feats[index[ok], f[ok]] = 1
    return torch.from_numpy(feats)


def _int_matmul(rows, cols_t):
    """Exact ``rows @ cols_t`` for int8 0/1 matrices as int32 (int8 GEMM when available)."""
    import torch

    if rows.shape[1] == 0:
        return torch.zeros((rows.shape[0], cols_t.shape[1]), dtype=torch.int32)
    try:
        return torch._int_mm(rows, cols_t)
    except (RuntimeError, AttributeError):  # pragma: no cover - builds without int8 GEMM
        return (rows.float() @ cols_t.float()).round().to(torch.int32)


def _count_neighbours(matrix: np.ndarray, thresholds: np.ndarray, include_gap: bool) -> np.ndarray:
    """``counts[i] = #{j : matches(i, j) >= thresholds[i]}`` with ``j = i`` always counted.

    ``matches`` is symmetric, so only the tiles on and above the diagonal are computed: the
    product of row tile ``I`` with row tile ``J >= I`` gives the counts of the rows in ``I``
    against ``J`` and (transposed) those of the rows in ``J`` against ``I``. The one-hot rows
    (int8, ``F <= 21 L`` features) are built per tile, so memory is the MSA plus two one-hot
    tiles and one ``_TILE x _TILE`` int32 product, whatever ``N``."""
    import torch

    n = matrix.shape[0]
    ids, num_features = _feature_ids(matrix, include_gap)
    thr = torch.from_numpy(thresholds.astype(np.int32))
    counts = torch.zeros(n, dtype=torch.int64)
    tile = max(1, min(n, _TILE))
    for s in range(0, n, tile):
        e = min(n, s + tile)
        rows = _one_hot(matrix[s:e], ids, num_features)
        for t in range(s, n, tile):
            u = min(n, t + tile)
            other = rows if t == s else _one_hot(matrix[t:u], ids, num_features)
            prod = _int_matmul(rows, other.t())  # (e-s, u-t) int32
            if t == s:
                diag = torch.arange(e - s)
                prod[diag, diag] = torch.iinfo(torch.int32).max  # a row is its own neighbour
                counts[s:e] += torch.ge(prod, thr[s:e, None]).sum(dim=1, dtype=torch.int32)
            else:
                counts[s:e] += torch.ge(prod, thr[s:e, None]).sum(dim=1, dtype=torch.int32)
                counts[t:u] += torch.ge(prod, thr[None, t:u]).sum(dim=0, dtype=torch.int32)
    return counts.numpy()


def _thresholds(normalisers: np.ndarray, theta: float) -> np.ndarray:
    """Smallest integer ``m`` with ``1 - m / norm <= theta`` (float64, as the official code
    computes it) for each normaliser; ``norm + 1`` (never reached) when none qualifies."""
    out = np.empty(len(normalisers), dtype=np.int64)
    for value in np.unique(normalisers):
        v = int(value)
        if v == 0:
            thr = 1  # a row with no residues: it is its own only neighbour (see neighbor_counts)
        else:
            m = np.arange(v + 1, dtype=np.float64)
            ok = np.nonzero(1.0 - m / np.float64(v) <= theta)[0]
            thr = int(ok[0]) if ok.size else v + 1
        out[normalisers == value] = thr
    return out


def neighbor_counts(matrix: np.ndarray, theta: float = 0.2, *, gap_normalised: bool = True) -> np.ndarray:
    """Number of neighbours of every MSA row (the row itself included).

    Args:
        matrix: uint8 ``(N, L)`` aligned MSA from :meth:`MSA.aligned_matrix` (gap = 20).
        theta: distance threshold; *j* is a neighbour of *i* when ``1 - sim(i, j) <= theta``
            (``theta = 1 - homology_level``).
        gap_normalised: True (official ``NeighborsSampler``): ``sim(i, j)`` = columns where row
            *i*'s residue equals row *j*'s, gaps never matching, divided by row *i*'s non-gap
            count (asymmetric). False (our ``NEIGHBORS``/``NEIGHBORS_NO_LIMIT``): columns with
            equal tokens, gap==gap included, divided by ``L`` (symmetric).

    Returns:
        int64 ``(N,)``. A row with no residues (all gaps) counts only itself.

    Memory is linear in ``N``: the pairwise counts are computed in 2048 x 2048 tiles (upper
    triangle only) with an int8 one-hot matrix product (exact integer arithmetic); the N x N x L
    comparison is never formed.
    Source: ``poet-model.md`` §6.1.
    """
    matrix = np.asarray(matrix, dtype=np.uint8)
    n, width = matrix.shape
    if gap_normalised:
        norm = (matrix != GAP_INDEX).sum(axis=1)
    else:
        norm = np.full(n, width)
    thr = _thresholds(norm, float(theta))
    counts = _count_neighbours(matrix, thr, include_gap=not gap_normalised)
    return counts


def homology_weights(
    matrix: np.ndarray, theta: float = 0.2, *, gap_normalised: bool = True
) -> tuple[float, np.ndarray]:
    """``(n_eff, p)``: ``p_i = (1/n_i) / sum_j (1/n_j)`` float64 ``(N,)`` and ``n_eff = sum_i 1/n_i``.

    See :func:`neighbor_counts` for ``n_i``. Source: ``poet-model.md`` §6.1.
    """
    counts = neighbor_counts(matrix, theta, gap_normalised=gap_normalised)
    inv = 1.0 / counts.astype(np.float64)
    n_eff = float(inv.sum())
    return n_eff, inv / n_eff


def theta_for(homology_level: float) -> float:
    """``1 - homology_level`` computed in decimal, so 0.7 gives exactly 0.3 (not 0.30000000000000004)."""
    return float(Decimal(1) - Decimal(repr(float(homology_level))))


def n_eff(msa: MSA, homology_level: float = 0.8) -> float:
    """Effective number of sequences: ``sum_i 1/n_i`` at the given homology level (gap-aware
    identity, as the default sampling method)."""
    theta = theta_for(homology_level)
    return msa.memo(("n_eff", theta), lambda: homology_weights(msa.aligned_matrix(), theta)[0])


def similarity_to_query(matrix: np.ndarray) -> np.ndarray:
    """Fraction of all ``L`` columns identical to row 0 (gap==gap counts), float64 ``(N,)``."""
    return (matrix == matrix[0:1]).sum(axis=1) / matrix.shape[1]


def filter_rows(
    matrix: np.ndarray,
    max_similarity: float = 1.0,
    min_similarity: float = 0.0,
    *,
    max_dissimilarity: float | None = None,
) -> np.ndarray:
    """The official ``MSASampler`` similarity filter.

    Args:
        matrix: uint8 ``(N, L)`` aligned MSA (:meth:`plmserve.bio.msa.MSA.aligned_matrix`), row 0
            the query.
        max_similarity: keep rows with ``s <= max_similarity``, ``s`` = :func:`similarity_to_query`
            (fraction of the ``L`` columns identical to row 0, gap == gap counts).
        min_similarity: keep rows with ``1 - s <= 1 - min_similarity``.
        max_dissimilarity: the official sampler's literal argument (keep ``1 - s <=
            max_dissimilarity``); when given it replaces ``1 - min_similarity`` (which floating
            point may round differently).

    Returns:
        int64 row indices, increasing. Source: ``poet-model.md`` §6.2 (official ``MSASampler``).
    """
    s = similarity_to_query(matrix)
    if max_dissimilarity is None:
        max_dissimilarity = 1.0 - float(min_similarity)
    return np.nonzero((s <= max_similarity) & ((1.0 - s) <= float(max_dissimilarity)))[0]


def sample_order(
    matrix: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    theta: float = 0.2,
    max_similarity: float = 1.0,
    min_similarity: float = 0.0,
    force_include_first: bool = False,
    seed: int | None = None,
    weights: np.ndarray | None = None,
    max_dissimilarity: float | None = None,
) -> np.ndarray:
    """The sampling order of MSA rows (indices into ``matrix``), as the official
    ``MSASampler(method=NeighborsSampler(theta=theta), max_similarity, max_dissimilarity,
    force_include_first).get_sample_idxs(msa, gap_token=20, seed=seed)``.

    ``theta`` is used literally (a neighbour is a row at distance ``<= theta``), exactly as the
    official ``NeighborsSampler(theta=...)``: pass the value the official call used (0.3 is not
    ``1 - 0.7`` in floating point, and that changes neighbour counts).

    1. weights on the full MSA (``NEIGHBORS*``; pass ``weights`` to reuse precomputed ``p``),
    2. keep rows passing :func:`filter_rows` (``max_similarity`` and ``min_similarity`` or the
       literal ``max_dissimilarity``),
    3. order the kept rows (TOP: MSA order; RANDOM: ``default_rng(seed).permutation``;
       NEIGHBORS*: ``default_rng(seed).choice(n, n, replace=False, p=w/w.sum())``),
    4. ``force_include_first``: row 0 first, removed from anywhere else.

    Returns:
        int64 array of row indices. Source: ``poet-model.md`` §6.
    """
    n = matrix.shape[0]
    if method == "NEIGHBORS":
        limit = min(n, NEIGHBORS_ROW_LIMIT)
        order = sample_order(
            matrix[:limit],
            method="NEIGHBORS_NO_LIMIT",
            theta=theta,
            max_similarity=max_similarity,
            min_similarity=min_similarity,
            force_include_first=force_include_first,
            seed=seed,
            weights=weights[:limit] if weights is not None else None,
            max_dissimilarity=max_dissimilarity,
        )
        return order
    kept = filter_rows(matrix, max_similarity, min_similarity, max_dissimilarity=max_dissimilarity)
    rng = np.random.default_rng(seed)
    if method == "TOP":
        order = kept
    elif method == "RANDOM":
        order = kept[rng.permutation(len(kept))]
    elif method in ("NEIGHBORS_NO_LIMIT", "NEIGHBORS_NONGAP_NORM_NO_LIMIT"):
        if weights is None:
            weights = homology_weights(matrix, theta, gap_normalised=method == "NEIGHBORS_NONGAP_NORM_NO_LIMIT")[1]
        w = weights[kept]
        if len(kept):
            order = kept[rng.choice(len(kept), replace=False, size=len(kept), p=w / w.sum())]
        else:
            order = kept
    else:
        raise InvalidParameterError(f"Unknown sampling method {method!r}; expected one of {', '.join(METHODS)}.")
    order = np.asarray(order, dtype=np.int64)
    if force_include_first:
        order = np.concatenate([np.array([0], dtype=np.int64), order[order != 0]])
    return order


def build_prompt(
    lengths: list[int] | np.ndarray,
    order: np.ndarray,
    *,
    max_tokens: int | None = None,
    max_sequences: int | None = None,
    shuffle_seed: int | None = None,
) -> list[int]:
    """Choose prompt rows from ``order`` (official ``sample_msa_sequences``, ``truncate=False``).

    Each sequence costs ``len + 2`` tokens (start and stop).

    * token budget: walk ``order`` collecting rows; stop right after the total first exceeds
      ``max_tokens`` (that row included). Then walk the collected rows in the order
      ``default_rng(shuffle_seed).permutation(n_collected)`` and stop right after the total first
      reaches ``>= max_tokens``.
    * sequence budget: the first ``max_sequences`` rows of ``order``, then shuffled the same way.

    Args:
        lengths: ungapped length of every MSA row (indexed by row).
        order: candidate rows (from :func:`sample_order`).

    Returns:
        The chosen row indices in prompt order. Source: ``poet-model.md`` §5 step 4.2.
    """
    collected: list[int] = []
    total = 0
    for idx in order:
        if max_sequences is not None and len(collected) >= max_sequences:
            break
        collected.append(int(idx))
        total += int(lengths[idx]) + 2
        if max_tokens is not None and total > max_tokens:
            break
    perm = np.random.default_rng(shuffle_seed).permutation(len(collected))
    prompt: list[int] = []
    total = 0
    for k in perm:
        idx = collected[int(k)]
        prompt.append(idx)
        total += int(lengths[idx]) + 2
        if max_tokens is not None and total >= max_tokens:
            break
    return prompt


# ---------------------------------------------------------------------------------------------
@dataclass
class SampledPrompt:
    """A sampled prompt ensemble.

    Attributes:
        replicates: one prompt per replicate; each a list of ``(name, sequence)`` with the
            sequence ungapped and upper-case (insertions kept).
        indices: the MSA row indices of each replicate, in prompt order.
        random_seed: the seed used (drawn when none was given); replicate *k* used ``seed + k``.
        params: the effective parameters (``method``, ``num_sequences``, ``num_residues``,
            ``homology_level``, ``max_similarity``, ``min_similarity``,
            ``always_include_seed_sequence``, ``num_ensemble_prompts``, ``random_seed``).
    """

    replicates: list[list[tuple[str, str]]]
    indices: list[list[int]]
    random_seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def num_tokens(self, replicate: int = 0) -> int:
        """Tokens of one replicate: sum of ``len + 2`` over its sequences."""
        return sum(len(s) + 2 for _, s in self.replicates[replicate])


def validate_prompt_params(
    *,
    method: str,
    num_sequences: int | None,
    num_residues: int | None,
    homology_level: float,
    max_similarity: float,
    min_similarity: float,
    num_ensemble_prompts: int,
    random_seed: int | None,
) -> tuple[int | None, int | None]:
    """Check the prompt parameters in the SDK's order and with its wording (``poet-api.md`` §5.3)
    plus the server's ranges; returns ``(num_sequences, num_residues)`` with the 12288 default.

    Raises:
        InvalidParameterError: a value out of range, an unknown method, min > max similarity.
        MissingParameterError: both ``num_sequences`` and ``num_residues`` given.
    """
    for name, value in (
        ("homology_level", homology_level),
        ("max_similarity", max_similarity),
        ("min_similarity", min_similarity),
    ):
        if value is None or not (0 <= value <= 1):
            raise InvalidParameterError(f"The '{name}' must be between 0 and 1.")
    if num_sequences is None and num_residues is None:
        num_residues = DEFAULT_NUM_RESIDUES
    if num_sequences is not None and num_residues is not None:
        raise MissingParameterError("Either 'num_sequences' or 'num_residues' must be set, but not both.")
    if num_sequences is not None and not (1 <= num_sequences <= MAX_NUM_SEQUENCES):
        raise InvalidParameterError(
            "The 'num_sequences' must be between 0 and 100."
            if not (0 <= num_sequences < 100)
            else "The 'num_sequences' must be between 1 and 99."
        )
    if num_residues is not None and not (1 <= num_residues <= MAX_NUM_RESIDUES):
        raise InvalidParameterError(
            "The 'num_residues' must be between 0 and 24577."
            if not (0 <= num_residues < 24577)
            else "The 'num_residues' must be between 1 and 24576."
        )
    if min_similarity > max_similarity:
        raise InvalidParameterError("The 'min_similarity' must not be greater than 'max_similarity'.")
    if not (1 <= num_ensemble_prompts <= MAX_REPLICATES):
        raise InvalidParameterError(f"The 'num_ensemble_prompts' must be between 1 and {MAX_REPLICATES}.")
    if random_seed is not None and not (0 <= random_seed <= MAX_SEED):  # 0.17 SDKs may draw 0
        raise InvalidParameterError(f"The 'random_seed' must be between 0 and {MAX_SEED}.")
    if method not in METHODS:
        raise InvalidParameterError(f"The 'method' must be one of {', '.join(METHODS)} (got {method!r}).")
    return num_sequences, num_residues


def sample_prompt(
    msa: MSA,
    *,
    method: str = DEFAULT_METHOD,
    num_sequences: int | None = None,
    num_residues: int | None = None,
    homology_level: float = 0.8,
    max_similarity: float = 1.0,
    min_similarity: float = 0.0,
    always_include_seed_sequence: bool = False,
    num_ensemble_prompts: int = 1,
    random_seed: int | None = None,
) -> SampledPrompt:
    """Sample a PoET prompt ensemble from an MSA (the OpenProtein ``POST .../prompt`` semantics).

    Args:
        msa: the MSA; row 0 is the seed/query.
        method: ``TOP``, ``RANDOM``, ``NEIGHBORS``, ``NEIGHBORS_NO_LIMIT`` or
            ``NEIGHBORS_NONGAP_NORM_NO_LIMIT`` (see the module docstring).
        num_sequences: at most this many sequences per prompt (1..99), xor
        num_residues: token budget per prompt (1..24576, each sequence costs len+2; the prompt
            may overshoot by part of one sequence). Defaults to 12288 when neither is given.
        homology_level: identity at which two rows are neighbours (0..1); theta = 1 - level.
        max_similarity, min_similarity: keep rows whose identity to the seed (over all columns)
            lies in [min, max] (0..1, min <= max).
        always_include_seed_sequence: the seed row is placed first in the sampling order
            (official ``force_include_first``) and, should the shuffled budget pass of the prompt
            builder drop it, appended to the prompt, so every replicate contains it.
        num_ensemble_prompts: replicates (1..15); replicate *k* uses seed ``random_seed + k``.
        random_seed: 0..2**32-1; None draws one (recorded in the result).

    Returns:
        :class:`SampledPrompt`.

    Raises:
        InvalidParameterError / MissingParameterError: see :func:`validate_prompt_params`;
            also when the similarity filter leaves no sequence.
    """
    num_sequences, num_residues = validate_prompt_params(
        method=method,
        num_sequences=num_sequences,
        num_residues=num_residues,
        homology_level=homology_level,
        max_similarity=max_similarity,
        min_similarity=min_similarity,
        num_ensemble_prompts=num_ensemble_prompts,
        random_seed=random_seed,
    )
    if random_seed is None:
        random_seed = random.randint(1, MAX_SEED)
    matrix = msa.aligned_matrix()
    theta = theta_for(homology_level)
    weights = None
    if method in ("NEIGHBORS_NONGAP_NORM_NO_LIMIT", "NEIGHBORS_NO_LIMIT"):
        gap_normalised = method == "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
        weights = msa.memo(
            ("homology_weights", theta, gap_normalised, None),
            lambda: homology_weights(matrix, theta, gap_normalised=gap_normalised)[1],
        )
    elif method == "NEIGHBORS":
        limit = min(len(msa), NEIGHBORS_ROW_LIMIT)
        weights = msa.memo(
            ("homology_weights", theta, False, limit),
            lambda: homology_weights(matrix[:limit], theta, gap_normalised=False)[1],
        )
    lengths = np.array([len(s) for s in msa.sequences])
    replicates: list[list[tuple[str, str]]] = []
    indices: list[list[int]] = []
    for k in range(num_ensemble_prompts):
        seed = random_seed + k
        order = sample_order(
            matrix,
            method=method,
            theta=theta,
            max_similarity=max_similarity,
            min_similarity=min_similarity,
            force_include_first=always_include_seed_sequence,
            seed=seed,
            weights=weights,
        )
        if len(order) == 0:
            raise InvalidParameterError(
                f"No MSA sequence passes the similarity filter (min_similarity={min_similarity}, "
                f"max_similarity={max_similarity}); widen the range or set always_include_seed_sequence."
            )
        rows = build_prompt(lengths, order, max_tokens=num_residues, max_sequences=num_sequences, shuffle_seed=seed)
        if always_include_seed_sequence and 0 not in rows:
            # the official builder can drop the forced seed in its second (shuffled) budget pass;
            # the API promises it, so it is appended (the only deviation, documented above)
            rows.append(0)
        indices.append(rows)
        replicates.append([(msa.names[i], msa.sequences[i]) for i in rows])
    params = {
        "method": method,
        "num_sequences": num_sequences,
        "num_residues": num_residues,
        "homology_level": homology_level,
        "max_similarity": max_similarity,
        "min_similarity": min_similarity,
        "always_include_seed_sequence": always_include_seed_sequence,
        "num_ensemble_prompts": num_ensemble_prompts,
        "random_seed": random_seed,
    }
    return SampledPrompt(replicates=replicates, indices=indices, random_seed=random_seed, params=params)
