"""Multiple sequence alignments: reading a3m, aligned FASTA, Stockholm and headerless CSV.

The model of an MSA used everywhere in plmserve (PoET prompts, the align service, the job layer):

* the **first row is the query** (the seed); every other row is a homolog;
* ``MSA.aligned[i]`` is row *i* in *match columns* only: a3m insertions (lower-case letters and
  ``.``) removed, upper-case, ``-`` for gaps; all rows have the query's number of columns;
* ``MSA.sequences[i]`` is row *i*'s full sequence: every residue, insertions kept and upper-cased,
  gaps removed. This is what PoET prompts are built from (``poet-model.md`` §5 step 4.2).

Formats are detected from the content (uploads arrive without useful file names):

========== ===================================================================================
a3m        ``>`` records; upper-case/``-`` are match columns, lower-case/``.`` are insertions
fasta      aligned FASTA: ``>`` records, all rows the same length (a3m without insertions)
stockholm  ``# STOCKHOLM 1.0`` (read with pyhmmer's easel reader); lower-case/``.`` columns are
           insert columns as in hmmalign output
csv        headerless, one ``sequence`` or two ``name,sequence`` columns per line
========== ===================================================================================

Duplicate names are made unique deterministically: the second ``foo`` becomes ``foo_2``, the
third ``foo_3`` and so on (skipping names already taken), in file order.

Residue alphabet (PoET's tokenizer, ``poet-api.md`` §6.4): ``ACDEFGHIKLMNPQRSTVWY`` plus ``X``,
``B``, ``Z``, ``U``, ``O``; ``-`` is a gap. Anything else is an error naming row, column and
character.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from plmserve.bio.fasta import csv_rows
from plmserve.errors import InvalidInputError

MSAFormat = Literal["a3m", "fasta", "stockholm", "csv"]

#: Upper-case residue letters accepted in an MSA (the PoET tokenizer's input alphabet).
RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"
GAP = "-"

#: PoET's ``Uniprot21`` order: ``ARNDCQEGHILKMFPSTWYV`` are 0..19, ``-`` is 20, X/B/Z are 23;
#: U is encoded as C (4) and O as K (11) (``poet-model.md`` §1).
UNIPROT21 = "ARNDCQEGHILKMFPSTWYV"
GAP_INDEX = 20
MASK_INDEX = 23

_ENCODE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(UNIPROT21):
    _ENCODE[ord(_c)] = _i
_ENCODE[ord("-")] = GAP_INDEX
for _c in "XBZ":
    _ENCODE[ord(_c)] = MASK_INDEX
_ENCODE[ord("U")] = UNIPROT21.index("C")
_ENCODE[ord("O")] = UNIPROT21.index("K")

_MATCH_CHARS = frozenset(RESIDUES + GAP)
_INSERT_CHARS = frozenset(RESIDUES.lower() + ".")


def encode_aligned(rows: list[str]) -> np.ndarray:
    """Encode equal-length aligned rows (upper-case residues and ``-``) as PoET token indices.

    Returns:
        ``np.ndarray`` of dtype uint8 and shape ``(N, L)``: ``ARNDCQEGHILKMFPSTWYV`` = 0..19,
        ``-`` = 20, ``X``/``B``/``Z`` = 23, ``U`` -> 4 (C), ``O`` -> 11 (K).

    Raises:
        InvalidInputError: rows of unequal length or a character outside the alphabet.
    """
    if not rows:
        return np.zeros((0, 0), dtype=np.uint8)
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInputError(f"row {i + 1} has {len(row)} columns, the query has {width}", item=i)
    raw = np.frombuffer("".join(rows).encode("latin-1", errors="replace"), dtype=np.uint8)
    codes = _ENCODE[raw].reshape(len(rows), width)
    bad = np.argwhere(codes == 255)
    if bad.size:
        r, c = (int(x) for x in bad[0])
        raise InvalidInputError(
            f"row {r + 1}, column {c + 1}: invalid character {rows[r][c]!r}", item=r, position=c + 1, character=rows[r][c]
        )
    return codes


@dataclass
class MSA:
    """An MSA whose first row is the query.

    Attributes:
        names: one name per row (unique; see the module docstring for duplicates).
        aligned: rows in match columns only (insertions removed), upper-case, ``-`` gaps; all the
            same length ``L`` = the query's length.
        sequences: each row's full ungapped sequence with insertions kept, upper-cased, as PoET
            prompts use them.
        rows: each row as a3m text (match columns upper-case/``-``, insertions lower-case).
        format: the format the MSA was read from (``a3m``, ``fasta``, ``stockholm``, ``csv``,
            or ``search`` for :func:`plmserve.align.create_msa` output).
    """

    names: list[str]
    aligned: list[str]
    sequences: list[str]
    rows: list[str] = field(default_factory=list)
    format: str = "a3m"
    #: memo of derived arrays (e.g. sampling weights), keyed by the caller; see :meth:`memo`
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = list(self.aligned)
        if not (len(self.names) == len(self.aligned) == len(self.sequences) == len(self.rows)):
            raise ValueError("MSA fields must have one entry per row")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def query(self) -> str:
        """The first row's full ungapped sequence (the seed)."""
        return self.sequences[0]

    @property
    def num_columns(self) -> int:
        """Number of match columns ``L`` (the query's aligned length)."""
        return len(self.aligned[0]) if self.aligned else 0

    def memo(self, key, compute):
        """``compute()`` cached on this MSA under ``key``; recomputed when the aligned rows change."""
        fingerprint = hash(tuple(self.aligned))
        hit = self._memo.get(key)
        if hit is not None and hit[0] == fingerprint:
            return hit[1]
        value = compute()
        self._memo[key] = (fingerprint, value)
        return value

    def aligned_matrix(self) -> np.ndarray:
        """The aligned rows encoded as uint8 ``(N, L)`` (see :func:`encode_aligned`)."""
        return encode_aligned(self.aligned)

    def to_a3m(self) -> str:
        """A3M text: ``>name`` then the row (insertions lower-case) on one line per record."""
        return "".join(f">{n}\n{r}\n" for n, r in zip(self.names, self.rows))

    def to_csv(self, aligned: bool = True) -> str:
        """Headerless ``name,sequence`` CSV: aligned rows (default) or full ungapped sequences."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for n, s in zip(self.names, self.aligned if aligned else self.sequences):
            writer.writerow([n, s])
        return out.getvalue()

    def expanded_rows(self) -> list[str]:
        """Every row over *all* columns: match columns upper-case/``-``, insert columns lower-case
        with ``.`` where a row has no residue in another row's insertion (Stockholm/hmmalign style).

        Each gap between two match columns (and before the first / after the last) is as wide as
        the longest insertion any row has there; a row's insertion is left-aligned in it. All rows
        have the same length ``L + total insert width``."""
        split = [re.split(r"([A-Z-])", row) for row in self.rows]  # inserts at even, matches at odd
        width = [max(len(parts[k]) for parts in split) for k in range(0, 2 * self.num_columns + 1, 2)]
        out = []
        for parts in split:
            chunks = []
            for k, chunk in enumerate(parts):
                chunks.append(chunk.ljust(width[k // 2], ".") if k % 2 == 0 else chunk)
            out.append("".join(chunks))
        return out

    def to_stockholm(self, name: str = "msa") -> str:
        """Stockholm 1.0 text (written by pyhmmer's easel writer) of :meth:`expanded_rows`; the
        query is the first sequence. ``name`` becomes the ``#=GF ID`` line."""
        from pyhmmer import easel

        seqs = [easel.TextSequence(name=n.encode(), sequence=r) for n, r in zip(self.names, self.expanded_rows())]
        buffer = io.BytesIO()
        easel.TextMSA(name=name.encode(), sequences=seqs).write(buffer, "stockholm")
        return buffer.getvalue().decode()

    def subset(self, indices: list[int]) -> "MSA":
        """A new MSA with the given rows (in that order)."""
        return MSA(
            names=[self.names[i] for i in indices],
            aligned=[self.aligned[i] for i in indices],
            sequences=[self.sequences[i] for i in indices],
            rows=[self.rows[i] for i in indices],
            format=self.format,
        )


def sniff_format(text: str) -> MSAFormat:
    """Guess the MSA format from the content: ``stockholm``, ``a3m``/``fasta`` or ``csv``.

    ``a3m`` is returned for any ``>`` file whose sequences contain lower-case letters; otherwise
    ``fasta``. Text whose first non-blank line starts with neither ``>`` nor ``# STOCKHOLM`` is CSV.
    """
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("# STOCKHOLM"):
        return "stockholm"
    if stripped.startswith(">"):
        body = "".join(line for line in stripped.splitlines() if not line.startswith(">"))
        if any(c.islower() for c in body):
            return "a3m"
        return "fasta"
    return "csv"


def parse_msa(data: str | bytes, format: MSAFormat | None = None, *, source: str = "<input>") -> MSA:
    """Parse an MSA from text or bytes; ``format`` is sniffed when None.

    Rows are numbered from 1 (the query is row 1) and columns from 1 in error messages.

    Raises:
        InvalidInputError: empty input; text that is not UTF-8; a row whose number of match
            columns differs from the query's ("row 17 `UPI00...` has 290 columns, the query has
            286"); a character outside the alphabet (row, column, character); a row with no
            residues at all; a CSV row with a number of fields other than 1 or 2.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{source}: not a text file (byte {exc.start} is not UTF-8)") from None
    else:
        text = data
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise InvalidInputError(f"{source}: the MSA file is empty")
    fmt = format or sniff_format(text)
    if fmt in ("a3m", "fasta"):
        records = _read_fasta_records(text, source)
    elif fmt == "stockholm":
        records = _read_stockholm(text, source)
    elif fmt == "csv":
        records = _read_csv(text, source)
    else:
        raise InvalidInputError(f"unknown MSA format {fmt!r} (expected a3m, fasta, stockholm or csv)")
    return _build(records, fmt, source)


def read_msa(path: str | Path, format: MSAFormat | None = None) -> MSA:
    """Read an MSA file (format sniffed from the content). See :func:`parse_msa`.

    An ``.a3m`` file without lower-case insertions is reported as ``format="a3m"`` (its content
    alone cannot tell a3m from aligned FASTA).

    Raises:
        FileNotFoundError: no such file.
        InvalidInputError: see :func:`parse_msa`.
    """
    path = Path(path)
    msa = parse_msa(path.read_bytes(), format, source=str(path))
    if format is None and msa.format == "fasta" and path.suffix.lower() == ".a3m":
        msa.format = "a3m"  # an a3m without insertions reads the same as aligned FASTA; the name says which
    return msa


# --------------------------------------------------------------------------------------------
def _read_fasta_records(text: str, source: str) -> list[tuple[str, str, int]]:
    records: list[tuple[str, str, int]] = []
    name: str | None = None
    chunks: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(chunks), start))
            header = line[1:].strip()
            name = header.split()[0] if header else ""
            chunks = []
            start = lineno
        elif line.startswith("#") and name is None:
            continue  # a3m files may start with a '#' comment line (hhblits)
        else:
            if name is None:
                raise InvalidInputError(f"{source}: line {lineno}: sequence data before the first '>' header")
            chunks.append("".join(line.split()))
    if name is not None:
        records.append((name, "".join(chunks), start))
    if not records:
        raise InvalidInputError(f"{source}: no sequences found (empty file?)")
    return records


def _read_stockholm(text: str, source: str) -> list[tuple[str, str, int]]:
    from pyhmmer.easel import MSAFile

    try:
        with MSAFile(io.BytesIO(text.encode()), format="stockholm") as handle:
            msa = handle.read()
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{source}: invalid Stockholm file: {exc}") from None
    if msa is None or len(msa.names) == 0:
        raise InvalidInputError(f"{source}: no sequences found in the Stockholm file")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in msa.names]
    rows = [str(r) for r in msa.alignment]
    return [(n, r, 0) for n, r in zip(names, rows)]


def _read_csv(text: str, source: str) -> list[tuple[str, str, int]]:
    records: list[tuple[str, str, int]] = []
    ncols: int | None = None
    for lineno, fields in enumerate(csv_rows(text, source), start=1):
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if not records and [f.lower() for f in fields] in (["name", "sequence"], ["sequence"]):
            continue  # tolerate a header line although the format is headerless
        if len(fields) not in (1, 2):
            raise InvalidInputError(
                f"{source}: line {lineno}: {len(fields)} comma-separated fields; expected 1 (sequence) or 2 (name,sequence)",
                item=len(records),
            )
        if ncols is None:
            ncols = len(fields)
        elif len(fields) != ncols:
            raise InvalidInputError(
                f"{source}: line {lineno}: {len(fields)} fields, but the first row has {ncols}", item=len(records)
            )
        if len(fields) == 1:
            name, seq = f"sequence-{len(records) + 1}", fields[0]
        else:
            name, seq = fields
        records.append((name, seq, lineno))
    if not records:
        raise InvalidInputError(f"{source}: no sequences found (empty file?)")
    return records


def _unique_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    counts: dict[str, int] = {}
    for i, name in enumerate(names):
        base = name or f"sequence-{i + 1}"
        candidate = base
        if candidate in seen:
            k = counts.get(base, 1)
            while candidate in seen:
                k += 1
                candidate = f"{base}_{k}"
            counts[base] = k
        seen.add(candidate)
        out.append(candidate)
    return out


def _build(records: list[tuple[str, str, int]], fmt: str, source: str) -> MSA:
    # '.' means an insert-column gap in a3m/Stockholm; in an MSA without any insertion letters
    # it can only be a plain gap.
    has_insertions = any(any(c.islower() for c in seq) for _, seq, _ in records)
    names = _unique_names([r[0] for r in records])
    aligned: list[str] = []
    sequences: list[str] = []
    rows: list[str] = []
    width: int | None = None
    for i, ((_, raw, _line), name) in enumerate(zip(records, names)):
        if not has_insertions:
            raw = raw.replace(".", "-")
        match_chars: list[str] = []
        full: list[str] = []
        for col, ch in enumerate(raw, start=1):
            if ch in _MATCH_CHARS:
                match_chars.append(ch)
                if ch != GAP:
                    full.append(ch)
            elif ch in _INSERT_CHARS:
                if ch != ".":
                    full.append(ch.upper())
            else:
                raise InvalidInputError(
                    f"{source}: row {i + 1} `{name}`, column {col}: invalid character {ch!r}"
                    f" (allowed: {RESIDUES}, '-' gaps, lower-case insertions)",
                    item=i,
                    position=col,
                    character=ch,
                )
        row = "".join(match_chars)
        if width is None:
            width = len(row)
            if width == 0:
                raise InvalidInputError(f"{source}: row 1 (the query) `{name}` is empty")
        elif len(row) != width:
            raise InvalidInputError(
                f"{source}: row {i + 1} `{name}` has {len(row)} columns, the query has {width}"
                " (rows must be aligned to the query)",
                item=i,
            )
        if not full:
            raise InvalidInputError(f"{source}: row {i + 1} `{name}` has no residues (only gaps)", item=i)
        aligned.append(row)
        sequences.append("".join(full))
        rows.append(raw.replace(".", ""))
    return MSA(names=names, aligned=aligned, sequences=sequences, rows=rows, format=fmt)
