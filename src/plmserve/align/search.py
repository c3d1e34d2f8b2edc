"""Homology search: build an MSA (a3m, query first) from a seed sequence.

Backends (``create_msa(..., backend=...)``):

``pyhmmer`` (default, any machine)
    jackhmmer-style iterative search (pyhmmer ``Pipeline.iterate_seq``) of the seed against a
    local FASTA database. The included hits of the last iteration (E-value <= ``evalue``, best
    ``max_hits``) and the seed are aligned to the final profile HMM, then re-expressed relative to
    the seed: the seed's residues are the match columns (upper-case / ``-``), everything else is a
    lower-case insertion.
``mmseqs``
    MMseqs2 (``mmseqs`` on PATH, Debian package ``mmseqs2``): ``createdb``, ``search``
    (``--num-iterations``, ``-e``, ``--max-seqs``), ``result2msa --msa-format-mode 5`` (A3M).
    For large databases.
``colabfold``
    The public ColabFold MSA server protocol (as used by ColabFold and Boltz), for users with
    internet: see :mod:`plmserve.align.colabfold`. ``database`` is ignored; the server searches
    UniRef (and environmental databases with ``colabfold_mode="env"``).

Results are cached in ``cache_dir`` (default ``<settings.data_dir>/msa-cache``) under a key made
of the seed, the database (absolute path, size, modification time) and every parameter, so an
identical request returns the identical MSA without searching again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Literal

from plmserve.bio.msa import MSA, RESIDUES, parse_msa
from plmserve.errors import InvalidInputError, InvalidParameterError, MissingParameterError, NotFoundError

Backend = Literal["pyhmmer", "mmseqs", "colabfold"]
BACKENDS = ("pyhmmer", "mmseqs", "colabfold")
Progress = Callable[[str, float], None]
DEFAULT_ITERATIONS = 1
DEFAULT_EVALUE = 1e-3
DEFAULT_MAX_HITS = 10_000
_CACHE_VERSION = 1


def clean_seed(seed: str) -> str:
    """Validate a seed sequence: whitespace removed, upper-cased, residues only.

    Raises:
        InvalidInputError: empty seed, or a character outside ``ACDEFGHIKLMNPQRSTVWYXBZUO``
            (naming the 1-based position and the character).
    """
    text = seed.strip()
    if text.startswith(">"):  # a FASTA record: keep the first sequence only (seed mode)
        lines = text.splitlines()
        body = []
        for line in lines[1:]:
            if line.startswith(">"):
                break
            body.append(line)
        text = "".join(body)
    seq = "".join(text.split()).upper()
    if not seq:
        raise InvalidInputError("the seed sequence is empty")
    for pos, ch in enumerate(seq, start=1):
        if ch not in RESIDUES:
            raise InvalidInputError(
                f"seed sequence, position {pos}: invalid character {ch!r}", position=pos, character=ch
            )
    return seq


def _cache_key(seed: str, database: Path | None, backend: str, params: dict) -> str:
    db: dict = {}
    if database is not None:
        st = database.stat()
        db = {"path": str(database.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    blob = json.dumps(
        {"v": _CACHE_VERSION, "seed": seed, "db": db, "backend": backend, "params": params}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def create_msa(
    seed: str,
    *,
    database: Path | str | None = None,
    backend: Backend = "pyhmmer",
    iterations: int = DEFAULT_ITERATIONS,
    evalue: float = DEFAULT_EVALUE,
    max_hits: int = DEFAULT_MAX_HITS,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
    query_name: str = "seed",
    threads: int = 0,
    colabfold_url: str | None = None,
    colabfold_mode: str = "env",
) -> MSA:
    """Search ``database`` for homologs of ``seed`` and return an a3m-style MSA (query first).

    Args:
        seed: the query protein (plain sequence or a FASTA record; upper/lower case accepted).
        database: FASTA file of target proteins (``pyhmmer``, ``mmseqs``; defaults to
            ``settings.msa_database``).
        backend: ``pyhmmer`` | ``mmseqs`` | ``colabfold``.
        iterations: search iterations (jackhmmer / mmseqs ``--num-iterations``), >= 1.
        evalue: E-value threshold for reporting and inclusion, > 0.
        max_hits: keep at most this many hits (best E-value first), >= 1.
        cache_dir: where results are cached (default ``<settings.data_dir>/msa-cache``).
        progress: called as ``progress(stage, fraction)`` with fraction in [0, 1].
        query_name: the name of the query row.
        threads: CPU threads for ``mmseqs`` (0 = all); the pyhmmer iterative search runs on one.
        colabfold_url, colabfold_mode: see :func:`plmserve.align.colabfold.search`.

    Returns:
        :class:`~plmserve.bio.msa.MSA` with ``format="search"``; row 0 is the seed.

    Raises:
        InvalidInputError: a bad seed. InvalidParameterError: bad backend/iterations/evalue/
        max_hits, or ``mmseqs`` not installed. MissingParameterError: no database for a local
        backend. NotFoundError: the database file does not exist.
    """
    from plmserve.settings import get_settings

    seq = clean_seed(seed)
    if backend not in BACKENDS:
        raise InvalidParameterError(f"unknown search backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if iterations < 1:
        raise InvalidParameterError(f"'iterations' must be at least 1 (got {iterations})")
    if not evalue > 0:
        raise InvalidParameterError(f"'evalue' must be positive (got {evalue})")
    if max_hits < 1:
        raise InvalidParameterError(f"'max_hits' must be at least 1 (got {max_hits})")
    settings = get_settings()
    db_path: Path | None = None
    if backend != "colabfold":
        if database is None:
            database = settings.msa_database
        if database is None:
            raise MissingParameterError(
                "no sequence database to search: pass --db / database=, or set PLMSERVE_MSA_DATABASE"
            )
        db_path = Path(database)
        if not db_path.is_file():
            raise NotFoundError(f"sequence database not found: {db_path}")
    if backend == "colabfold" and colabfold_url is None:
        colabfold_url = settings.colabfold_url
    params = {"iterations": iterations, "evalue": evalue, "max_hits": max_hits}
    if backend == "colabfold":
        params = {"url": colabfold_url, "mode": colabfold_mode, "max_hits": max_hits}
    cache = Path(cache_dir) if cache_dir is not None else Path(settings.data_dir) / "msa-cache"
    key = _cache_key(seq, db_path, backend, params)
    cached = cache / f"{key}.a3m"
    if cached.is_file():
        if progress:
            progress("cached", 1.0)
        msa = parse_msa(cached.read_text(), "a3m", source=str(cached))
        if query_name not in msa.names[1:]:
            msa.names[0] = query_name  # the cache key ignores the name
        msa.format = "search"
        return msa

    if backend == "pyhmmer":
        a3m = _search_pyhmmer(seq, db_path, iterations, evalue, max_hits, progress, query_name, threads)  # type: ignore[arg-type]
    elif backend == "mmseqs":
        a3m = _search_mmseqs(seq, db_path, iterations, evalue, max_hits, progress, query_name, threads)  # type: ignore[arg-type]
    else:
        from plmserve.align import colabfold

        a3m = colabfold.search(seq, url=colabfold_url, mode=colabfold_mode, progress=progress)  # type: ignore[arg-type]
    msa = parse_msa(a3m, "a3m", source=f"{backend} search result")
    msa.names[0] = query_name if query_name not in msa.names[1:] else msa.names[0]
    if len(msa) > max_hits + 1:
        msa = msa.subset(list(range(max_hits + 1)))
    msa.format = "search"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(msa.to_a3m())
    tmp.replace(cached)
    if progress:
        progress("done", 1.0)
    return msa


# --------------------------------------------------------------------------------------------
# pyhmmer
def _search_pyhmmer(
    seq: str,
    database: Path,
    iterations: int,
    evalue: float,
    max_hits: int,
    progress: Progress | None,
    query_name: str,
    threads: int,
) -> str:
    from pyhmmer import easel, plan7

    alphabet = easel.Alphabet.amino()
    if progress:
        progress("reading database", 0.0)
    try:
        with easel.SequenceFile(str(database), digital=True, alphabet=alphabet) as handle:
            targets = handle.read_block()
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{database}: cannot read the sequence database as FASTA: {exc}") from None
    if len(targets) == 0:
        raise InvalidInputError(f"{database}: the sequence database contains no sequences")
    query = easel.TextSequence(name=query_name.encode(), sequence=seq).digitize(alphabet)
    pipeline = plan7.Pipeline(alphabet, E=evalue, incE=evalue, domE=evalue, incdomE=evalue)
    result = None
    search = pipeline.iterate_seq(query, targets)
    for it in range(iterations):
        if progress:
            progress(f"iteration {it + 1}/{iterations}", it / iterations)
        result = next(search)
        if result.converged:
            break
    assert result is not None
    hits = [h for h in result.hits if h.included and h.evalue <= evalue]
    hits.sort(key=lambda h: (h.evalue, -h.score))
    hits = hits[:max_hits]
    if progress:
        progress("aligning hits", 0.95)
    by_name = {s.name: s for s in targets}
    hit_seqs = [by_name[h.name] for h in hits]
    if not hit_seqs:
        return f">{query_name}\n{seq}\n"
    block = easel.DigitalSequenceBlock(alphabet, [query] + hit_seqs)
    aligner = plan7.TraceAligner()
    traces = aligner.compute_traces(result.hmm, block)
    msa = aligner.align_traces(result.hmm, block, traces, trim=True, all_consensus_cols=True)
    rows = [str(r) for r in msa.alignment]
    names = [query_name] + [_name(h.name) for h in hits]
    return _query_relative_a3m(names, rows, seq)


def _name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _query_relative_a3m(names: list[str], rows: list[str], query: str) -> str:
    """Re-express an alignment (match columns upper-case/``-``, insert columns lower-case/``.``)
    relative to row 0: columns where the query has a residue become match columns, all others
    insertions. Query residues trimmed from the alignment's flanks are added back as match
    columns that every other row has as gaps."""
    qrow = rows[0]
    query_cols = [c for c, ch in enumerate(qrow) if ch.isalpha()]
    aligned_query = "".join(qrow[c] for c in query_cols).upper()
    start = query.find(aligned_query)
    if start < 0:  # pragma: no cover - the aligner never reorders residues
        raise RuntimeError("internal error: the aligned query is not a substring of the query")
    head, tail = query[:start], query[start + len(aligned_query) :]
    is_match = [ch.isalpha() for ch in qrow]
    out = [f">{names[0]}\n{query}\n"]
    for name, row in zip(names[1:], rows[1:]):
        chars = []
        for ch, match in zip(row, is_match):
            if match:
                chars.append(ch.upper() if ch.isalpha() else "-")
            elif ch.isalpha():
                chars.append(ch.lower())
        out.append(f">{name}\n{'-' * len(head)}{''.join(chars)}{'-' * len(tail)}\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# mmseqs
def mmseqs_binary() -> str | None:
    """Path of the ``mmseqs`` executable, or None when it is not installed."""
    return shutil.which("mmseqs")


def _search_mmseqs(
    seq: str,
    database: Path,
    iterations: int,
    evalue: float,
    max_hits: int,
    progress: Progress | None,
    query_name: str,
    threads: int,
) -> str:
    exe = mmseqs_binary()
    if exe is None:
        raise InvalidParameterError(
            "the 'mmseqs' backend needs the MMseqs2 binary on PATH (Debian/Ubuntu: apt-get install mmseqs2)"
        )
    nthreads = threads or os.cpu_count() or 1
    steps = 4
    with tempfile.TemporaryDirectory(prefix="plmserve-mmseqs-") as tmp:
        work = Path(tmp)
        (work / "query.fasta").write_text(f">{query_name}\n{seq}\n")

        def run(step: int, label: str, *args: str) -> None:
            if progress:
                progress(label, step / steps)
            proc = subprocess.run([exe, *args, "-v", "1"], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise InvalidInputError(f"mmseqs {args[0]} failed: {' | '.join(tail)}")

        run(0, "mmseqs createdb", "createdb", str(work / "query.fasta"), str(work / "q"))
        run(1, "mmseqs createdb (database)", "createdb", str(database), str(work / "t"))
        run(
            2,
            "mmseqs search",
            "search", str(work / "q"), str(work / "t"), str(work / "res"), str(work / "tmp"),
            "--num-iterations", str(iterations), "-e", str(evalue),
            "--max-seqs", str(max(300, max_hits)), "--threads", str(nthreads),
        )
        run(
            3,
            "mmseqs result2msa",
            "result2msa", str(work / "q"), str(work / "t"), str(work / "res"), str(work / "msa"),
            "--msa-format-mode", "5", "--filter-msa", "0", "--threads", str(nthreads),
        )
        text = (work / "msa").read_bytes().replace(b"\x00", b"").decode()
    if not text.strip():
        return f">{query_name}\n{seq}\n"
    return text
