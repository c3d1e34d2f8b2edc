"""The align service: homology search (:func:`create_msa`) and PoET prompt sampling
(:func:`sample_prompt`). MSA and prompt files live in :mod:`plmserve.bio.msa` and
:mod:`plmserve.bio.prompt`.

The official sampler's building blocks are public too, with the official arguments (a literal
``theta``, ``max_dissimilarity``): :func:`filter_rows` (similarity filter), :func:`sample_order`
(``MSASampler.get_sample_idxs``) and :func:`build_prompt` (``sample_msa_sequences``)::

    from plmserve.align import build_prompt, sample_order
    matrix = msa.aligned_matrix()
    order = sample_order(matrix, theta=0.2, max_similarity=0.9, seed=188257)
    rows = build_prompt([len(s) for s in msa.sequences], order, max_tokens=12288, shuffle_seed=188257)
"""

from plmserve.align.sampling import (
    DEFAULT_METHOD,
    METHODS,
    SampledPrompt,
    build_prompt,
    filter_rows,
    homology_weights,
    n_eff,
    neighbor_counts,
    sample_order,
    sample_prompt,
    similarity_to_query,
    theta_for,
)
from plmserve.align.search import BACKENDS, create_msa

__all__ = [
    "BACKENDS",
    "DEFAULT_METHOD",
    "METHODS",
    "SampledPrompt",
    "build_prompt",
    "create_msa",
    "filter_rows",
    "homology_weights",
    "n_eff",
    "neighbor_counts",
    "sample_order",
    "sample_prompt",
    "similarity_to_query",
    "theta_for",
]
