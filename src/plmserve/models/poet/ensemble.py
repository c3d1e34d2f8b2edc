"""The official ``scripts/score.py`` ensemble: a grid over prompt size x maximum similarity to
the query, each scored forward and backward, averaged (``shared/specs/poet-model.md`` §5).

With the released weights and the default grid this reproduces the paper's ProteinGym number for
BLAT_ECOLX_Jacquier_2013 (Spearman > 0.65). Prompts come from the align service's sampler
(:func:`plmserve.align.sample_prompt`, method ``NEIGHBORS_NONGAP_NORM_NO_LIMIT``, homology level
0.8, the same seed for the row draw and the shuffle), which implements the official
``MSASampler``/``NeighborsSampler``/``sample_msa_sequences(truncate=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .engine import PoET, Progress

SCORE_PY_GRID: tuple[tuple[int, float], ...] = tuple(
    (t, s) for t in (6144, 12288, 24576) for s in (1.0, 0.95, 0.90, 0.70, 0.50)
)
"""The official grid: max_tokens (outer loop) x max_similarity; 15 configurations."""
SCORE_PY_SEED = 188257


@dataclass
class EnsembleConfigScore:
    """One grid point: its prompt and the forward, backward and averaged scores ``[n_seqs]``."""

    max_tokens: int
    max_similarity: float
    prompt_rows: list[int]
    prompt_num_tokens: int
    forward: np.ndarray
    backward: np.ndarray

    @property
    def average(self) -> np.ndarray:
        return (self.forward + self.backward) / 2


@dataclass
class EnsembleResult:
    """``scores``: float64 ``[n_seqs]``, the mean of the grid points' averages."""

    scores: np.ndarray
    per_config: list[EnsembleConfigScore] = field(default_factory=list)


@dataclass(frozen=True)
class SamplerSettings:
    """The official sampler's settings for each grid point of :func:`score_py_ensemble`, with the
    official arguments' meaning (``scripts/score.py`` uses the defaults):

    ``MSASampler(method=NeighborsSampler(theta=theta), max_similarity=<grid>,
    max_dissimilarity=max_dissimilarity, force_include_first=force_include_first)`` and
    ``sample_msa_sequences(max_tokens=<grid>, shuffle_seed=seed, truncate=False)``.

    Attributes:
        theta: neighbour distance threshold, used literally (official default 0.2).
        max_dissimilarity: keep rows with ``1 - identity_to_query <= max_dissimilarity`` (1.0).
        force_include_first: put the query (row 0) first in the sampling order (False).
        method: :data:`plmserve.align.METHODS` name; ``NEIGHBORS_NONGAP_NORM_NO_LIMIT`` is the
            official ``NeighborsSampler`` (gap-normalised identity, all rows).
    """

    theta: float = 0.2
    max_dissimilarity: float = 1.0
    force_include_first: bool = False
    method: str = "NEIGHBORS_NONGAP_NORM_NO_LIMIT"


def sample_score_py_prompt(
    msa: Any,
    max_tokens: int,
    max_similarity: float,
    seed: int = SCORE_PY_SEED,
    sampler: SamplerSettings = SamplerSettings(),
) -> tuple[list[int], list[str]]:
    """The prompt of one grid point (official sampling recipe, :class:`SamplerSettings`).

    Returns:
        ``(row indices in prompt order, ungapped upper-case sequences)``.

    Raises:
        InvalidParameterError: an unknown ``sampler.method``.
    """
    from plmserve.align import build_prompt, homology_weights, sample_order

    matrix = msa.aligned_matrix()
    weights = None
    if sampler.method in ("NEIGHBORS_NO_LIMIT", "NEIGHBORS_NONGAP_NORM_NO_LIMIT"):
        gap_normalised = sampler.method == "NEIGHBORS_NONGAP_NORM_NO_LIMIT"
        weights = msa.memo(  # shared with plmserve.align.sample_prompt's cache
            ("homology_weights", sampler.theta, gap_normalised, None),
            lambda: homology_weights(matrix, sampler.theta, gap_normalised=gap_normalised)[1],
        )
    order = sample_order(matrix, method=sampler.method, theta=sampler.theta, max_similarity=max_similarity,
                         max_dissimilarity=sampler.max_dissimilarity,
                         force_include_first=sampler.force_include_first, seed=seed, weights=weights)
    rows = build_prompt([len(s) for s in msa.sequences], order, max_tokens=max_tokens, shuffle_seed=seed)
    return rows, [msa.sequences[i] for i in rows]


def score_py_ensemble(
    model: PoET,
    msa: Any,
    sequences: Sequence[str],
    *,
    grid: Sequence[tuple[int, float]] = SCORE_PY_GRID,
    seed: int = SCORE_PY_SEED,
    sampler: SamplerSettings = SamplerSettings(),
    prompt_fn: Callable[[int, float], tuple[list[int], list[str]]] | None = None,
    progress: Progress | None = None,
) -> EnsembleResult:
    """Score ``sequences`` with the ``score.py`` ensemble.

    Args:
        model: the PoET model.
        msa: a :class:`plmserve.bio.msa.MSA` (row 0 = the query); used by the default sampler.
        sequences: the variants (ungapped).
        grid: ``(max_tokens, max_similarity)`` pairs, in order.
        seed: the sampler and shuffle seed (official: 188257).
        sampler: the sampler's other settings (``theta``, ``max_dissimilarity``,
            ``force_include_first``, ``method``; :class:`SamplerSettings`, official defaults).
        prompt_fn: ``(max_tokens, max_similarity) -> (rows, sequences)`` to override the sampler.
        progress: ``progress(done, total)`` over all grid points and both directions.

    Returns:
        :class:`EnsembleResult`: ``scores`` float64 ``[n_seqs]`` in nats (mean over the grid of
        the forward/backward average log-likelihoods) and every grid point's scores and prompt.

    Raises:
        InvalidInputError: a bad character in a variant or prompt sequence.
        InvalidParameterError: an unknown ``sampler.method``.
    """
    n = len(sequences)
    total = 2 * n * len(grid)
    done = 0
    per_config: list[EnsembleConfigScore] = []
    for max_tokens, max_sim in grid:
        rows, prompt = (
            prompt_fn(max_tokens, max_sim) if prompt_fn
            else sample_score_py_prompt(msa, max_tokens, max_sim, seed, sampler)
        )
        dirs = []
        for reverse in (False, True):
            offset = done

            def tick(d: int, t: int, offset: int = offset) -> None:
                if progress:
                    progress(offset + d, total)

            dirs.append(model.score(model.embed(prompt, reverse=reverse), sequences, progress=tick))
            done += n
        per_config.append(
            EnsembleConfigScore(
                max_tokens=max_tokens,
                max_similarity=max_sim,
                prompt_rows=list(rows),
                prompt_num_tokens=sum(len(s) + 2 for s in prompt),
                forward=dirs[0],
                backward=dirs[1],
            )
        )
    scores = np.mean([c.average for c in per_config], axis=0)
    return EnsembleResult(scores=scores, per_config=per_config)
