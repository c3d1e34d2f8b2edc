"""Mutation codes: ``A42G`` (wild-type residue, 1-based position, mutant residue) and
multi-mutants joined by ``:`` (``A42G:L50P``), the ProteinGym convention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from plmserve.errors import InvalidInputError

_CODE = re.compile(r"^([A-Za-z])(\d+)([A-Za-z])$")

WILD_TYPE_CODE = "WT"
"""The code of the wild-type row in every plmserve output (CLI, SDK, non-OpenProtein HTTP).
The OpenProtein-compatible routes keep their contract's ``X0X`` (``plmserve.jobs.poet.WT_CODE``)."""

WILD_TYPE_ALIASES = frozenset({"wt", "wildtype", "wild_type", "wild-type", "_wt", "x0x", "input"})
"""Spellings read as the wild type in input files (case-insensitive), e.g. OpenProtein's ``X0X``
and the official SDK's ``input``."""


def is_wild_type_code(code: str) -> bool:
    """True when ``code`` names the wild type (``WT``, ``X0X``, ``input``, ... any case)."""
    return code.strip().lower() in WILD_TYPE_ALIASES


def display_code(code: str) -> str:
    """The code as plmserve shows it to users: :data:`WILD_TYPE_CODE` for any wild-type alias
    (e.g. a stored OpenProtein ``X0X`` row), otherwise ``code`` unchanged."""
    return WILD_TYPE_CODE if is_wild_type_code(code) else code


@dataclass(frozen=True)
class Substitution:
    """One substitution; ``position`` is 1-based."""

    wt: str
    position: int
    mt: str

    @property
    def index(self) -> int:
        """0-based index into the sequence."""
        return self.position - 1

    def __str__(self) -> str:
        return f"{self.wt}{self.position}{self.mt}"


def parse_mutant(code: str, wild_type: str | None = None, *, row: int | None = None) -> list[Substitution]:
    """Parse ``A42G`` or ``A42G:L50P`` (also ``,``/``;``/whitespace separated).

    When ``wild_type`` is given, checks each position is inside it and that the stated wild-type
    residue matches. Positions must be distinct.

    Raises:
        InvalidInputError: malformed code, position out of range, wild-type mismatch, repeated
            position. The message names the code (and ``row`` when given).
    """
    where = f"row {row}: " if row is not None else ""
    parts = [p for p in re.split(r"[:,;\s]+", code.strip()) if p]
    if not parts:
        raise InvalidInputError(f"{where}empty mutation code")
    subs: list[Substitution] = []
    seen: set[int] = set()
    for part in parts:
        m = _CODE.match(part)
        if not m:
            raise InvalidInputError(
                f"{where}malformed mutation code '{part}' in '{code}' (expected e.g. A42G or A42G:L50P)"
            )
        wt, pos, mt = m.group(1).upper(), int(m.group(2)), m.group(3).upper()
        if pos < 1:
            raise InvalidInputError(f"{where}mutation '{part}': positions are 1-based")
        if wild_type is not None:
            if pos > len(wild_type):
                raise InvalidInputError(
                    f"{where}mutation '{part}': position {pos} is beyond the wild type's length {len(wild_type)}"
                )
            actual = wild_type[pos - 1].upper()
            if actual != wt:
                raise InvalidInputError(
                    f"{where}mutation '{part}': the wild type has '{actual}' at position {pos}, not '{wt}'"
                )
        if pos in seen:
            raise InvalidInputError(f"{where}mutation code '{code}' names position {pos} twice")
        seen.add(pos)
        subs.append(Substitution(wt, pos, mt))
    return subs


def apply_mutant(wild_type: str, subs: list[Substitution]) -> str:
    """The mutant sequence: ``wild_type`` with ``subs`` applied."""
    seq = list(wild_type)
    for s in subs:
        seq[s.index] = s.mt
    return "".join(seq)


def format_mutant(subs: list[Substitution]) -> str:
    """``A42G:L50P`` for a list of substitutions."""
    return ":".join(str(s) for s in subs)
