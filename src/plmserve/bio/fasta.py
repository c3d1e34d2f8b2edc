"""Plain FASTA reading and writing (unaligned sequences).

For MSAs (a3m, aligned FASTA, Stockholm, CSV) use :mod:`plmserve.bio.msa`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from plmserve.errors import InvalidInputError


@dataclass(frozen=True)
class Record:
    """One named sequence. ``name`` is the first word of the header, ``description`` the rest."""

    name: str
    sequence: str
    description: str = ""


def parse_fasta(text: str, *, source: str = "<input>") -> list[Record]:
    """Parse FASTA text into records (whitespace inside sequences removed, case kept).

    Raises:
        InvalidInputError: text before the first header, a header with no sequence, or no
            records at all. Messages name ``source`` and the line number.
    """
    records: list[Record] = []
    name: str | None = None
    desc = ""
    chunks: list[str] = []
    header_line = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if name is not None:
                records.append(_finish(name, desc, chunks, source, header_line))
            header = line[1:].strip()
            name, _, desc = header.partition(" ")
            name = name or f"sequence-{len(records) + 1}"
            chunks = []
            header_line = lineno
        else:
            if name is None:
                raise InvalidInputError(
                    f"{source}: line {lineno}: sequence data before the first '>' header (not FASTA?)"
                )
            chunks.append("".join(line.split()))
    if name is not None:
        records.append(_finish(name, desc, chunks, source, header_line))
    if not records:
        raise InvalidInputError(f"{source}: no FASTA records found (empty file?)")
    return records


def _finish(name: str, desc: str, chunks: list[str], source: str, line: int) -> Record:
    seq = "".join(chunks)
    if not seq:
        raise InvalidInputError(f"{source}: line {line}: record '{name}' has an empty sequence")
    return Record(name=name, sequence=seq, description=desc.strip())


def read_fasta(path: str | Path) -> list[Record]:
    """Read a FASTA file. Raises FileNotFoundError or :class:`InvalidInputError`."""
    path = Path(path)
    return parse_fasta(path.read_text(), source=str(path))


def format_fasta(records: Iterable[Record | tuple[str, str]], width: int = 0) -> str:
    """FASTA text for records or ``(name, sequence)`` pairs; ``width`` > 0 wraps lines."""
    out = io.StringIO()
    for rec in records:
        if isinstance(rec, Record):
            header = rec.name + (f" {rec.description}" if rec.description else "")
            seq = rec.sequence
        else:
            header, seq = rec
        out.write(f">{header}\n")
        if width > 0:
            for i in range(0, len(seq), width):
                out.write(seq[i : i + width] + "\n")
        else:
            out.write(seq + "\n")
    return out.getvalue()


def write_fasta(path_or_file: str | Path | TextIO, records: Iterable[Record | tuple[str, str]]) -> None:
    """Write records as FASTA to a path or an open text file."""
    text = format_fasta(records)
    if hasattr(path_or_file, "write"):
        path_or_file.write(text)  # type: ignore[union-attr]
    else:
        Path(path_or_file).write_text(text)


def csv_rows(text: str, source: str) -> list[list[str]]:
    """The rows of a headerless CSV text (any line ending: ``\\n``, ``\\r\\n`` or a bare ``\\r``),
    each a list of field strings; row *k* of the list is line *k + 1* of the text.

    Raises:
        InvalidInputError: the text is not CSV the ``csv`` module can read (e.g. a field over its
            size limit), naming ``source`` and the line.
    """
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise InvalidInputError(f"{source}: line {reader.line_num}: not readable as CSV ({exc})") from None
