"""The PoET alphabet: ``Uniprot21`` with gap, distinct start/stop tokens and no extra mask (24 ids).

Source: PoET (Truong & Bepler, NeurIPS 2023), ``poet/alphabets.py``; facts in
``shared/specs/poet-model.md`` §1.

==== ===== ==========================================
id   char  meaning
==== ===== ==========================================
0-19 ARNDCQEGHILKMFPSTWYV the 20 amino acids
20   ``-`` gap (never fed to the model)
21   ``*`` start token
22   ``$`` stop token
23   ``X`` mask / unknown; ignored as a scoring target
==== ===== ==========================================

Encoding maps bytes through a 256-entry table: ``O``->K, ``U``->C, ``B``/``Z``/``X``/``J`` and
anything unknown -> 23. plmserve validates user sequences first (:func:`check_sequence`) so that
lowercase letters, digits and stray ``*``/``$``/``-`` are rejected with a clear message instead of
silently becoming tokens.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plmserve.errors import InvalidInputError

AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"
"""The 20 amino acids in PoET's id order (also the order of the single-site scan)."""
TOKENS = AMINO_ACIDS + "-*$X"
VOCAB_SIZE = 24
GAP = 20
START = 21
STOP = 22
MASK = 23
ACCEPTED_LETTERS = AMINO_ACIDS + "XOUBZ"
"""Letters accepted in a user sequence (upper case; ``X``/``B``/``Z`` become the mask id 23)."""

_TABLE = np.full(256, MASK, dtype=np.int64)
for _i, _c in enumerate(AMINO_ACIDS):
    _TABLE[ord(_c)] = _i
_TABLE[ord("-")] = GAP
_TABLE[ord("*")] = START
_TABLE[ord("$")] = STOP
_TABLE[ord("O")] = AMINO_ACIDS.index("K")
_TABLE[ord("U")] = AMINO_ACIDS.index("C")
_ACCEPTED = frozenset(ACCEPTED_LETTERS)


def check_sequence(seq: str, *, what: str = "sequence", item: int | None = None) -> str:
    """Validate one ungapped protein sequence and return it (upper-cased).

    Lower-case letters are upper-cased (plmserve accepts both; the official encoder would map
    them to ``X``). Accepted: ``ARNDCQEGHILKMFPSTWYV`` and ``X O U B Z``.

    Raises:
        InvalidInputError: empty sequence, or a character outside the accepted set; the message
            names ``what``, the item index (0-based, when given), the 1-based position and the
            character.
    """
    where = f"{what} {item}" if item is not None else what
    if not isinstance(seq, str):
        raise InvalidInputError(f"{where}: expected a string, got {type(seq).__name__}", item=item)
    s = seq.strip().upper()
    if not s:
        raise InvalidInputError(f"{where}: empty sequence", item=item)
    for pos, ch in enumerate(s, start=1):
        if ch not in _ACCEPTED:
            hint = " (gaps are not allowed; give ungapped sequences)" if ch == "-" else ""
            raise InvalidInputError(
                f"{where}: invalid character {ch!r} at position {pos}{hint}; "
                f"allowed: {ACCEPTED_LETTERS}",
                item=item,
                position=pos,
                character=ch,
            )
    return s


def encode(seq: str) -> np.ndarray:
    """Byte-wise encoding of ``seq`` with PoET's table (no validation, no start/stop).

    Returns:
        int64 array of shape ``[len(seq)]`` with ids in 0..23.
    """
    return _TABLE[np.frombuffer(seq.encode("latin-1"), dtype=np.uint8)]


def encode_sequence(seq: str, *, reverse: bool = False) -> np.ndarray:
    """``[21] + encode(seq) + [22]`` (``*SEQ$``), or the whole array reversed (``$QES*``).

    Returns:
        int64 array of shape ``[len(seq) + 2]``.
    """
    ids = np.concatenate(([START], encode(seq), [STOP])).astype(np.int64)
    return ids[::-1].copy() if reverse else ids


def decode(ids: Sequence[int]) -> str:
    """Characters of token ids (0..23), e.g. ``[21, 0, 22]`` -> ``"*A$"``."""
    return "".join(TOKENS[int(i)] for i in ids)
