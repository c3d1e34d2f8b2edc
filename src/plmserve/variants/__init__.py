"""Variant effects for every served model: zero-shot scores, ProteinGym metrics, HTML reports.

- :mod:`~plmserve.variants.io`: :func:`read_variants` (ProteinGym DMS CSV, FASTA, mutation list)
  -> :class:`VariantSet`; score CSVs with their JSON sidecar.
- :mod:`~plmserve.variants.loading`: :func:`load_scoring_model` (registry name or family name).
- :mod:`~plmserve.variants.scoring`: :func:`score_variants` -- each family's published convention
  (ESM-2 / ESM C / ESM3 masked marginals, PoET ``score.py`` ensemble minus the wild type).
- :mod:`~plmserve.variants.metrics`: Spearman, AUC, MCC, NDCG, top recall as ProteinGym computes
  them, :func:`evaluate` with bootstrap intervals.
- :mod:`~plmserve.variants.evaluation`: score files -> comparison tables (paired differences).
- :mod:`~plmserve.variants.report`: the self-contained HTML report.

The CLI is ``plmserve variants score|evaluate`` (:mod:`plmserve.cli.variants`); see
``docs/variants.md``.
"""

from .io import VariantSet, read_variants
from .loading import load_scoring_model
from .metrics import evaluate
from .scoring import VariantScores, score_variants

__all__ = ["VariantScores", "VariantSet", "evaluate", "load_scoring_model", "read_variants", "score_variants"]
