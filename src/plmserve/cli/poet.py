"""PoET commands: ``plmserve poet score|single-site|generate``, computed locally on CPU or GPU.

    plmserve poet score --msa msa.a3m --variants variants.fasta -o scores.csv
    plmserve poet score --prompt prompt.fasta --variants variants.fasta -o scores.csv
    plmserve poet single-site --prompt prompt.fasta --sequence MKTAYIAK... -o ssp.csv
    plmserve poet generate --prompt prompt.fasta -n 10 --temperature 1.0 --sample-seed 1 -o generated.csv
    plmserve poet ensemble-score --msa msa.a3m --variants variants.fasta -o scores.csv   # score.py recipe

The prompt is either a prompt file (FASTA or CSV blocks separated by ``<END_PROMPT>`` lines, one
block per replicate) or sampled from an MSA with the align service's sampler (``--msa`` plus the
``plmserve prompt sample`` options). Outputs are CSV in the OpenProtein column layout with a
header: ``name,sequence,score_1..score_N`` (score, generate) and ``mut_code,score_1..score_N``
(single-site; the wild-type row is ``WT``), one score column per prompt replicate.

Each command is a thin wrapper over one local function (:func:`score_local`,
:func:`single_site_local`, :func:`generate_local`) so that a ``--server`` mode can swap it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidInputError, InvalidParameterError, MissingParameterError

Replicates = list[list[tuple[str, str]]]

_MODEL_HELP = "model name (registry slug or alias)"
_CKPT_HELP = "weights file (official poet.ckpt or .safetensors); overrides --model"
_SERVER = typer.Option(None, "--server", help="compute on a running plmserve server (http://host:port) instead of locally")
_SERVER_USER = typer.Option(None, "--username", "-u", envvar="PLMSERVE_USERNAME", help="user for --server [env PLMSERVE_USERNAME]")
_SERVER_PASSWORD = typer.Option(None, "--password", envvar="PLMSERVE_PASSWORD", help="password for --server [env PLMSERVE_PASSWORD]")
_SERVER_KEY = typer.Option(None, "--api-key", envvar="PLMSERVE_API_KEY", help="API key for --server [env PLMSERVE_API_KEY]")


def _engine_or_server(server, username, password, api_key, *local_args):
    """The local engine (:func:`load_model` with ``local_args``), or with ``--server`` a
    :class:`plmserve.client.remote.RemoteEngine` that submits jobs to that server."""
    if not server:
        return load_model(*local_args)
    from plmserve.cli.jobs import remote_session
    from plmserve.client.remote import RemoteEngine

    return RemoteEngine(remote_session(server, username, password, api_key))


# ---------------------------------------------------------------------------------------------
# local computations (one call each)
# ---------------------------------------------------------------------------------------------
def score_local(
    model: Any,
    replicates: Replicates,
    variants: list[tuple[str, str]],
    *,
    reverse: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Score ``variants`` (``(name, sequence)``) under every replicate.

    Returns:
        ``(header, rows)``: ``name,sequence,score_1..score_N`` and one row per variant.
    """
    scores = model.score(replicates, [s for _, s in variants], reverse=reverse, progress=on_progress)
    header = ["name", "sequence"] + _score_columns(len(replicates))
    rows = [[name, seq, *(float(x) for x in scores[:, i])] for i, (name, seq) in enumerate(variants)]
    return header, rows


def single_site_local(
    model: Any,
    replicates: Replicates,
    sequence: str,
    *,
    reverse: bool = True,
    positions: list[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """The single-site scan of ``sequence``: header ``mut_code,score_1..score_N``; rows ``WT``
    then ``A1R``... (absolute log-likelihoods); only the 1-based ``positions`` when given."""
    kwargs = {} if positions is None else {"positions": positions}
    result = model.single_site(replicates, sequence, reverse=reverse, progress=on_progress, **kwargs)
    header = ["mut_code"] + _score_columns(len(replicates))
    return header, [[code, *(float(x) for x in scores)] for code, scores in result]


def generate_local(
    model: Any,
    replicates: Replicates,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_length: int = 1000,
    seed: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Generate ``n`` sequences: header ``name,sequence,score_1..score_N``; names
    ``generated-sequence-<i>`` (1-based, not padded)."""
    result = model.generate(
        replicates, n, temperature=temperature, top_k=top_k, top_p=top_p,
        max_length=max_length, seed=seed, progress=on_progress,
    )  # fmt: skip
    header = ["name", "sequence"] + _score_columns(len(replicates))
    rows = [[f"generated-sequence-{i + 1}", seq, *(float(x) for x in ll)] for i, (seq, ll) in enumerate(result)]
    return header, rows


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _score_columns(n: int) -> list[str]:
    return [f"score_{i + 1}" for i in range(n)]


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write a CSV with a header row (floats with full precision)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_sequences(path: Path) -> list[tuple[str, str]]:
    """Variants from FASTA, a CSV with a header holding ``mutated_sequence`` (a ProteinGym DMS
    file: names from ``mutant``; :func:`plmserve.variants.io.read_named_sequences`), or headerless
    CSV/plain text (``sequence`` or ``name,sequence`` per line). Unnamed sequences get
    ``sequence-<i>``, zero-padded to the width of the count.

    Raises:
        InvalidInputError: no sequences, or a CSV line with more than two fields (names the line).
    """
    from plmserve.bio.fasta import parse_fasta
    from plmserve.variants.io import read_named_sequences

    named = read_named_sequences(path)
    if named is not None:
        return named

    text = path.read_text()
    if text.lstrip().startswith(">"):
        return [(r.name, r.sequence) for r in parse_fasta(text, source=str(path))]
    pairs: list[tuple[str | None, str]] = []
    for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in fields]
        if not fields or not any(fields):
            continue
        if len(fields) == 1:
            pairs.append((None, fields[0]))
        elif len(fields) == 2:
            pairs.append((fields[0], fields[1]))
        else:
            raise InvalidInputError(f"{path}: line {lineno}: expected 'sequence' or 'name,sequence', got {len(fields)} fields")
    if not pairs:
        raise InvalidInputError(f"{path}: no sequences found")
    width = len(str(len(pairs)))
    return [(name or f"sequence-{i + 1:0{width}d}", seq) for i, (name, seq) in enumerate(pairs)]


def load_prompt(
    prompt: Path | None,
    msa: Path | None,
    *,
    num_residues: int | None,
    num_sequences: int | None,
    replicates: int,
    seed: int | None,
    max_similarity: float,
    min_similarity: float,
    homology_level: float,
    method: str | None,
    include_seed: bool,
) -> Replicates:
    """The prompt replicates from ``--prompt`` (a prompt file) or ``--msa`` (sampled).

    Raises:
        MissingParameterError: neither or both of ``--prompt`` and ``--msa``.
    """
    if (prompt is None) == (msa is None):
        raise MissingParameterError("give exactly one of --prompt (a prompt file) or --msa (an MSA to sample from)")
    if prompt is not None:
        from plmserve.bio.prompt import read_prompt

        return [list(r) for r in read_prompt(prompt)]
    from plmserve.align import DEFAULT_METHOD, sample_prompt
    from plmserve.bio.msa import read_msa

    assert msa is not None
    sampled = sample_prompt(
        read_msa(msa),
        method=method or DEFAULT_METHOD,
        num_sequences=num_sequences,
        num_residues=num_residues,
        homology_level=homology_level,
        max_similarity=max_similarity,
        min_similarity=min_similarity,
        always_include_seed_sequence=include_seed,
        num_ensemble_prompts=replicates,
        random_seed=seed,
    )
    console.print(
        f"prompt: {len(sampled.replicates)} replicate(s) sampled from {msa} (seed {sampled.random_seed}), "
        f"{', '.join(str(sampled.num_tokens(i)) for i in range(len(sampled.replicates)))} tokens",
        highlight=False,
        soft_wrap=True,
    )
    return sampled.replicates


def load_model(model: str, checkpoint: Path | None, load_format: str | None, model_dir: Path | None,
               device: str | None, dtype: str | None) -> Any:
    """The PoET engine: from ``checkpoint`` directly, or through the registry as the server does.

    Raises:
        ModelNotFoundError, WeightsNotFoundError, ModelLoadError, InvalidParameterError.
    """
    from plmserve.settings import get_settings

    if load_format is not None and load_format not in ("auto", "dummy"):
        raise InvalidParameterError(f"--load-format must be 'auto' or 'dummy', not '{load_format}'")
    settings = get_settings(load_format=load_format, model_dir=model_dir, device=device, dtype=dtype)
    with console.status(f"loading {checkpoint or model} ..."):
        if checkpoint is not None:
            from plmserve.models.poet import PoET

            engine = PoET.from_checkpoint(checkpoint, device=settings.device, dtype=settings.dtype)
        else:
            from plmserve.models.registry import ModelManager

            engine = ModelManager(settings).get(model, family="poet")
    if getattr(engine, "is_dummy", False):
        console.print("[bold yellow]WARNING:[/] dummy PoET: RANDOM weights, outputs are meaningless",
                      highlight=False)
    return engine


def _run_with_bar(label: str, fn: Callable[[Callable[[int, int], None]], Any]) -> Any:
    with progress() as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return fn(report)


def parse_positions(text: str | None) -> list[int] | None:
    """``--positions`` ("5", "1,4,9", "10-20", "1-3,8"): 1-based positions in the given order,
    ranges inclusive, duplicates dropped; None when not given.

    Raises:
        InvalidParameterError: an item that is not a positive integer or a range ``a-b`` with a <= b.
    """
    if text is None:
        return None
    out: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        lo, sep, hi = item.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(item), int(item))
        except ValueError:
            a = b = 0
        if a < 1 or b < a:
            raise InvalidParameterError(
                f"--positions: {item!r} is not a 1-based position or range (e.g. --positions 1,5,10-20)"
            )
        out.extend(p for p in range(a, b + 1) if p not in out)
    return out


def _read_wild_type(sequence: str | None, fasta: Path | None, msa: Path | None = None) -> str:
    if sequence is None and fasta is None and msa is not None:
        from plmserve.bio.msa import read_msa

        query = read_msa(msa)
        console.print(f"wild type: the query of {msa} ({query.names[0]}, {len(query.query)} residues)",
                      highlight=False, soft_wrap=True)
        return query.query
    if (sequence is None) == (fasta is None):
        raise MissingParameterError(
            "give exactly one of --sequence or --sequence-file (with --msa and neither, the MSA's query is used)"
        )
    if fasta is not None:
        from plmserve.bio.fasta import read_fasta

        records = read_fasta(fasta)
        if len(records) != 1:
            console.print(f"note: {fasta} has {len(records)} records; scanning the first", highlight=False)
        return records[0].sequence
    assert sequence is not None
    return sequence


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
poet_app = typer.Typer(help="PoET: score variants, single-site scans and generation given a prompt.",
                       no_args_is_help=True)

_PROMPT = typer.Option(None, "--prompt", help="prompt file: FASTA/CSV blocks separated by <END_PROMPT> lines")
_MSA = typer.Option(None, "--msa", help="MSA (a3m, aligned FASTA, Stockholm, CSV) to sample the prompt from")
# options shared by the score / single-site / generate / ensemble-score commands
_MODEL_DIR = typer.Option(None, "--model-dir", help="weights directory [env PLMSERVE_MODEL_DIR]")
_MODEL = typer.Option("poet", "-m", "--model", help=_MODEL_HELP)
_LOAD_FORMAT = typer.Option(None, "--load-format", help="auto | dummy (random weights)")
_DTYPE = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16")
_DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda[:N]")
_CHECKPOINT = typer.Option(None, "--checkpoint", help=_CKPT_HELP)
_PROMPT_SEED = typer.Option(None, "--seed", help="prompt sampling seed")
_REPLICATES = typer.Option(1, "--replicates", help="number of prompts sampled (ensemble)")
_NUM_SEQUENCES = typer.Option(None, "--num-sequences", help="prompt size in sequences")
_NUM_RESIDUES = typer.Option(None, "--num-residues", help="prompt token budget (default 12288)")
_MIN_SIMILARITY = typer.Option(0.0, "--min-similarity")
_METHOD = typer.Option(None, "--method", help="MSA sampling method")
_MAX_SIMILARITY = typer.Option(1.0, "--max-similarity")
_INCLUDE_SEED = typer.Option(False, "--include-seed/--no-include-seed", help="always put the MSA query in the prompt")
_HOMOLOGY_LEVEL = typer.Option(0.8, "--homology-level")
_VARIANTS = typer.Option(..., "--variants", help="sequences to score: FASTA, 'name,sequence' CSV or a DMS CSV "
                                               "(mutant,mutated_sequence,...)")


@poet_app.command("score")
@cli_errors
def score_cmd(
    variants: Path = _VARIANTS,
    output: Path = typer.Option(..., "-o", "--output", help="output CSV: name,sequence,score_1..score_N"),
    prompt: Optional[Path] = _PROMPT,
    msa: Optional[Path] = _MSA,
    num_residues: Optional[int] = _NUM_RESIDUES,
    num_sequences: Optional[int] = _NUM_SEQUENCES,
    replicates: int = _REPLICATES,
    seed: Optional[int] = _PROMPT_SEED,
    max_similarity: float = _MAX_SIMILARITY,
    min_similarity: float = _MIN_SIMILARITY,
    homology_level: float = _HOMOLOGY_LEVEL,
    method: Optional[str] = _METHOD,
    include_seed: bool = _INCLUDE_SEED,
    no_reverse: bool = typer.Option(False, "--no-reverse/--reverse", help="forward score only (default: mean of forward and backward)"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    load_format: Optional[str] = _LOAD_FORMAT,
    model_dir: Optional[Path] = _MODEL_DIR,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    server: Optional[str] = _SERVER,
    username: Optional[str] = _SERVER_USER,
    password: Optional[str] = _SERVER_PASSWORD,
    api_key: Optional[str] = _SERVER_KEY,
) -> None:
    """Log-likelihood of each variant given the prompt (one score column per replicate)."""
    seqs = read_sequences(variants)
    reps = load_prompt(prompt, msa, num_residues=num_residues, num_sequences=num_sequences, replicates=replicates,
                       seed=seed, max_similarity=max_similarity, min_similarity=min_similarity,
                       homology_level=homology_level, method=method, include_seed=include_seed)
    engine = _engine_or_server(server, username, password, api_key, model, checkpoint, load_format, model_dir, device, dtype)
    header, rows = _run_with_bar(
        "score", lambda report: score_local(engine, reps, seqs, reverse=not no_reverse, on_progress=report)
    )
    write_csv(output, header, rows)
    console.print(f"{len(rows)} sequences x {len(reps)} prompt(s) -> {output}", highlight=False, soft_wrap=True)


@poet_app.command("single-site")
@cli_errors
def single_site_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="output CSV: mut_code,score_1..score_N"),
    sequence: Optional[str] = typer.Option(
        None, "--sequence", "-s", help="the wild-type sequence [default with --msa: the MSA's query]"),
    sequence_file: Optional[Path] = typer.Option(None, "--sequence-file", help="FASTA with the wild type"),
    positions: Optional[str] = typer.Option(
        None, "--positions", help="scan only these 1-based positions, e.g. 1,5,10-20 [default: all]"),
    prompt: Optional[Path] = _PROMPT,
    msa: Optional[Path] = _MSA,
    num_residues: Optional[int] = _NUM_RESIDUES,
    num_sequences: Optional[int] = _NUM_SEQUENCES,
    replicates: int = _REPLICATES,
    seed: Optional[int] = _PROMPT_SEED,
    max_similarity: float = _MAX_SIMILARITY,
    min_similarity: float = _MIN_SIMILARITY,
    homology_level: float = _HOMOLOGY_LEVEL,
    method: Optional[str] = _METHOD,
    include_seed: bool = _INCLUDE_SEED,
    no_reverse: bool = typer.Option(False, "--no-reverse/--reverse", help="forward score only"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    load_format: Optional[str] = _LOAD_FORMAT,
    model_dir: Optional[Path] = _MODEL_DIR,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    server: Optional[str] = _SERVER,
    username: Optional[str] = _SERVER_USER,
    password: Optional[str] = _SERVER_PASSWORD,
    api_key: Optional[str] = _SERVER_KEY,
) -> None:
    """Score the wild type and all 19·L single substitutions (absolute log-likelihoods), or the
    19 substitutions of each of --positions."""
    scan = parse_positions(positions)
    wt = _read_wild_type(sequence, sequence_file, msa)
    reps = load_prompt(prompt, msa, num_residues=num_residues, num_sequences=num_sequences, replicates=replicates,
                       seed=seed, max_similarity=max_similarity, min_similarity=min_similarity,
                       homology_level=homology_level, method=method, include_seed=include_seed)
    engine = _engine_or_server(server, username, password, api_key, model, checkpoint, load_format, model_dir, device, dtype)
    header, rows = _run_with_bar(
        "single-site", lambda report: single_site_local(engine, reps, wt, reverse=not no_reverse, positions=scan,
                                                        on_progress=report)
    )
    write_csv(output, header, rows)
    console.print(f"WT + {len(rows) - 1} substitutions x {len(reps)} prompt(s) -> {output}", highlight=False,
                  soft_wrap=True)


@poet_app.command("generate")
@cli_errors
def generate_cmd(
    output: Path = typer.Option(..., "-o", "--output", help="output CSV (name,sequence,score_1..) or .fasta"),
    n: int = typer.Option(10, "-n", "--num-samples", help="number of sequences"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sample from the k most likely tokens"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="nucleus sampling mass (0, 1]"),
    max_length: int = typer.Option(1000, "--max-length", help="maximum residues per sequence"),
    sample_seed: Optional[int] = typer.Option(None, "--sample-seed", help="seed of the sampler (deterministic)"),
    prompt: Optional[Path] = _PROMPT,
    msa: Optional[Path] = _MSA,
    num_residues: Optional[int] = _NUM_RESIDUES,
    num_sequences: Optional[int] = _NUM_SEQUENCES,
    replicates: int = _REPLICATES,
    seed: Optional[int] = _PROMPT_SEED,
    max_similarity: float = _MAX_SIMILARITY,
    min_similarity: float = _MIN_SIMILARITY,
    homology_level: float = _HOMOLOGY_LEVEL,
    method: Optional[str] = _METHOD,
    include_seed: bool = _INCLUDE_SEED,
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    load_format: Optional[str] = _LOAD_FORMAT,
    model_dir: Optional[Path] = _MODEL_DIR,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    server: Optional[str] = _SERVER,
    username: Optional[str] = _SERVER_USER,
    password: Optional[str] = _SERVER_PASSWORD,
    api_key: Optional[str] = _SERVER_KEY,
) -> None:
    """Sample new sequences given the prompt, with their log-likelihood under each replicate."""
    reps = load_prompt(prompt, msa, num_residues=num_residues, num_sequences=num_sequences, replicates=replicates,
                       seed=seed, max_similarity=max_similarity, min_similarity=min_similarity,
                       homology_level=homology_level, method=method, include_seed=include_seed)
    engine = _engine_or_server(server, username, password, api_key, model, checkpoint, load_format, model_dir, device, dtype)
    header, rows = _run_with_bar(
        "generate",
        lambda report: generate_local(engine, reps, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                      max_length=max_length, seed=sample_seed, on_progress=report),
    )
    if output.suffix.lower() in (".fasta", ".fa"):
        from plmserve.bio.fasta import write_fasta

        write_fasta(output, [(f"{r[0]} " + " ".join(f"{x:.4f}" for x in r[2:]), r[1]) for r in rows])
    else:
        write_csv(output, header, rows)
    console.print(f"{len(rows)} sequences -> {output}", highlight=False, soft_wrap=True)


def parse_grid(text: str) -> list[tuple[int, float]]:
    """``"6144:1.0,6144:0.95"`` -> ``[(6144, 1.0), (6144, 0.95)]``.

    Raises:
        InvalidParameterError: a malformed item (names it).
    """
    grid = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        tokens, _, sim = item.partition(":")
        try:
            grid.append((int(tokens), float(sim)))
        except ValueError:
            raise InvalidParameterError(f"--grid item '{item}' is not MAX_TOKENS:MAX_SIMILARITY (e.g. 6144:0.95)") from None
    if not grid:
        raise InvalidParameterError("--grid is empty")
    return grid


@poet_app.command("ensemble-score")
@cli_errors
def ensemble_score_cmd(
    msa: Path = typer.Option(..., "--msa", help="MSA (a3m ...); row 0 is the query"),
    variants: Path = _VARIANTS,
    output: Path = typer.Option(..., "-o", "--output", help="output CSV: name,sequence,score"),
    grid: Optional[str] = typer.Option(None, "--grid", help="MAX_TOKENS:MAX_SIMILARITY,... (default: the "
                                       "official 15-point grid 6144/12288/24576 x 1.0/0.95/0.9/0.7/0.5)"),
    seed: int = typer.Option(188257, "--seed", help="prompt sampling seed (official: 188257)"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    load_format: Optional[str] = _LOAD_FORMAT,
    model_dir: Optional[Path] = _MODEL_DIR,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
) -> None:
    """The official scripts/score.py ensemble: prompts over a grid of size x max similarity,
    each scored forward and backward, averaged (a GPU job with the real weights)."""
    from plmserve.bio.msa import read_msa
    from plmserve.models.poet.ensemble import SCORE_PY_GRID, score_py_ensemble

    seqs = read_sequences(variants)
    points = parse_grid(grid) if grid else list(SCORE_PY_GRID)
    alignment = read_msa(msa)
    engine = load_model(model, checkpoint, load_format, model_dir, device, dtype)
    result = _run_with_bar(
        "ensemble",
        lambda report: score_py_ensemble(engine, alignment, [s for _, s in seqs], grid=points, seed=seed,
                                         progress=report),
    )
    write_csv(output, ["name", "sequence", "score"],
              [[n, s, float(x)] for (n, s), x in zip(seqs, result.scores)])
    console.print(f"{len(seqs)} sequences x {len(points)} prompts x 2 directions -> {output}", highlight=False,
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``poet`` sub-command group to the root CLI."""
    app.add_typer(poet_app, name="poet")
