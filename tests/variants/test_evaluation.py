"""Comparing several score files: the paired bootstrap of the Spearman difference to the best model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from plmserve.variants.evaluation import ScoreFile, evaluate_files, table_frame


def _file(name: str, mutants, y, s) -> ScoreFile:
    frame = pd.DataFrame({"mutant": mutants, "score": s, "DMS_score": y,
                          "DMS_score_bin": (np.asarray(y) > 0).astype(int)})
    return ScoreFile(Path(f"{name}.csv"), frame, {"model": {"name": name}})


def test_paired_difference_to_best_matches_a_direct_paired_bootstrap():
    rng = np.random.default_rng(0)
    n = 150
    mutants = [f"A{i + 1}G" for i in range(n)]
    y = rng.normal(size=n)
    good = y + 0.5 * rng.normal(size=n)
    bad = y + 3.0 * rng.normal(size=n)
    # the second file lists its variants in another order and has 5 more: only shared ones count
    order = rng.permutation(n)
    extra = [f"C{i}W" for i in range(5)]
    files = [_file("good", mutants, y, good),
             _file("bad", [mutants[i] for i in order] + extra, np.r_[y[order], np.zeros(5)],
                   np.r_[bad[order], np.zeros(5)])]
    evals = evaluate_files(files, bootstrap=200, seed=3)
    good_e, bad_e = evals
    assert good_e.paired["reference"] == "good" and good_e.paired["difference"] == 0.0
    assert good_e.paired["ci_low"] == good_e.paired["ci_high"] == 0.0
    assert bad_e.paired["n_common"] == n
    rho_good, rho_bad = spearmanr(y, good).statistic, spearmanr(y, bad).statistic
    assert bad_e.paired["difference"] == pytest.approx(rho_bad - rho_good, abs=1e-12)
    # the same draw by hand (variants sorted by code, generator seeded as documented)
    idx_sorted = np.argsort(np.array(mutants))
    ys, gs, bs = y[idx_sorted], good[idx_sorted], bad[idx_sorted]
    r = np.random.default_rng(3)
    diffs = []
    for _ in range(200):
        i = r.integers(0, n, n)
        diffs.append(spearmanr(ys[i], bs[i]).statistic - spearmanr(ys[i], gs[i]).statistic)
    assert bad_e.paired["ci_low"] == pytest.approx(np.quantile(diffs, 0.025), abs=1e-12)
    assert bad_e.paired["ci_high"] == pytest.approx(np.quantile(diffs, 0.975), abs=1e-12)
    assert bad_e.paired["ci_high"] < 0  # clearly worse
    t = table_frame(evals)
    assert t["Spearman_diff_to_best"].tolist() == [0.0, bad_e.paired["difference"]]
    assert t["diff_reference"].tolist() == ["good", "good"]
    assert bad_e.as_dict()["spearman_difference_to_best"]["reference"] == "good"


def test_no_paired_difference_without_shared_variants_or_bootstrap():
    y = np.linspace(-1, 1, 20)
    a = _file("a", [f"A{i}G" for i in range(1, 21)], y, y)
    b = _file("b", [f"K{i}R" for i in range(1, 21)], y, -y)
    assert all(not e.paired for e in evaluate_files([a, b], bootstrap=50))
    c = _file("c", [f"A{i}G" for i in range(1, 21)], y, -y)
    assert all(not e.paired for e in evaluate_files([a, c], bootstrap=0))
    assert all(e.paired for e in evaluate_files([a, c], bootstrap=20))
