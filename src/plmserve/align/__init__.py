"""The align service: homology search (:func:`create_msa`) and PoET prompt sampling
(:func:`sample_prompt`). MSA and prompt files live in :mod:`plmserve.bio.msa` and
:mod:`plmserve.bio.prompt`.
"""

from plmserve.align.sampling import (
    DEFAULT_METHOD,
    METHODS,
    SampledPrompt,
    homology_weights,
    n_eff,
    neighbor_counts,
    sample_prompt,
)
from plmserve.align.search import BACKENDS, create_msa

__all__ = [
    "BACKENDS",
    "DEFAULT_METHOD",
    "METHODS",
    "SampledPrompt",
    "create_msa",
    "homology_weights",
    "n_eff",
    "neighbor_counts",
    "sample_prompt",
]
