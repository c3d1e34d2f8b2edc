"""Reading variant sets: ProteinGym DMS CSVs, FASTA files and mutation lists.

A :class:`VariantSet` is what every scorer consumes: the wild type, and per variant its code
(``A42G``, ``A42G:L50P``, or ``WT``), its full sequence, its substitutions, and the other
columns of the input (``DMS_score``, ``DMS_score_bin``, ...) carried over to the output.

Accepted inputs (:func:`read_variants`):

* **CSV/TSV with a header** (ProteinGym DMS layout, ``proteingym-evaluation.md`` §1.1):
  ``mutant`` (1-based codes, multi-mutants joined by ``:``) and/or ``mutated_sequence``;
  any other columns are kept. When both are present they must agree.
* **FASTA**: one record per variant; the record name is used as the code when it parses as a
  mutation of the wild type that gives the record's sequence; otherwise the code is derived by
  comparing the sequence with the wild type (same length), or the name is kept (other lengths:
  such rows can be scored by PoET only).
* **Mutation list**: a text file with one code per line (``#`` comments allowed).

The wild-type row is named ``WT`` (:data:`plmserve.bio.mutations.WILD_TYPE_CODE`); ``X0X``,
``input``, ``wt`` ... are read as the wild type too.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plmserve.bio.mutations import (
    WILD_TYPE_CODE,
    Substitution,
    apply_mutant,
    format_mutant,
    is_wild_type_code,
    parse_mutant,
)
from plmserve.errors import InvalidInputError

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
MUTANT_COLUMN = "mutant"
SEQUENCE_COLUMN = "mutated_sequence"
DMS_COLUMNS = ("DMS_score", "DMS_score_bin")


@dataclass
class VariantSet:
    """Variants of one wild type, in input order.

    Attributes:
        wild_type: the wild-type sequence (upper case), which defines the 1-based positions.
        mutants: per variant its code: ``A42G``, ``A42G:L50P`` or ``WT``; for a FASTA record that
            is not a substitution variant of the wild type, the record name.
        sequences: per variant the full sequence.
        substitutions: per variant its substitutions (``[]`` for the wild type), or None when the
            variant is not a pure substitution variant (another length).
        extra: the input's other columns (e.g. ``DMS_score``), one row per variant, same order.
        source: where the variants came from (for messages and the sidecar).
    """

    wild_type: str
    mutants: list[str]
    sequences: list[str]
    substitutions: list[list[Substitution] | None]
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = "<input>"

    def __len__(self) -> int:
        return len(self.mutants)

    @property
    def depths(self) -> list[int | None]:
        """Number of substitutions per variant (0 = wild type, None = not a substitution variant)."""
        return [None if s is None else len(s) for s in self.substitutions]


# ---------------------------------------------------------------------------------------------
# wild type
# ---------------------------------------------------------------------------------------------
def read_wild_type(path: str | Path) -> str:
    """The wild type from a FASTA file (first record) or a file holding just the sequence.

    Raises:
        FileNotFoundError; InvalidInputError: empty file or several records (names the file).
    """
    from plmserve.bio.fasta import parse_fasta

    path = Path(path)
    text = path.read_text()
    if text.lstrip().startswith(">"):
        records = parse_fasta(text, source=str(path))
        if len(records) != 1:
            raise InvalidInputError(f"{path}: expected one wild-type record, found {len(records)}")
        seq = records[0].sequence
    else:
        seq = "".join(text.split())
    if not seq:
        raise InvalidInputError(f"{path}: no wild-type sequence found")
    return seq.upper()


def derive_wild_type(codes: list[str], sequences: list[str], source: str) -> str:
    """The wild type implied by a DMS table: the first row's ``mutated_sequence`` with its
    substitutions reverted (every row is checked against it later).

    Raises:
        InvalidInputError: no row with both a code and a sequence.
    """
    for code, seq in zip(codes, sequences):
        if not seq:
            continue
        if is_wild_type_code(code):
            return seq.upper()
        try:
            subs = parse_mutant(code)
        except InvalidInputError:
            continue
        if all(s.position <= len(seq) for s in subs):
            back = [Substitution(s.mt, s.position, s.wt) for s in subs]
            return apply_mutant(seq.upper(), back)
    raise InvalidInputError(
        f"{source}: cannot infer the wild type (no row with both '{MUTANT_COLUMN}' and '{SEQUENCE_COLUMN}'); "
        "give it with --wt FASTA"
    )


# ---------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------
def _diff(wild_type: str, seq: str) -> list[Substitution] | None:
    """Substitutions turning ``wild_type`` into ``seq`` (same length), else None."""
    if len(seq) != len(wild_type):
        return None
    return [Substitution(w, i + 1, m) for i, (w, m) in enumerate(zip(wild_type, seq)) if w != m]


def _code(subs: list[Substitution]) -> str:
    return format_mutant(subs) if subs else WILD_TYPE_CODE


def _looks_like_fasta(path: Path, text: str) -> bool:
    return path.suffix.lower() in FASTA_SUFFIXES or text.lstrip().startswith(">")


def _read_table(path: Path, text: str) -> pd.DataFrame | None:
    """A CSV/TSV with a ``mutant`` or ``mutated_sequence`` header, else None."""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    delimiter = "\t" if "\t" in first else ","
    header = [h.strip() for h in next(csv.reader([first], delimiter=delimiter))] if first else []
    if MUTANT_COLUMN not in header and SEQUENCE_COLUMN not in header:
        return None
    try:
        table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype={MUTANT_COLUMN: str, SEQUENCE_COLUMN: str},
                            keep_default_na=False, na_values=[""])  # fmt: skip
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InvalidInputError(f"{path}: not a readable CSV file ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def read_variants(path: str | Path, wild_type: str | None = None) -> VariantSet:
    """Read variants from a DMS CSV, a FASTA file or a mutation list (see the module docstring).

    Args:
        path: the file.
        wild_type: the wild-type sequence; optional for a CSV with ``mutant`` and
            ``mutated_sequence`` (inferred by :func:`derive_wild_type`), required otherwise.

    Returns:
        :class:`VariantSet` in file order.

    Raises:
        FileNotFoundError; InvalidInputError: an unreadable file, a malformed code, a code that
            does not fit the wild type, a ``mutated_sequence`` that disagrees with its code, or
            no wild type. Messages name the file and the line (1-based, header = line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not a text file") from None
    if not text.strip():
        raise InvalidInputError(f"{path}: the file is empty")
    wt = wild_type.strip().upper() if wild_type else None
    if _looks_like_fasta(path, text):
        return _from_fasta(path, text, wt)
    table = _read_table(path, text)
    if table is not None:
        return _from_table(path, table, wt)
    return _from_list(path, text, wt)


def _need_wt(wt: str | None, path: Path) -> str:
    if not wt:
        raise InvalidInputError(f"{path}: the wild type is needed to read this file; give it with --wt FASTA")
    return wt


def _from_table(path: Path, table: pd.DataFrame, wt: str | None) -> VariantSet:
    n = len(table)
    if n == 0:
        raise InvalidInputError(f"{path}: no variants (only a header)")
    has_code = MUTANT_COLUMN in table.columns
    has_seq = SEQUENCE_COLUMN in table.columns
    codes = [("" if pd.isna(c) else str(c).strip()) for c in table[MUTANT_COLUMN]] if has_code else [""] * n
    seqs = [("" if pd.isna(s) else str(s).strip().upper()) for s in table[SEQUENCE_COLUMN]] if has_seq else [""] * n
    if wt is None:
        wt = derive_wild_type(codes, seqs, str(path)) if has_code and has_seq else _need_wt(wt, path)
    mutants: list[str] = []
    sequences: list[str] = []
    subs_all: list[list[Substitution] | None] = []
    for i, (code, seq) in enumerate(zip(codes, seqs)):
        line = i + 2
        where = f"{path}: line {line}"
        if has_code and code and not is_wild_type_code(code):
            try:
                subs = parse_mutant(code, wt)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}: {exc}", item=i) from None
            built = apply_mutant(wt, subs)
            if seq and seq != built:
                raise InvalidInputError(
                    f"{where}: {MUTANT_COLUMN} '{code}' applied to the wild type does not give its {SEQUENCE_COLUMN} "
                    "(is the wild type right?)", item=i)  # fmt: skip
            mutants.append(format_mutant(subs))
            sequences.append(built)
            subs_all.append(subs)
        elif has_code and code and is_wild_type_code(code):
            if seq and seq != wt:
                raise InvalidInputError(f"{where}: the wild-type row's {SEQUENCE_COLUMN} differs from the wild type",
                                        item=i)
            mutants.append(WILD_TYPE_CODE)
            sequences.append(wt)
            subs_all.append([])
        elif seq:
            d = _diff(wt, seq)
            mutants.append(_code(d) if d is not None else f"variant-{i + 1}")
            sequences.append(seq)
            subs_all.append(d)
        else:
            raise InvalidInputError(f"{where}: empty {MUTANT_COLUMN} and {SEQUENCE_COLUMN}", item=i)
    extra = table.drop(columns=[c for c in (MUTANT_COLUMN, SEQUENCE_COLUMN) if c in table.columns])
    return VariantSet(wt, mutants, sequences, subs_all, extra.reset_index(drop=True), str(path))


def _from_fasta(path: Path, text: str, wt: str | None) -> VariantSet:
    from plmserve.bio.fasta import parse_fasta

    wt = _need_wt(wt, path)
    records = parse_fasta(text, source=str(path))
    mutants, sequences, subs_all = [], [], []
    for rec in records:
        seq = rec.sequence.upper()
        subs: list[Substitution] | None
        code = rec.name
        try:
            named = [] if is_wild_type_code(code) else parse_mutant(code, wt)
            subs = named if apply_mutant(wt, named) == seq else _diff(wt, seq)
        except InvalidInputError:
            subs = _diff(wt, seq)
        mutants.append(_code(subs) if subs is not None else code)
        sequences.append(seq)
        subs_all.append(subs)
    extra = pd.DataFrame({"name": [r.name for r in records]})
    return VariantSet(wt, mutants, sequences, subs_all, extra, str(path))


def _from_list(path: Path, text: str, wt: str | None) -> VariantSet:
    wt = _need_wt(wt, path)
    mutants, sequences, subs_all = [], [], []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        code = raw.split("#", 1)[0].strip()
        if not code:
            continue
        if is_wild_type_code(code):
            subs: list[Substitution] = []
        else:
            try:
                subs = parse_mutant(code, wt)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}: line {lineno}: {exc}") from None
        mutants.append(_code(subs))
        sequences.append(apply_mutant(wt, subs))
        subs_all.append(subs)
    if not mutants:
        raise InvalidInputError(f"{path}: no mutation codes found")
    return VariantSet(wt, mutants, sequences, subs_all, pd.DataFrame(index=range(len(mutants))), str(path))


def read_named_sequences(path: str | Path) -> list[tuple[str, str]] | None:
    """``(name, sequence)`` pairs from a CSV with a header holding ``mutated_sequence`` (a DMS
    file: names from ``mutant``, else ``name``, else ``variant-<i>``), or None when the file is
    not such a table (the caller falls back to its own formats).

    Raises:
        InvalidInputError: an empty ``mutated_sequence`` (names the line).
    """
    path = Path(path)
    text = path.read_text()
    if not text.strip() or _looks_like_fasta(path, text):
        return None
    table = _read_table(path, text)
    if table is None or SEQUENCE_COLUMN not in table.columns:
        return None
    names = table[MUTANT_COLUMN] if MUTANT_COLUMN in table.columns else table.get("name")
    out = []
    for i, seq in enumerate(table[SEQUENCE_COLUMN]):
        if pd.isna(seq) or not str(seq).strip():
            raise InvalidInputError(f"{path}: line {i + 2}: empty {SEQUENCE_COLUMN}")
        name = None if names is None or pd.isna(names.iloc[i]) else str(names.iloc[i]).strip()
        if name and is_wild_type_code(name):
            name = WILD_TYPE_CODE
        out.append((name or f"variant-{i + 1}", str(seq).strip().upper()))
    if not out:
        raise InvalidInputError(f"{path}: no variants (only a header)")
    return out


# ---------------------------------------------------------------------------------------------
# score files
# ---------------------------------------------------------------------------------------------
SCORE_COLUMN = "score"


def sidecar_path(path: str | Path) -> Path:
    """The metadata file written next to a score file: ``scores.csv`` -> ``scores.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def scores_frame(variants: VariantSet, scores: Any) -> pd.DataFrame:
    """The output table: ``mutant``, ``mutated_sequence``, ``score``, the per-replicate columns
    (``score_1`` ...) when there are several replicates, then the input's other columns."""
    frame = pd.DataFrame({MUTANT_COLUMN: variants.mutants, SEQUENCE_COLUMN: variants.sequences,
                          SCORE_COLUMN: np.asarray(scores.scores, dtype=np.float64)})  # fmt: skip
    if scores.replicates is not None and len(scores.replicate_names) > 1:
        for name, row in zip(scores.replicate_names, scores.replicates):
            frame[name] = row
    for col in variants.extra.columns:
        if col not in frame.columns:
            frame[col] = variants.extra[col].to_numpy()
    return frame


def write_scores(path: str | Path, frame: pd.DataFrame, metadata: dict[str, Any]) -> Path:
    """Write the score CSV (full float precision) and its sidecar JSON; returns the sidecar path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)  # floats as repr: shortest exact round trip
    side = sidecar_path(path)
    side.write_text(json.dumps(metadata, indent=2, default=_json_default) + "\n")
    return side


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_scores(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A score CSV and its sidecar metadata (``{}`` when there is none).

    Raises:
        FileNotFoundError; InvalidInputError: not a readable CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        frame = pd.read_csv(path, dtype={MUTANT_COLUMN: str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not a readable CSV file ({exc})") from None
    side = sidecar_path(path)
    meta: dict[str, Any] = {}
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{side}: not valid JSON ({exc})") from None
    return frame, meta
