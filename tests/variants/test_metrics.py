"""ProteinGym metrics: the worked examples of proteingym-evaluation.md §9 (numbers from the
official functions, checked by hand below), and agreement with scipy / scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import matthews_corrcoef, ndcg_score, roc_auc_score

from plmserve.variants.metrics import METRICS, auc, compute_metrics, evaluate, mcc, ndcg, spearman, top_recall

# §9.1: five variants, cutoff -0.5
Y5 = np.array([0.10, -1.30, -2.20, 0.80, 1.50])
B5 = np.array([1, 0, 0, 1, 1])
S5 = np.array([-0.35, -2.10, -0.90, -1.40, 0.25])

# §9.2: twenty variants with ties (cutoff -0.6, 12 positives)
Y20 = np.array([1.20, 0.95, 0.95, 0.40, 0.10, 0.00, -0.20, -0.35, -0.50, -0.80,
                -1.00, -1.10, -1.60, -2.00, -2.40, -2.40, -3.00, 0.60, 0.75, -0.05])  # fmt: skip
S20 = np.array([2.1, 1.4, 1.0, 0.3, 0.9, -0.2, 0.1, -1.5, 0.5, -0.7,
                -0.9, -2.3, -1.1, -3.0, -1.8, -2.6, -4.0, 1.8, -0.2, -0.2])  # fmt: skip
B20 = (Y20 >= -0.6).astype(int)


def test_example_five_variants():
    m = compute_metrics(Y5, S5, B5)
    assert m["Spearman"] == pytest.approx(0.5, abs=1e-12)
    assert m["AUC"] == pytest.approx(5 / 6, abs=1e-12)  # 5 of the 6 (fit, unfit) pairs ordered right
    assert m["MCC"] == pytest.approx(1 / 6, abs=1e-12)  # TP 2, FP 1, FN 1, TN 1 -> (2-1)/sqrt(3*3*2*2)
    assert m["NDCG"] == 0.0  # k = floor(0.5) = 0
    assert m["Top_recall"] == 1.0  # P90(y)=1.22 and P90(s)=0.01 both select W6F only


def test_example_five_variants_sign_flipped():
    m = compute_metrics(Y5, -S5, B5)
    assert m["Spearman"] == pytest.approx(-0.5, abs=1e-12)
    assert m["AUC"] == pytest.approx(1 / 6, abs=1e-12)
    assert m["MCC"] == pytest.approx(-2 / 3, abs=1e-12)
    assert m["NDCG"] == 0.0 and m["Top_recall"] == 0.0


def test_example_twenty_variants_with_ties():
    assert B20.sum() == 12
    m = compute_metrics(Y20, S20, B20)
    assert m["Spearman"] == pytest.approx(0.8990206019154462, abs=1e-12)
    assert m["AUC"] == pytest.approx(93 / 96, abs=1e-12)
    # three scores tie at the median -0.2: all predicted fit -> TP 11, TN 8, FP 0, FN 1
    assert m["MCC"] == pytest.approx(88 / math.sqrt(9504), abs=1e-12)
    # k = 2: DCG = 1 + (3.6/4.2)/log2(3), IDCG = 1 + (3.95/4.2)/log2(3)
    hand = (1 + (3.6 / 4.2) / math.log2(3)) / (1 + (3.95 / 4.2) / math.log2(3))
    assert m["NDCG"] == pytest.approx(hand, abs=1e-12)
    assert m["NDCG"] == pytest.approx(0.9670024326372287, abs=1e-12)
    assert m["Top_recall"] == pytest.approx(1 / 3, abs=1e-12)  # |T| = 3 (tie at 0.95), M = {0, 17}


def test_ndcg_options():
    assert ndcg(Y20, S20, top=20) == pytest.approx(0.9869006656038762, abs=1e-12)
    assert ndcg(Y20, S20, quantile=False, top="all") == pytest.approx(0.9893655680510745, abs=1e-12)
    assert math.isnan(ndcg(np.ones(20), S20))  # constant DMS -> NaN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scipy_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.normal(size=n)
    s = 0.6 * y + rng.normal(size=n)  # no ties (continuous)
    b = (y >= np.median(y)).astype(int)
    assert spearman(y, s) == pytest.approx(spearmanr(y, s).statistic, abs=1e-14)
    assert auc(b, s) == pytest.approx(roc_auc_score(b, s), abs=1e-14)
    assert mcc(b, s) == pytest.approx(matthews_corrcoef(b, (s >= np.median(s)).astype(int)), abs=1e-14)
    # NDCG with linear gains and no ties is sklearn's ndcg_score on min-max scaled y at k = 10 %
    gains = (y - y.min()) / (y.max() - y.min())
    assert ndcg(y, s) == pytest.approx(ndcg_score([gains], [s], k=n // 10, ignore_ties=True), abs=1e-12)
    # top recall by direct counting
    top_y = set(np.argsort(-y)[: math.ceil(0.1 * (n - 1))])
    top_s = set(np.argsort(-s)[: math.ceil(0.1 * (n - 1))])
    assert top_recall(y, s) == pytest.approx(len(top_y & top_s) / len(top_y), abs=1e-12)


def test_metrics_depend_only_on_order():
    m1 = compute_metrics(Y20, S20, B20)
    m2 = compute_metrics(Y20, 3.0 * S20 - 7.0, B20)
    for k in METRICS:
        assert m1[k] == pytest.approx(m2[k], abs=1e-12)


def test_auc_one_class_is_nan_and_mcc_zero():
    assert math.isnan(auc(np.ones(5, dtype=int), S5))
    assert mcc(np.ones(5, dtype=int), S5) == 0.0


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(5)
    y = rng.normal(size=200)
    s = y + rng.normal(size=200)
    b = (y > 0).astype(int)
    e1 = evaluate(y, s, b, bootstrap=300, seed=3)
    e2 = evaluate(y, s, b, bootstrap=300, seed=3)
    e3 = evaluate(y, s, b, bootstrap=300, seed=4)
    assert e1.ci_low == e2.ci_low and e1.ci_high == e2.ci_high
    assert e1.ci_low != e3.ci_low
    for k in ("Spearman", "AUC", "MCC"):
        assert e1.ci_low[k] < e1.values[k] < e1.ci_high[k]
        assert 0 < e1.se[k] < 0.2
    # the bootstrap SE of Spearman is close to the asymptotic sqrt((1 - rho^2)^2 / n) scale
    rho = e1.values["Spearman"]
    assert e1.se["Spearman"] == pytest.approx((1 - rho**2) / math.sqrt(200), rel=0.5)
    none = evaluate(y, s, b, bootstrap=0)
    assert none.ci_low == {} and none.bootstrap == 0


def test_without_binary_labels_auc_mcc_are_nan():
    e = evaluate(Y20, S20, None, bootstrap=20)
    assert math.isnan(e.values["AUC"]) and math.isnan(e.values["MCC"])
    assert e.as_dict()["metrics"]["AUC"] is None
    assert e.values["Spearman"] == pytest.approx(0.8990206019154462, abs=1e-12)


def test_by_depth_reuses_the_full_median_threshold():
    depths = np.array([1] * 10 + [2] * 10)
    e = evaluate(Y20, S20, B20, depths=depths, bootstrap=0)
    assert set(e.by_depth) == {"1", "2"}
    assert e.by_depth["1"]["n"] == 10
    assert e.by_depth["2"]["metrics"]["Spearman"] == pytest.approx(spearmanr(Y20[10:], S20[10:]).statistic)
    labels = (S20 >= np.median(S20)).astype(int)
    assert e.by_depth["2"]["metrics"]["MCC"] == pytest.approx(matthews_corrcoef(B20[10:], labels[10:]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        evaluate(Y5, S20)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, 3.0]))
