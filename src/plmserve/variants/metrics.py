"""ProteinGym's per-assay zero-shot metrics, with bootstrap confidence intervals.

Each metric is computed as ``proteingym/performance_DMS_benchmarks.py`` computes it (facts in
``shared/specs/proteingym-evaluation.md`` §3), with scipy and scikit-learn:

* **Spearman**: ``scipy.stats.spearmanr(DMS_score, score)`` (average ranks for ties).
* **AUC**: ``sklearn.metrics.roc_auc_score(DMS_score_bin, score)``; NaN with one class only.
* **MCC**: ``sklearn.metrics.matthews_corrcoef(DMS_score_bin, score >= median(score))``.
* **NDCG** (@10 %): k = ⌊n·10/100⌋; gains = min-max scaled ``DMS_score``; DCG over the top k
  by score, divided by the ideal DCG; 0 when k = 0; NaN when ``DMS_score`` is constant. Ranks
  come from ``numpy.argsort`` of the negated values with numpy's default (unstable) sort, as in
  ProteinGym, so tied scores straddling the cutoff are ordered as numpy orders them.
* **Top_recall** (10 %): the share of the variants at or above the 90th percentile of
  ``DMS_score`` that are also at or above the 90th percentile of the score.

Scores must follow "higher = fitter" (every plmserve scorer does). ProteinGym rounds each value
to 3 decimals before aggregating; these functions return unrounded values.

Confidence intervals (:func:`evaluate`): a seeded bootstrap over variants (rows drawn with
replacement, every metric recomputed), percentile intervals. ProteinGym's own bootstrap is over
assays (§6) and does not apply to a single assay.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("Spearman", "AUC", "MCC", "NDCG", "Top_recall")
"""Metric names, as in ProteinGym's tables."""
NEEDS_BINARY = ("AUC", "MCC")


def spearman(y: np.ndarray, s: np.ndarray) -> float:
    """Spearman's rank correlation of measured ``y`` and predicted ``s`` (float ``[n]``)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input -> NaN with a warning
        return float(spearmanr(y, s)[0])


def auc(b: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of score ``s`` for the fit class ``b == 1``; NaN if ``b`` has one class only."""
    from sklearn.metrics import roc_auc_score

    b = np.asarray(b)
    if np.unique(b).size < 2:
        return math.nan
    return float(roc_auc_score(b, s))


def mcc(b: np.ndarray, s: np.ndarray) -> float:
    """Matthews correlation of ``b`` with the labels ``s >= median(s)`` (ties with the median
    are predicted fit); 0 when either labelling has one class only."""
    from sklearn.metrics import matthews_corrcoef

    s = np.asarray(s, dtype=np.float64)
    pred = (s >= np.median(s)).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(matthews_corrcoef(np.asarray(b).astype(int), pred))


def _dcg(gains: np.ndarray, order: np.ndarray, k: int) -> float:
    top = gains[order[:k]]
    ranks = np.arange(1, top.size + 1)
    return float(np.sum(top / np.log2(ranks + 1)))


def ndcg(y: np.ndarray, s: np.ndarray, *, top: float | str = 10, quantile: bool = True) -> float:
    """Normalised discounted cumulative gain of the top ``top`` % (``quantile``) or top ``top``
    variants by ``s``, with min-max scaled ``y`` as gains (linear, no ``2^g − 1``).

    Returns 0.0 when the cutoff is 0 (n < 10 at 10 %), NaN when ``y`` is constant.
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    n = y.size
    if top == "all":
        k = n
    else:
        k = int(math.floor(n * float(top) / 100)) if quantile else int(top)
    lo, hi = y.min(), y.max()
    if hi == lo:
        return math.nan
    if k <= 0:
        return 0.0
    gains = (y - lo) / (hi - lo)
    dcg = _dcg(gains, np.argsort(-s), k)  # numpy's default sort, as ProteinGym (ties: see module doc)
    if dcg == 0.0:
        return 0.0
    return dcg / _dcg(gains, np.argsort(-gains), k)


def top_recall(y: np.ndarray, s: np.ndarray, *, top_true: float = 10, top_model: float = 10) -> float:
    """Recall of the top ``top_true`` % measured variants among the top ``top_model`` % predicted
    (``numpy.percentile`` thresholds, ties at a threshold included); 0 if none are measured top."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    true_top = y >= np.percentile(y, 100 - top_true)
    model_top = s >= np.percentile(s, 100 - top_model)
    n_true = int(true_top.sum())
    return float((true_top & model_top).sum() / n_true) if n_true else 0.0


def compute_metrics(y: np.ndarray, s: np.ndarray, b: np.ndarray | None = None) -> dict[str, float]:
    """All five metrics (AUC and MCC NaN when ``b`` is None)."""
    out = {"Spearman": spearman(y, s), "NDCG": ndcg(y, s), "Top_recall": top_recall(y, s)}
    out["AUC"] = auc(b, s) if b is not None else math.nan
    out["MCC"] = mcc(b, s) if b is not None else math.nan
    return {m: out[m] for m in METRICS}


@dataclass
class Evaluation:
    """Metrics of one score column against one DMS.

    Attributes:
        label: what was scored (model name or file).
        n: variants evaluated.
        values: metric -> value on all variants.
        ci_low, ci_high: metric -> bootstrap percentile interval bounds (NaN without bootstrap).
        se: metric -> bootstrap standard error (ddof 1).
        by_depth: ``"1"``, ``"2"``, ..., ``"5+"`` -> (n, metric -> value), for multi-mutant assays.
        bootstrap: replicates drawn; seed: their seed; confidence: interval level.
        paired: in a comparison of several files, the paired bootstrap of the Spearman difference
            to the best model on the variants all files share (``reference``, ``n_common``,
            ``difference``, ``ci_low``, ``ci_high``); empty otherwise.
    """

    label: str
    n: int
    values: dict[str, float]
    ci_low: dict[str, float] = field(default_factory=dict)
    ci_high: dict[str, float] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)
    by_depth: dict[str, dict[str, Any]] = field(default_factory=dict)
    bootstrap: int = 0
    seed: int | None = None
    confidence: float = 0.95
    paired: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""

        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in d.items()}

        return {"label": self.label, "n": self.n, "metrics": clean(self.values), "ci_low": clean(self.ci_low),
                "ci_high": clean(self.ci_high), "bootstrap_se": clean(self.se),
                "by_depth": {k: {"n": v["n"], "metrics": clean(v["metrics"])} for k, v in self.by_depth.items()},
                "bootstrap": self.bootstrap, "seed": self.seed, "confidence": self.confidence,
                "spearman_difference_to_best": self.paired or None}  # fmt: skip


def evaluate(y: np.ndarray, s: np.ndarray, b: np.ndarray | None = None, *, label: str = "score",
             depths: np.ndarray | None = None, bootstrap: int = 1000, seed: int = 0,
             confidence: float = 0.95) -> Evaluation:
    """Metrics of predicted ``s`` against measured ``y`` (and binary ``b``), with a bootstrap.

    Args:
        y: ``DMS_score`` float ``[n]``; s: model score ``[n]`` (higher = fitter);
        b: ``DMS_score_bin`` 0/1 ``[n]`` or None (AUC and MCC are then NaN).
        depths: mutation depth per variant; with depths > 1 present, the metrics are also given per
            depth (1, 2, 3, 4, 5+), MCC reusing the full-assay median threshold (ProteinGym).
        bootstrap: replicates (0 = no intervals); seed: ``numpy.random.default_rng`` seed.

    Raises:
        ValueError: arrays of different lengths, NaN in ``y`` or ``s``, fewer than 2 variants.
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or (b is not None and np.shape(b) != y.shape):
        raise ValueError("DMS_score, DMS_score_bin and the score must have the same length")
    if y.size < 2:
        raise ValueError(f"at least 2 variants are needed to evaluate, got {y.size}")
    if np.isnan(y).any() or np.isnan(s).any():
        raise ValueError("NaN in DMS_score or in the score; drop those rows first")
    bb = None if b is None else np.asarray(b).astype(int)
    result = Evaluation(label=label, n=int(y.size), values=compute_metrics(y, s, bb), bootstrap=int(bootstrap),
                        seed=seed if bootstrap else None, confidence=confidence)  # fmt: skip
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = np.empty((bootstrap, len(METRICS)))
        for r in range(bootstrap):
            idx = rng.integers(0, y.size, y.size)
            m = compute_metrics(y[idx], s[idx], None if bb is None else bb[idx])
            draws[r] = [m[k] for k in METRICS]
        alpha = (1 - confidence) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-NaN columns (no DMS_score_bin)
            low = np.nanquantile(draws, alpha, axis=0)
            high = np.nanquantile(draws, 1 - alpha, axis=0)
            se = np.nanstd(draws, axis=0, ddof=1)
        for j, k in enumerate(METRICS):
            result.ci_low[k], result.ci_high[k], result.se[k] = float(low[j]), float(high[j]), float(se[j])
    if depths is not None:
        d = np.asarray(depths)
        if (d > 1).any():
            labels = (s >= np.median(s)).astype(int)
            for name, sel in (("1", d == 1), ("2", d == 2), ("3", d == 3), ("4", d == 4), ("5+", d >= 5)):
                if sel.sum() < 2:
                    continue
                m = compute_metrics(y[sel], s[sel], None if bb is None else bb[sel])
                if bb is not None:
                    from sklearn.metrics import matthews_corrcoef

                    m["MCC"] = float(matthews_corrcoef(bb[sel], labels[sel]))
                result.by_depth[name] = {"n": int(sel.sum()), "metrics": m}
    return result
