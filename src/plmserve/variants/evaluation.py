"""Evaluating score files against their DMS measurements (``plmserve variants evaluate``).

A :class:`ScoreFile` is one score CSV (from ``variants score`` or any CSV with ``mutant`` and a
score column), its sidecar metadata and a label. :func:`evaluate_files` computes
:func:`plmserve.variants.metrics.evaluate` for each; :func:`write_table` writes the comparison
as CSV (one row per file, ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high``,
``<metric>_se`` columns) or JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plmserve.bio.mutations import is_wild_type_code
from plmserve.errors import InvalidInputError

from .io import MUTANT_COLUMN, SCORE_COLUMN, read_scores
from .metrics import METRICS, Evaluation, evaluate

DMS_SCORE = "DMS_score"
DMS_BIN = "DMS_score_bin"


@dataclass
class ScoreFile:
    """One score table. ``label``: the model name from the sidecar, else the file name."""

    path: Path
    frame: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)
    score_column: str = SCORE_COLUMN
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = (self.metadata.get("model") or {}).get("name") or self.path.stem

    @classmethod
    def from_frame(cls, path: str | Path, frame: pd.DataFrame, metadata: dict[str, Any]) -> "ScoreFile":
        return cls(Path(path), frame, metadata)

    @classmethod
    def read(cls, path: str | Path, *, score_column: str = SCORE_COLUMN, dms: str | Path | None = None) -> "ScoreFile":
        """Read a score CSV (+ sidecar); with ``dms``, join that DMS CSV's ``DMS_score`` and
        ``DMS_score_bin`` on ``mutant``.

        Raises:
            FileNotFoundError; InvalidInputError: no such score column, no ``mutant`` column for
                the join, or no DMS row matching a scored mutant.
        """
        path = Path(path)
        frame, meta = read_scores(path)
        if score_column not in frame.columns:
            columns = ", ".join(map(str, frame.columns))
            raise InvalidInputError(f"{path}: no column '{score_column}' (columns: {columns}); use --score-column")
        if dms is not None:
            frame = _join_dms(path, frame, Path(dms))
        return cls(path, frame, meta, score_column)

    @property
    def has_dms(self) -> bool:
        return DMS_SCORE in self.frame.columns

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """``(y, s, b, depth)`` over the rows with both a measured and a predicted value.

        Raises:
            InvalidInputError: a non-numeric score or DMS value (names the file and line).
        """
        return self.evaluable()[1:]

    def evaluable(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """``(mutants, y, s, b, depth)``: :meth:`arrays` with the rows' ``mutant`` codes."""
        f = self.frame
        y = _numeric(f[DMS_SCORE], self.path, DMS_SCORE)
        s = _numeric(f[self.score_column], self.path, self.score_column)
        keep = ~(np.isnan(y) | np.isnan(s))
        b = None
        if DMS_BIN in f.columns:
            bins = _numeric(f[DMS_BIN], self.path, DMS_BIN)
            keep &= ~np.isnan(bins)
            b = bins[keep].astype(int)
        codes = f[MUTANT_COLUMN].astype(str).to_numpy() if MUTANT_COLUMN in f.columns \
            else np.array([f"row-{i + 1}" for i in range(len(f))])
        depth = np.array([mutation_depth(c) for c in codes]) if MUTANT_COLUMN in f.columns \
            else np.ones(len(f), dtype=int)
        return codes[keep], y[keep], s[keep], b, depth[keep]


def mutation_depth(code: str) -> int:
    """Substitutions in a code (``A1P:D2N`` -> 2); 0 for the wild type."""
    code = code.strip()
    if not code or is_wild_type_code(code):
        return 0
    return len([p for p in code.split(":") if p])


def _numeric(col: pd.Series, path: Path, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise InvalidInputError(f"{path}: line {i + 2}: {name} '{col.iloc[i]}' is not a number")
    return values.to_numpy(dtype=np.float64)


def _join_dms(path: Path, frame: pd.DataFrame, dms: Path) -> pd.DataFrame:
    from .io import read_variants

    if MUTANT_COLUMN not in frame.columns:
        raise InvalidInputError(f"{path}: no '{MUTANT_COLUMN}' column to join the DMS on")
    dms_set = read_variants(dms)
    if DMS_SCORE not in dms_set.extra.columns:
        raise InvalidInputError(f"{dms}: no '{DMS_SCORE}' column")
    measured = dms_set.extra.assign(**{MUTANT_COLUMN: dms_set.mutants})
    cols = [MUTANT_COLUMN] + [c for c in (DMS_SCORE, DMS_BIN) if c in measured.columns]
    measured = measured[cols].groupby(MUTANT_COLUMN, as_index=False).mean()  # duplicates averaged (ProteinGym)
    base = frame.drop(columns=[c for c in (DMS_SCORE, DMS_BIN) if c in frame.columns])
    merged = base.merge(measured, on=MUTANT_COLUMN, how="left")
    if merged[DMS_SCORE].isna().all():
        raise InvalidInputError(f"{path}: no mutant matches a row of {dms}")
    return merged


def evaluate_files(files: list[ScoreFile], *, bootstrap: int = 1000, seed: int = 0,
                   require_dms: bool = True) -> list[Evaluation]:
    """One :class:`Evaluation` per file that has ``DMS_score`` (labels made unique).

    Raises:
        InvalidInputError: ``require_dms`` and a file without ``DMS_score``, or fewer than 2
            evaluable rows.
    """
    seen: dict[str, int] = {}
    evaluated: list[ScoreFile] = []
    for f in files:
        seen[f.label] = seen.get(f.label, 0) + 1
    out = []
    for f in files:
        label = f.label if seen[f.label] == 1 else f"{f.label} ({f.path.name})"
        if not f.has_dms:
            if require_dms:
                raise InvalidInputError(f"{f.path}: no '{DMS_SCORE}' column to evaluate against; score a DMS CSV or "
                                        "give --dms DMS.csv")  # fmt: skip
            continue
        y, s, b, depth = f.arrays()
        if y.size < 2:
            raise InvalidInputError(f"{f.path}: fewer than 2 rows with both {DMS_SCORE} and a score")
        out.append(evaluate(y, s, b, label=label, depths=depth, bootstrap=bootstrap, seed=seed))
        evaluated.append(f)
    if len(out) > 1 and bootstrap > 0:
        paired_spearman(evaluated, out, bootstrap=bootstrap, seed=seed)
    return out


def paired_spearman(files: list[ScoreFile], evals: list[Evaluation], *, bootstrap: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> None:
    """Fill ``Evaluation.paired``: each model's Spearman minus the best model's, on the variants
    every file scored (matched by ``mutant``; duplicates averaged), with a paired bootstrap (the
    same resampled variants for every model) giving a percentile interval of the difference. An
    interval excluding 0 means the ranking of the two models is not a resampling accident.
    Nothing is filled when fewer than 10 variants are shared."""
    from .metrics import spearman

    series = []
    for f in files:
        mutants, y, s, _, _ = f.evaluable()
        series.append(pd.DataFrame({"y": y, "s": s}, index=mutants).groupby(level=0).mean())
    common = series[0].index
    for t in series[1:]:
        common = common.intersection(t.index)
    if len(common) < 10:
        return
    common = common.sort_values()
    y = series[0].loc[common, "y"].to_numpy()
    scores = np.stack([t.loc[common, "s"].to_numpy() for t in series])  # [models, n]
    point = np.array([spearman(y, s) for s in scores])
    best = int(np.nanargmax(point))
    rng = np.random.default_rng(seed)
    diffs = np.empty((bootstrap, len(series)))
    for r in range(bootstrap):
        idx = rng.integers(0, y.size, y.size)
        rho = np.array([spearman(y[idx], s[idx]) for s in scores])
        diffs[r] = rho - rho[best]
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(diffs, alpha, axis=0), np.nanquantile(diffs, 1 - alpha, axis=0)
    for k, e in enumerate(evals):
        e.paired = {"metric": "Spearman", "reference": evals[best].label, "n_common": int(y.size),
                    "difference": float(point[k] - point[best]), "ci_low": float(low[k]), "ci_high": float(high[k])}


def table_frame(evals: list[Evaluation]) -> pd.DataFrame:
    """The comparison table: one row per evaluation."""
    rows = []
    for e in evals:
        row: dict[str, Any] = {"label": e.label, "n": e.n}
        for m in METRICS:
            row[m] = e.values[m]
            row[f"{m}_ci_low"] = e.ci_low.get(m, math.nan)
            row[f"{m}_ci_high"] = e.ci_high.get(m, math.nan)
            row[f"{m}_se"] = e.se.get(m, math.nan)
        if e.paired:
            row["Spearman_diff_to_best"] = e.paired["difference"]
            row["Spearman_diff_ci_low"] = e.paired["ci_low"]
            row["Spearman_diff_ci_high"] = e.paired["ci_high"]
            row["diff_reference"] = e.paired["reference"]
            row["n_common"] = e.paired["n_common"]
        row["bootstrap"] = e.bootstrap
        row["seed"] = e.seed
        rows.append(row)
    return pd.DataFrame(rows)


def write_table(path: str | Path, evals: list[Evaluation]) -> None:
    """The comparison as ``.csv`` (:func:`table_frame`) or ``.json`` (a list of
    :meth:`Evaluation.as_dict`, NaN as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([e.as_dict() for e in evals], indent=2) + "\n")
    else:
        table_frame(evals).to_csv(path, index=False)
