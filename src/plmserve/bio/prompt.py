"""PoET prompt files: one or more replicates separated by ``<END_PROMPT>`` lines.

Each block is FASTA or headerless CSV (``sequence`` or ``name,sequence`` per line), as the
OpenProtein ``upload_prompt`` endpoint accepts (``poet-api.md`` §6.2). Sequences are used as
they are (no sampling): upper-cased, whitespace removed, and they must be ungapped. Empty blocks
(for example after a trailing separator) are ignored. Unnamed sequences are named
``sequence-<i>`` (1-based within the replicate).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

from plmserve.bio.fasta import csv_rows
from plmserve.errors import InvalidInputError

SEPARATOR = "<END_PROMPT>"
#: Letters accepted in a prompt sequence (the PoET tokenizer's input alphabet, no gaps).
PROMPT_LETTERS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")

Prompt = list[tuple[str, str]]


def _parse_block(text: str, replicate: int, source: str) -> Prompt:
    lines = text.strip().splitlines()
    records: Prompt = []
    where = f"{source}: prompt {replicate}"
    if lines[0].lstrip().startswith(">"):
        name = None
        chunks: list[str] = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(chunks)))
                name = line[1:].split()[0] if line[1:].strip() else f"sequence-{len(records) + 1}"
                chunks = []
            else:
                chunks.append("".join(line.split()))
        if name is not None:
            records.append((name, "".join(chunks)))
    else:
        for fields in csv_rows(text.strip(), str(source)):
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if len(fields) == 1:
                records.append((f"sequence-{len(records) + 1}", fields[0]))
            elif len(fields) == 2:
                records.append((fields[0] or f"sequence-{len(records) + 1}", fields[1]))
            else:
                raise InvalidInputError(
                    f"{where}, sequence {len(records) + 1}: {len(fields)} comma-separated fields; "
                    "expected 1 (sequence) or 2 (name,sequence)",
                    item=len(records),
                )
    out: Prompt = []
    for i, (name, seq) in enumerate(records, start=1):
        seq = seq.upper()
        if not seq:
            raise InvalidInputError(f"{where}, sequence {i} `{name}`: empty sequence", item=i - 1)
        for pos, ch in enumerate(seq, start=1):
            if ch not in PROMPT_LETTERS:
                what = "a gap (prompt sequences must be ungapped)" if ch in "-." else f"invalid character {ch!r}"
                raise InvalidInputError(
                    f"{where}, sequence {i} `{name}`, position {pos}: {what}", item=i - 1, position=pos, character=ch
                )
        out.append((name, seq))
    return out


def parse_prompt(data: str | bytes, *, source: str = "<prompt>") -> list[Prompt]:
    """Parse a prompt file into replicates.

    Args:
        data: text (or UTF-8 bytes) of FASTA or CSV blocks separated by ``<END_PROMPT>`` lines.

    Returns:
        One list of ``(name, sequence)`` per non-empty block, in file order.

    Raises:
        InvalidInputError: not UTF-8, no sequences at all, a gap or other invalid character
            (naming the prompt (1-based), sequence and position), a CSV line with > 2 fields.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{source}: not a text file (byte {exc.start} is not UTF-8)") from None
    blocks: list[list[str]] = [[]]
    for line in data.lstrip("\ufeff").splitlines():
        if line.strip() == SEPARATOR:
            blocks.append([])
        else:
            blocks[-1].append(line)
    replicates: list[Prompt] = []
    for lines in blocks:
        text = "\n".join(lines)
        if not text.strip():
            continue
        replicates.append(_parse_block(text, len(replicates) + 1, source))
    if not replicates:
        raise InvalidInputError(f"{source}: the prompt file contains no sequences")
    return replicates


def read_prompt(path: str | Path) -> list[Prompt]:
    """Read a prompt file; see :func:`parse_prompt`. Raises FileNotFoundError, InvalidInputError."""
    path = Path(path)
    return parse_prompt(path.read_bytes(), source=str(path))


def format_prompt(replicates: list[Prompt], format: Literal["fasta", "csv"] = "fasta") -> str:
    """Write replicates as FASTA (default) or ``name,sequence`` CSV blocks joined by
    ``<END_PROMPT>`` lines (no separator after the last block). :func:`parse_prompt` reads it back."""
    blocks = []
    for prompt in replicates:
        if format == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for name, seq in prompt:
                writer.writerow([name, seq])
            blocks.append(out.getvalue())
        elif format == "fasta":
            blocks.append("".join(f">{name}\n{seq}\n" for name, seq in prompt))
        else:
            raise ValueError(f"unknown prompt format {format!r} (fasta or csv)")
    return f"{SEPARATOR}\n".join(blocks)
