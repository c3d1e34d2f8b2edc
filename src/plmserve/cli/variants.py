"""Variant-effect commands: ``plmserve variants score`` and ``plmserve variants evaluate``.

    plmserve variants score -m esm2-650m --wt wt.fasta BLAT_ECOLX_Jacquier_2013.csv -o esm2.csv
    plmserve variants score -m poet --msa BLAT.a3m BLAT_ECOLX_Jacquier_2013.csv -o poet.csv --report poet.html
    plmserve variants evaluate esm2.csv poet.csv -o comparison.csv --report comparison.html

``score`` reads a ProteinGym DMS CSV, a FASTA file or a mutation list, scores every variant with
the model family's zero-shot convention (:mod:`plmserve.variants.scoring`) and writes
``mutant, mutated_sequence, score[, score_1..], <input columns>`` plus ``<output>.json`` (model,
weights, settings). ``evaluate`` computes ProteinGym's metrics with bootstrap intervals
(:mod:`plmserve.variants.metrics`); several files give one comparison table.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidParameterError

variants_app = typer.Typer(help="Variant effects: zero-shot scores for every model, ProteinGym metrics, reports.",
                           no_args_is_help=True)


def _parse_grid(text: str) -> list[tuple[int, float]]:
    from plmserve.cli.poet import parse_grid

    return parse_grid(text)


def _metadata(loaded: Any, variants: Any, result: Any, *, input_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    from plmserve import __version__

    return {
        "plmserve_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": loaded.spec.slug, "family": loaded.family, "source": loaded.source,
                  "random_weights": loaded.is_dummy, "description": loaded.spec.description},
        "method": result.method,
        "score_column": "score",
        "replicate_columns": list(result.replicate_names) if result.replicates is not None
        and len(result.replicate_names) > 1 else [],
        "higher_is_fitter": True,
        "relative_to": "wild type (WT scores 0)",
        "settings": {**result.settings, **extra},
        "input": str(input_path),
        "num_variants": len(variants),
        "wild_type": variants.wild_type,
    }


@variants_app.command("score")
@cli_errors
def score_cmd(
    variants_file: Path = typer.Argument(..., metavar="VARIANTS",
                                         help="DMS CSV (mutant[, mutated_sequence, DMS_score, ...]), FASTA or a "
                                              "list of mutation codes"),
    model: str = typer.Option(..., "-m", "--model", help="esm2-650m | esmc-300m | esm3 | poet (any registry name)"),
    output: Path = typer.Option(..., "-o", "--output", help="output CSV (a <output>.json sidecar is written too)"),
    wt: Optional[Path] = typer.Option(None, "--wt", help="FASTA with the wild type (default: inferred from a DMS CSV, "
                                                         "or the MSA's first row)"),
    msa: Optional[Path] = typer.Option(None, "--msa", help="PoET: MSA to sample the score.py prompt ensemble from"),
    prompt: Optional[Path] = typer.Option(None, "--prompt", help="PoET: prompt file (FASTA/CSV blocks separated by "
                                                                 "<END_PROMPT>; one block per replicate)"),
    grid: Optional[str] = typer.Option(None, "--grid", help="PoET with --msa: MAX_TOKENS:MAX_SIMILARITY,... (default: "
                                                            "the official 15-point grid)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="PoET with --msa: prompt sampling seed (default 188257)"),
    no_reverse: bool = typer.Option(False, "--no-reverse", help="PoET with --prompt: forward score only"),
    evaluate: bool = typer.Option(False, "--evaluate", help="also print ProteinGym metrics (needs DMS_score)"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a self-contained HTML report"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap replicates for --evaluate/--report (0 = none)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="explicit weights file/folder"),
    load_format: Optional[str] = typer.Option(None, "--load-format", help="auto | dummy (RANDOM weights)"),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="weights directory (env PLMSERVE_MODEL_DIR)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda[:N]"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16"),
) -> None:
    """Zero-shot variant-effect scores (higher = fitter, relative to the wild type) with the
    model's published convention: masked marginals (ESM-2, ESM C, ESM3) or the PoET ensemble."""
    from plmserve.variants.io import read_variants, read_wild_type, scores_frame, write_scores
    from plmserve.variants.loading import load_scoring_model, resolve_spec
    from plmserve.variants.scoring import score_variants

    spec = resolve_spec(model)
    if spec.family != "poet" and (msa or prompt):
        raise InvalidParameterError(f"--msa/--prompt are for PoET; {spec.slug} scores from the wild type alone")
    if spec.family == "poet" and (msa is None) == (prompt is None):
        raise InvalidParameterError("PoET needs exactly one of --msa (score.py ensemble) or --prompt (prompt file)")
    if grid and msa is None:
        raise InvalidParameterError("--grid needs --msa")
    if output.suffix.lower() != ".csv":
        raise InvalidParameterError(f"-o {output}: the output is a CSV file (name it .csv)")
    alignment = None
    if msa is not None:
        from plmserve.bio.msa import read_msa

        alignment = read_msa(msa)
    wild_type = read_wild_type(wt) if wt is not None else None
    if wild_type is None and alignment is not None and not _is_dms_csv(variants_file):
        wild_type = alignment.query.replace("-", "").upper()
    variants = read_variants(variants_file, wild_type)
    if alignment is not None and alignment.query.replace("-", "").upper() != variants.wild_type:
        console.print("[yellow]note:[/] the MSA's first row differs from the wild type", highlight=False)
    prompts = None
    if prompt is not None:
        from plmserve.bio.prompt import read_prompt

        prompts = [list(r) for r in read_prompt(prompt)]
    points = _parse_grid(grid) if grid else None

    with console.status(f"loading {model} ..."):
        loaded = load_scoring_model(model, checkpoint=checkpoint, load_format=load_format, model_dir=model_dir,
                                    device=device, dtype=dtype)  # fmt: skip
    if loaded.is_dummy:
        console.print("[bold yellow]WARNING:[/] RANDOM weights (load-format dummy): scores are meaningless",
                      highlight=False)
    with progress() as bar:
        task = bar.add_task(f"{loaded.spec.slug}", total=None)
        result = score_variants(loaded.model, loaded.family, variants, prompts=prompts, msa=alignment, grid=points,
                                seed=seed, reverse=not no_reverse,
                                progress=lambda d, t: bar.update(task, completed=d, total=t))  # fmt: skip
    frame = scores_frame(variants, result)
    extra: dict[str, Any] = {}
    if msa is not None:
        extra["msa"] = str(msa)
    if prompt is not None:
        extra["prompt"] = str(prompt)
    meta = _metadata(loaded, variants, result, input_path=variants_file, extra=extra)
    side = write_scores(output, frame, meta)
    console.print(f"{len(frame)} variants scored with {loaded.spec.slug} ({result.method}) -> {output} (+ {side.name})",
                  highlight=False, soft_wrap=True)
    if evaluate or report:
        from plmserve.variants.evaluation import ScoreFile, evaluate_files

        files = [ScoreFile.from_frame(output, frame, meta)]
        evals = evaluate_files(files, bootstrap=bootstrap, seed=0, require_dms=evaluate)
        if evaluate:
            _print_table(evals)
        if report:
            from plmserve.variants.report import write_report

            write_report(report, files, evals, msa=alignment, prompts=prompts)
            console.print(f"report -> {report}", highlight=False)


def _is_dms_csv(path: Path) -> bool:
    try:
        head = path.read_text().lstrip().splitlines()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return False
    return "mutated_sequence" in head and "mutant" in head


def _fmt(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def _print_table(evals: list[Any]) -> None:
    from rich.table import Table

    from plmserve.variants.metrics import METRICS

    if not evals:
        return
    conf = int(round(evals[0].confidence * 100))
    title = "ProteinGym zero-shot metrics" + (f" ({conf}% bootstrap CI, {evals[0].bootstrap} replicates)"
                                              if evals[0].bootstrap else "")
    table = Table(title=title)
    table.add_column("model / file", no_wrap=True)
    table.add_column("n", justify="right")
    for m in METRICS:
        table.add_column(m, justify="right")
    paired = all(e.paired for e in evals)
    if paired:
        table.add_column("ΔSpearman vs best", justify="right")
    for e in evals:
        cells = [_fmt(e.values[m], e.ci_low.get(m), e.ci_high.get(m)) for m in METRICS]
        if paired:
            cells.append(_fmt(e.paired["difference"], e.paired["ci_low"], e.paired["ci_high"]))
        table.add_row(e.label, str(e.n), *cells)
    if paired:
        p = evals[0].paired
        table.caption = (f"ΔSpearman: minus {p['reference']}'s, paired bootstrap on the {p['n_common']} variants "
                         "every file scored")
    from rich.console import Console

    out = Console()
    if not out.is_terminal:  # a file or pipe: no need to squeeze the table into 80 columns
        out = Console(width=200)
    out.print(table)


@variants_app.command("evaluate")
@cli_errors
def evaluate_cmd(
    score_files: list[Path] = typer.Argument(..., metavar="SCORES...",
                                             help="score CSVs from 'variants score' (or any CSV with mutant and a "
                                                  "score column)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the table: .csv or .json"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a self-contained HTML report"),
    dms: Optional[Path] = typer.Option(None, "--dms", help="DMS CSV to join on 'mutant' when the score files have no "
                                                           "DMS_score"),
    score_column: str = typer.Option("score", "--score-column", help="the score column (higher = fitter)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="bootstrap replicates (0 = no intervals)"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
) -> None:
    """ProteinGym metrics (Spearman, AUC, MCC, NDCG@10%, top-10% recall) with bootstrap
    confidence intervals; several files give one comparison table."""
    from plmserve.variants.evaluation import ScoreFile, evaluate_files, write_table

    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise InvalidParameterError(f"-o {output}: use a .csv or .json file")
    if bootstrap < 0:
        raise InvalidParameterError("--bootstrap must be >= 0")
    files = [ScoreFile.read(p, score_column=score_column, dms=dms) for p in score_files]
    evals = evaluate_files(files, bootstrap=bootstrap, seed=seed, require_dms=True)
    _print_table(evals)
    if output is not None:
        write_table(output, evals)
        console.print(f"table -> {output}", highlight=False)
    if report is not None:
        from plmserve.variants.report import write_report

        write_report(report, files, evals)
        console.print(f"report -> {report}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``variants`` sub-command group to the root CLI."""
    app.add_typer(variants_app, name="variants")
