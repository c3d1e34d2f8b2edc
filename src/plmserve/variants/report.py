"""Self-contained HTML reports of variant-effect scores (``--report report.html``).

One file that opens without a network: Plotly's JavaScript bundle (shipped inside the ``plotly``
Python package) is inlined once, every figure is a Plotly ``div``, the page is a Jinja2
template. Contents, per score file:

* the metrics table (ProteinGym metrics with bootstrap intervals) when ``DMS_score`` is present;
* the single-site heatmap: positions x 20 amino acids of the predicted score (and of the
  measured ``DMS_score`` when present), the wild-type residue marked;
* predicted vs measured scatter with the Spearman correlation in the title;
* score distributions (predicted, split by ``DMS_score_bin`` when present; measured);
* for PoET: the prompts used (sequences, tokens per replicate) and, with an MSA, its depth, N_eff
  (homology level 0.8, as the PoET sampler), N_eff/L and per-position coverage.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plmserve.bio.mutations import WILD_TYPE_CODE

from .evaluation import DMS_BIN, DMS_SCORE, ScoreFile
from .metrics import METRICS, Evaluation

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
.ci { color: #666; font-size: .82rem; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: .5rem .8rem; border-radius: 4px; }
.meta td { text-align: left; } .meta th { text-align: left; background: #f7f7f7; }
.figure { margin: 1rem 0; }
code { font-size: .88rem; }
</style>
<script type="text/javascript">{{ plotly_js }}</script>
</head>
<body>
<h1>{{ title }}</h1>
<p>Generated {{ created }} by plmserve {{ version }}. Scores are zero-shot, higher = fitter, relative to the wild
type ({{ wt_code }} = 0). Metrics follow ProteinGym's zero-shot protocol (Spearman, AUC and MCC against
<code>DMS_score_bin</code>, NDCG of the top 10 %, recall of the top 10 %).</p>
{% if evaluations %}
<h2 id="metrics">Metrics</h2>
<table class="metrics">
<thead><tr><th>model / file</th><th>n</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}
{% if paired %}<th>ΔSpearman vs best</th>{% endif %}</tr></thead>
<tbody>
{% for e in evaluations %}<tr><td>{{ e.label }}</td><td>{{ e.n }}</td>
{% for m in metrics %}<td>{{ e.cells[m].value }}{% if e.cells[m].ci %}<br><span class="ci">{{ e.cells[m].ci }}</span>
{% endif %}</td>{% endfor %}
{% if paired %}<td>{{ e.diff.value }}<br><span class="ci">{{ e.diff.ci }}</span></td>{% endif %}</tr>
{% endfor %}</tbody>
</table>
{% if paired %}<p class="ci">ΔSpearman: each model's Spearman minus {{ paired.reference }}'s on the
{{ paired.n_common }} variants every file scored, with a paired bootstrap interval (the same resampled
variants for every model).</p>{% endif %}
{% if evaluations[0].bootstrap %}<p class="ci">Intervals: {{ (evaluations[0].confidence * 100) | round | int }} % percentile
bootstrap over variants, {{ evaluations[0].bootstrap }} replicates, seed {{ evaluations[0].seed }}.</p>{% endif %}
{% endif %}
{% for s in sections %}
<h2 id="{{ s.anchor }}">{{ s.label }}</h2>
{% if s.dummy %}<p class="warn">These scores come from RANDOM weights (load format dummy): they are meaningless.</p>{% endif %}
<table class="meta">
{% for k, v in s.meta %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if s.depth_rows %}
<h3>By mutation depth</h3>
<table>
<thead><tr><th>substitutions</th><th>n</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in s.depth_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
<p class="ci">Per depth as ProteinGym: metrics recomputed on each subset, MCC with the full-assay median threshold.</p>
{% endif %}
{% for fig in s.figures %}<div class="figure">{{ fig | safe }}</div>
{% endfor %}
{% if s.prompt_rows %}
<h3>Prompts</h3>
<table>
<thead><tr>{% for h in s.prompt_header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in s.prompt_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{% endif %}
{% if s.msa %}
<h3>MSA</h3>
<table class="meta">
{% for k, v in s.msa %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% for fig in s.msa_figures %}<div class="figure">{{ fig | safe }}</div>
{% endfor %}
{% endif %}
{% endfor %}
</body>
</html>
"""


def _fig_html(fig: Any, div_id: str, height: int = 420) -> str:
    fig.update_layout(height=height, margin=dict(l=60, r=20, t=50, b=50), template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG, div_id=div_id,
                       default_height=f"{height}px")  # fmt: skip


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def single_site_matrix(frame: pd.DataFrame, column: str, wild_type: str | None,
                       wild_type_zero: bool = True) -> tuple[list[int], np.ndarray]:
    """``(positions, matrix)``: the 1-based positions with at least one single substitution and
    a float ``[20, len(positions)]`` of ``column`` (rows :data:`AMINO_ACIDS`; NaN = not scored;
    with ``wild_type_zero`` the wild-type residue is 0, as every relative score is)."""
    import re

    code = re.compile(r"^([A-Z])(\d+)([A-Z])$")
    cells: dict[tuple[int, str], float] = {}
    wt_at: dict[int, str] = {}
    for m, v in zip(frame["mutant"].astype(str), pd.to_numeric(frame[column], errors="coerce")):
        hit = code.match(m.strip())
        if not hit or math.isnan(v):
            continue
        pos = int(hit.group(2))
        cells[(pos, hit.group(3))] = float(v)
        wt_at[pos] = hit.group(1)
    positions = sorted(wt_at)
    mat = np.full((len(AMINO_ACIDS), len(positions)), np.nan)
    for j, pos in enumerate(positions):
        for i, aa in enumerate(AMINO_ACIDS):
            if (pos, aa) in cells:
                mat[i, j] = cells[(pos, aa)]
        if wild_type_zero and wild_type and pos <= len(wild_type) and wild_type[pos - 1] in AMINO_ACIDS:
            mat[AMINO_ACIDS.index(wild_type[pos - 1]), j] = 0.0
    return positions, mat


def _heatmap(frame: pd.DataFrame, column: str, wild_type: str | None, title: str, div_id: str,
             relative: bool = True) -> str | None:
    import plotly.graph_objects as go

    positions, mat = single_site_matrix(frame, column, wild_type, wild_type_zero=relative)
    if not positions:
        return None
    labels = [f"{wild_type[p - 1]}{p}" if wild_type and p <= len(wild_type) else str(p) for p in positions]
    text = [[(f"{labels[j]}{aa}" if not (wild_type and positions[j] <= len(wild_type)
              and wild_type[positions[j] - 1] == aa) else f"{labels[j]} (wild type)")
             for j in range(len(positions))] for aa in AMINO_ACIDS]  # fmt: skip
    finite = mat[np.isfinite(mat)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    # relative scores: diverging around the wild type's 0; measured values: sequential
    colours = dict(colorscale="RdBu", zmid=0.0, zmin=-bound, zmax=bound) if relative else dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(z=mat, x=labels, y=list(AMINO_ACIDS), text=text, hoverongaps=False,
                               colorbar=dict(title=column), **colours,
                               hovertemplate="%{text}<br>" + column + " = %{z:.3f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="position (wild-type residue)", yaxis_title="substitution",
                      yaxis=dict(autorange="reversed"))  # fmt: skip
    return _fig_html(fig, div_id, height=460)


def _scatter(frame: pd.DataFrame, score: str, spearman: float | None, div_id: str) -> str:
    import plotly.graph_objects as go

    y = pd.to_numeric(frame[DMS_SCORE], errors="coerce")
    s = pd.to_numeric(frame[score], errors="coerce")
    title = "Predicted vs measured" + (f" (Spearman ρ = {spearman:.3f})" if spearman is not None
                                       and not math.isnan(spearman) else "")
    fig = go.Figure(go.Scattergl(x=s, y=y, mode="markers", text=frame["mutant"].astype(str),
                                 marker=dict(size=5, opacity=0.6),
                                 hovertemplate="%{text}<br>score %{x:.3f}<br>DMS %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=title, xaxis_title=f"predicted ({score})", yaxis_title="measured (DMS_score)")
    return _fig_html(fig, div_id)


def _distributions(frame: pd.DataFrame, score: str, div_id: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    has_dms = DMS_SCORE in frame.columns
    fig = make_subplots(rows=1, cols=2 if has_dms else 1,
                        subplot_titles=["predicted score", "measured DMS_score"] if has_dms else ["predicted score"])
    s = pd.to_numeric(frame[score], errors="coerce")
    if DMS_BIN in frame.columns:
        b = pd.to_numeric(frame[DMS_BIN], errors="coerce")
        for val, name in ((1, "fit (DMS_score_bin = 1)"), (0, "unfit (DMS_score_bin = 0)")):
            fig.add_trace(go.Histogram(x=s[b == val], name=name, opacity=0.6, nbinsx=50), row=1, col=1)
        fig.update_layout(barmode="overlay")
    else:
        fig.add_trace(go.Histogram(x=s, name="predicted", nbinsx=50), row=1, col=1)
    if has_dms:
        fig.add_trace(go.Histogram(x=pd.to_numeric(frame[DMS_SCORE], errors="coerce"), name="DMS_score",
                                   nbinsx=50, marker_color="#888"), row=1, col=2)  # fmt: skip
    fig.update_layout(title="Score distributions")
    return _fig_html(fig, div_id, height=380)


def msa_summary(msa: Any) -> tuple[list[tuple[str, str]], np.ndarray]:
    """``(rows of facts, coverage)``: depth, width, N_eff at homology 0.8 (the PoET sampler's
    weights, :func:`plmserve.align.sampling.n_eff`), N_eff/L; coverage = fraction of MSA rows
    with a residue at each query column, float ``[L]``."""
    from plmserve.align.sampling import n_eff

    matrix = msa.aligned_matrix()
    coverage = (matrix != 20).mean(axis=0)  # gap index 20
    width = int(matrix.shape[1])
    neff = n_eff(msa, 0.8)
    facts = [("sequences (depth)", f"{len(msa)}"), ("query length L", f"{width}"),
             ("N_eff (homology 0.8)", f"{neff:.1f}"), ("N_eff / L", f"{neff / max(width, 1):.2f}"),
             ("mean coverage", f"{float(coverage.mean()):.3f}")]  # fmt: skip
    return facts, coverage


def _coverage_figure(coverage: np.ndarray, depth: int, div_id: str) -> str:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=np.arange(1, coverage.size + 1), y=coverage * depth, mode="lines", fill="tozeroy",
                               hovertemplate="position %{x}<br>%{y:.0f} sequences<extra></extra>"))
    fig.update_layout(title="MSA depth per query position (non-gap rows)", xaxis_title="query position",
                      yaxis_title="sequences")  # fmt: skip
    return _fig_html(fig, div_id, height=320)


def _section(i: int, f: ScoreFile, ev: Evaluation | None, msa: Any, prompts: Any) -> dict[str, Any]:
    meta = f.metadata or {}
    model = meta.get("model") or {}
    settings = meta.get("settings") or {}
    rows = [("file", str(f.path)), ("model", model.get("name", "?")), ("family", model.get("family", "?")),
            ("weights", model.get("source", "?")), ("method", meta.get("method", "?")),
            ("variants", str(len(f.frame))), ("score column", f.score_column)]  # fmt: skip
    if settings.get("convention"):
        rows.append(("convention", settings["convention"]))
    if settings.get("grid"):
        rows.append(("prompt grid (max tokens : max similarity)",
                     ", ".join(f"{t}:{s}" for t, s in settings["grid"]) + f"; seed {settings.get('seed')}"))
    wild_type = meta.get("wild_type")
    figures = []
    h = _heatmap(f.frame, f.score_column, wild_type, f"Single-site predicted scores ({f.label})", f"heat-pred-{i}")
    if h:
        figures.append(h)
    if DMS_SCORE in f.frame.columns:
        h = _heatmap(f.frame, DMS_SCORE, wild_type, "Single-site measured DMS_score", f"heat-dms-{i}",
                     relative=False)
        if h:
            figures.append(h)
        figures.append(_scatter(f.frame, f.score_column, ev.values["Spearman"] if ev else None, f"scatter-{i}"))
    figures.append(_distributions(f.frame, f.score_column, f"dist-{i}"))
    section: dict[str, Any] = {"anchor": f"file-{i}", "label": f.label, "meta": rows, "figures": figures,
                               "dummy": bool(model.get("random_weights")), "prompt_rows": [], "prompt_header": [],
                               "msa": None, "msa_figures": [],
                               "depth_rows": [[d, str(v["n"]), *(_fmt(v["metrics"][m]) for m in METRICS)]
                                              for d, v in (ev.by_depth.items() if ev else [])]}  # fmt: skip
    sizes = settings.get("prompt_sizes") or []
    if sizes:
        wt_ll = settings.get("wild_type_log_likelihood") or []
        header = ["replicate"] + (["max tokens", "max similarity"] if "max_tokens" in sizes[0] else []) + \
            ["sequences", "tokens", "WT log-likelihood"]
        table = []
        for k, sz in enumerate(sizes):
            row = [str(k + 1)]
            if "max_tokens" in sz:
                row += [str(sz["max_tokens"]), str(sz["max_similarity"])]
            row += [str(sz.get("sequences")), str(sz.get("tokens")), _fmt(wt_ll[k]) if k < len(wt_ll) else "n/a"]
            table.append(row)
        section["prompt_header"], section["prompt_rows"] = header, table
    if msa is None and settings.get("msa") and Path(settings["msa"]).is_file():
        from plmserve.bio.msa import read_msa

        msa = read_msa(settings["msa"])
    if msa is not None and model.get("family", "poet") == "poet":
        facts, coverage = msa_summary(msa)
        section["msa"] = [("file", settings.get("msa", "(given)"))] + facts
        section["msa_figures"] = [_coverage_figure(coverage, len(msa), f"msa-{i}")]
    return section


def render_report(files: list[ScoreFile], evaluations: list[Evaluation], *, msa: Any = None, prompts: Any = None,
                  title: str = "Variant effects report") -> str:
    """The report as one HTML string (see the module docstring).

    Args:
        files: the score tables; evaluations: their metrics (matched by label; may be empty).
        msa: the MSA a PoET score was computed from (else read from the sidecar's path if present).
    """
    import jinja2
    import plotly.offline
    from markupsafe import Markup

    from plmserve import __version__

    by_label = {e.label: e for e in evaluations}
    sections = []
    for i, f in enumerate(files):
        ev = by_label.get(f.label) or next((e for e in evaluations if e.label.startswith(f.label + " (")), None)
        sections.append(_section(i, f, ev, msa if i == 0 else None, prompts))
    cells = []
    for e in evaluations:
        row = {"label": e.label, "n": e.n, "bootstrap": e.bootstrap, "seed": e.seed, "confidence": e.confidence,
               "cells": {}}
        for m in METRICS:
            lo, hi = e.ci_low.get(m), e.ci_high.get(m)
            ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None and not math.isnan(lo) else ""
            row["cells"][m] = {"value": _fmt(e.values[m]), "ci": ci}
        if e.paired:
            row["diff"] = {"value": _fmt(e.paired["difference"]),
                           "ci": f"[{_fmt(e.paired['ci_low'])}, {_fmt(e.paired['ci_high'])}]"}
        cells.append(row)
    paired = evaluations[0].paired if evaluations and all(e.paired for e in evaluations) else None
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_TEMPLATE)
    return template.render(
        title=title,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        wt_code=WILD_TYPE_CODE,
        metrics=METRICS,
        evaluations=cells,
        paired=paired,
        sections=sections,
        plotly_js=Markup(plotly.offline.get_plotlyjs()),
    )


def write_report(path: str | Path, files: list[ScoreFile], evaluations: list[Evaluation], *, msa: Any = None,
                 prompts: Any = None) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(files, evaluations, msa=msa, prompts=prompts), encoding="utf-8")
    return path
