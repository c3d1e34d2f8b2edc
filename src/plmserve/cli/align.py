"""Align commands: ``plmserve msa search|info`` and ``plmserve prompt sample|info``.

    plmserve msa search --db proteins.fasta seed.fasta -o msa.a3m
    plmserve msa info msa.a3m --homology-level 0.8
    plmserve prompt sample msa.a3m --num-residues 12288 --replicates 5 --seed 7 -o prompt.fasta
    plmserve prompt info prompt.fasta
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidParameterError

msa_app = typer.Typer(help="Homology search and MSA files (a3m, aligned FASTA, Stockholm, CSV).", no_args_is_help=True)
prompt_app = typer.Typer(help="Sample PoET prompts from an MSA and inspect prompt files.", no_args_is_help=True)


def _read_seed(seed: str) -> tuple[str, str]:
    """``(text, name)`` of the seed: a FASTA/plain-text file, or ``seed`` itself when it is a sequence.

    ``name`` is the first FASTA record's name (the header's first word), ``seed`` when the seed has
    no header. A seed too long to be a file name (a 286-residue sequence: ENAMETOOLONG) is the
    sequence, not an error."""
    text = None
    stripped = seed.strip()
    looks_like_sequence = bool(stripped) and all(c.isalpha() for c in stripped)
    try:
        is_file = Path(seed).is_file()
    except OSError:  # e.g. ENAMETOOLONG: not a path
        is_file = False
    if is_file:
        text = Path(seed).read_text()
    if text is None:
        if not looks_like_sequence:
            raise FileNotFoundError(2, "No such file or directory (and not a protein sequence)", seed)
        text = stripped
    name = "seed"
    first = text.lstrip()
    if first.startswith(">"):
        header = first[1:].split("\n", 1)[0].strip()
        name = header.split()[0] if header else name
    return text, name


#: output file suffix -> MSA format written by ``msa search -o``
OUTPUT_FORMATS = {".a3m": "a3m", ".sto": "stockholm", ".stk": "stockholm", ".stockholm": "stockholm",
                  ".csv": "csv"}


def _output_format(output: Path) -> str:
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise InvalidParameterError(
            f"cannot tell the MSA format from the output name {output.name!r}: use a .a3m, .sto "
            "(Stockholm) or .csv file name"
        )
    return fmt


@msa_app.command("search")
@cli_errors
def msa_search(
    seed: str = typer.Argument(..., help="seed: a FASTA/plain-text file (first sequence used) or the sequence itself"),
    db: Optional[Path] = typer.Option(None, "--db", help="FASTA sequence database [env PLMSERVE_MSA_DATABASE]"),
    output: Path = typer.Option(..., "-o", "--output",
                                help="output MSA: .a3m, .sto (Stockholm) or .csv (name,aligned rows)"),
    backend: str = typer.Option("pyhmmer", "--backend", "-b", help="pyhmmer | mmseqs | colabfold"),
    iterations: int = typer.Option(1, "--iterations", "-n", help="search iterations (jackhmmer/mmseqs)"),
    evalue: float = typer.Option(1e-3, "--evalue", "-E", help="E-value threshold for hits"),
    max_hits: int = typer.Option(10_000, "--max-hits", help="keep at most this many hits"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="search cache [default: <data_dir>/msa-cache]"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0 = all)"),
) -> None:
    """Search a sequence database for homologs of SEED and write an MSA (query first).

    The query row keeps the seed's FASTA name (``seed`` for a bare sequence). A search that finds
    no hits still writes the seed-only MSA and exits 0, with a warning on stderr.
    """
    from plmserve.align import create_msa

    fmt = _output_format(output)
    text, name = _read_seed(seed)
    with progress() as bar:
        task = bar.add_task("search", total=100)

        def report(stage: str, fraction: float) -> None:
            bar.update(task, description=stage, completed=round(100 * fraction))

        msa = create_msa(
            text,
            database=db,
            backend=backend,  # type: ignore[arg-type]
            iterations=iterations,
            evalue=evalue,
            max_hits=max_hits,
            cache_dir=cache_dir,
            progress=report,
            query_name=name,
            threads=threads,
        )
    if fmt == "csv":
        output.write_text(msa.to_csv())
    elif fmt == "stockholm":
        output.write_text(msa.to_stockholm(name=name))
    else:
        output.write_text(msa.to_a3m())
    if len(msa) == 1:
        console.print(
            f"[yellow]warning:[/] no hits (E-value <= {evalue:g}) in the database: {output} holds only the seed;"
            " try a larger database, more --iterations or a larger --evalue",
            highlight=False, soft_wrap=True,
        )
    console.print(f"{len(msa) - 1} hits, {msa.num_columns} columns -> {output} ({fmt})",
                  highlight=False, soft_wrap=True)


@msa_app.command("info")
@cli_errors
def msa_info(
    msa_file: Path = typer.Argument(..., help="MSA file (a3m, aligned FASTA, Stockholm or CSV; sniffed)"),
    homology_level: float = typer.Option(0.8, "--homology-level", help="identity defining neighbours for N_eff"),
    as_json: bool = typer.Option(False, "--json/--no-json", help="print one JSON object"),
) -> None:
    """Rows, columns, query length and N_eff of an MSA."""
    from plmserve.align.sampling import n_eff
    from plmserve.bio.msa import read_msa

    if not 0 <= homology_level <= 1:
        raise InvalidParameterError("The 'homology_level' must be between 0 and 1.")
    msa = read_msa(msa_file)
    info = {
        "file": str(msa_file),
        "format": msa.format,
        "rows": len(msa),
        "columns": msa.num_columns,
        "query": msa.names[0],
        "query_length": len(msa.query),
        "homology_level": homology_level,
        "n_eff": round(n_eff(msa, homology_level), 3),
    }
    if as_json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:15s} {value}")


@prompt_app.command("sample")
@cli_errors
def prompt_sample(
    msa_file: Path = typer.Argument(..., help="MSA file (first row = seed)"),
    output: Path = typer.Option(..., "-o", "--output", help="prompt file (.fasta, or .csv for CSV blocks)"),
    num_residues: Optional[int] = typer.Option(None, "--num-residues", help="token budget per prompt (1..24576) [12288]"),
    num_sequences: Optional[int] = typer.Option(None, "--num-sequences", help="sequences per prompt (1..99)"),
    replicates: int = typer.Option(1, "--replicates", "-r", help="prompts in the ensemble (1..15)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (1..2^32-1); replicate k uses seed+k"),
    method: str = typer.Option("NEIGHBORS_NONGAP_NORM_NO_LIMIT", "--method",
                               help="TOP | RANDOM | NEIGHBORS | NEIGHBORS_NO_LIMIT | NEIGHBORS_NONGAP_NORM_NO_LIMIT"),
    homology_level: float = typer.Option(0.8, "--homology-level"),
    max_similarity: float = typer.Option(1.0, "--max-similarity"),
    min_similarity: float = typer.Option(0.0, "--min-similarity"),
    include_seed: bool = typer.Option(False, "--include-seed/--no-include-seed", help="always put the seed sequence first"),
) -> None:
    """Sample a PoET prompt ensemble from an MSA; replicates are separated by <END_PROMPT> lines."""
    from plmserve.align import sample_prompt
    from plmserve.bio.msa import read_msa
    from plmserve.bio.prompt import format_prompt

    msa = read_msa(msa_file)
    result = sample_prompt(
        msa,
        method=method.upper(),
        num_sequences=num_sequences,
        num_residues=num_residues,
        homology_level=homology_level,
        max_similarity=max_similarity,
        min_similarity=min_similarity,
        always_include_seed_sequence=include_seed,
        num_ensemble_prompts=replicates,
        random_seed=seed,
    )
    fmt = "csv" if output.suffix.lower() == ".csv" else "fasta"
    output.write_text(format_prompt(result.replicates, fmt))
    sizes = ", ".join(f"{len(r)} seqs/{result.num_tokens(k)} tokens" for k, r in enumerate(result.replicates))
    console.print(f"seed {result.random_seed}: {sizes} -> {output}", highlight=False, soft_wrap=True)


@prompt_app.command("info")
@cli_errors
def prompt_info(prompt_file: Path = typer.Argument(..., help="prompt file (FASTA/CSV blocks, <END_PROMPT>)")) -> None:
    """Replicates, sequences and tokens of a prompt file."""
    from plmserve.bio.prompt import read_prompt

    for k, rep in enumerate(read_prompt(prompt_file), start=1):
        tokens = sum(len(s) + 2 for _, s in rep)
        print(f"replicate {k}: {len(rep)} sequences, {tokens} tokens")


def register(app: typer.Typer) -> None:
    """Add the ``msa`` and ``prompt`` command groups to the root app."""
    app.add_typer(msa_app, name="msa")
    app.add_typer(prompt_app, name="prompt")
