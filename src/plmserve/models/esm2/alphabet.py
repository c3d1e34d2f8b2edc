"""The ESM-2 vocabulary and sequence validation.

The vocabulary is fair-esm's ``Alphabet.from_architecture("ESM-1b")`` (33 tokens, index = token id),
which is also the vocabulary of the Hugging Face ``facebook/esm2_*`` checkpoints. Each sequence is
tokenised as ``<cls>`` (BOS) + one token per residue + ``<eos>``, right-padded with ``<pad>`` in a
batch; ``<mask>`` in the input text is one token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from plmserve.errors import InvalidInputError

ALL_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip
"""The 33 fair-esm tokens in id order."""

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
MASK_ID = 32
MASK_TOKEN = "<mask>"

STANDARD_AA: tuple[str, ...] = ALL_TOKENS[4:24]
"""The 20 standard amino acids in vocabulary order ``L A G V S E R T I D P K Q N F Y M H W C``
(the BioLM ``alphabet_tokens``); their token ids are 4..23."""
STANDARD_SLICE = slice(4, 24)

RESIDUE_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
"""Letters accepted in a sequence (upper case): the 20 standard amino acids, the ambiguity/rare
codes X B U Z O, and ``.``/``-`` (which fair-esm's alphabet holds)."""

TOKEN_ID: dict[str, int] = {tok: i for i, tok in enumerate(ALL_TOKENS)}

# byte -> token id lookup for fast tokenisation of validated (upper-case) sequences
_BYTE_TO_ID = np.full(256, -1, dtype=np.int64)
for _ch in RESIDUE_LETTERS:
    _BYTE_TO_ID[ord(_ch)] = TOKEN_ID[_ch]
# inside a normalised sequence, '<mask>' is replaced by this placeholder byte before the lookup
_MASK_PLACEHOLDER = "\x01"
_BYTE_TO_ID[1] = MASK_ID

_WS = re.compile(r"\s+")


def validate_sequences(
    sequences: Sequence[str], *, max_residues: int, allow_mask: bool = False
) -> list[str]:
    """Normalise and check protein sequences for ESM-2.

    Whitespace is removed and letters are upper-cased. With ``allow_mask`` the token ``<mask>``
    (any case) counts as one residue position.

    Args:
        sequences: the input sequences (a list of str).
        max_residues: the model's limit on residues per sequence (1024 for ESM-2: 1026 positions
            including BOS/EOS).
        allow_mask: accept ``<mask>`` tokens (``predict``).

    Returns:
        The normalised sequences, same order and length as the input.

    Raises:
        InvalidInputError: not a list of strings, an empty sequence, a character outside
            ``LAGVSERTIDPKQNFYMHWCXBUZO.-`` (message names the 0-based item, the 1-based position
            and the character), or a sequence longer than ``max_residues``.
    """
    if isinstance(sequences, str) or not isinstance(sequences, Sequence):
        raise InvalidInputError("sequences must be a list of strings")
    out: list[str] = []
    for item, raw in enumerate(sequences):
        if not isinstance(raw, str):
            raise InvalidInputError(
                f"item {item}: the sequence must be a string, not {type(raw).__name__}", item=item
            )
        seq = _WS.sub("", raw).upper()
        if not seq:
            raise InvalidInputError(f"item {item}: the sequence is empty", item=item)
        tokens = split_tokens(seq, item=item, allow_mask=allow_mask)
        if len(tokens) > max_residues:
            raise InvalidInputError(
                f"item {item}: the sequence has {len(tokens)} residues, more than this model's limit "
                f"of {max_residues} residues",
                item=item,
            )
        out.append(seq)
    return out


def split_tokens(seq: str, *, item: int | None = None, allow_mask: bool = True) -> list[str]:
    """Split a normalised (upper-case, no whitespace) sequence into tokens, ``<MASK>``/``<mask>``
    kept as one token ``<mask>``.

    Raises:
        InvalidInputError: an unknown character (names item, 1-based position, character) or a
            ``<mask>`` when ``allow_mask`` is false.
    """
    where = f"item {item}: " if item is not None else ""
    tokens: list[str] = []
    i = 0
    n = len(seq)
    while i < n:
        ch = seq[i]
        if ch == "<":
            if seq[i : i + 6].upper() == "<MASK>":
                if not allow_mask:
                    raise InvalidInputError(
                        f"{where}'<mask>' at position {len(tokens) + 1} is only allowed in predict",
                        item=item,
                        position=len(tokens) + 1,
                        character="<mask>",
                    )
                tokens.append(MASK_TOKEN)
                i += 6
                continue
        if ch not in RESIDUE_LETTERS:
            raise InvalidInputError(
                f"{where}invalid character {ch!r} at position {len(tokens) + 1}; allowed: the amino-acid "
                f"letters {RESIDUE_LETTERS}" + (" and <mask>" if allow_mask else ""),
                item=item,
                position=len(tokens) + 1,
                character=ch,
            )
        tokens.append(ch)
        i += 1
    return tokens


def encode_residues(seq: str) -> np.ndarray:
    """Token ids of the residues of a validated sequence (no BOS/EOS), ``int64[L]``.

    ``<MASK>``/``<mask>`` becomes id 32. The input must have passed :func:`validate_sequences`.
    """
    if "<" in seq:
        seq = re.sub("<mask>", _MASK_PLACEHOLDER, seq, flags=re.IGNORECASE)
    ids = _BYTE_TO_ID[np.frombuffer(seq.encode("latin-1"), dtype=np.uint8)]
    if (ids < 0).any():  # pragma: no cover - validate_sequences rejects these first
        bad = int(np.nonzero(ids < 0)[0][0])
        raise InvalidInputError(f"invalid character {seq[bad]!r} at position {bad + 1}")
    return ids


def num_residues(seq: str) -> int:
    """Residue positions of a validated sequence (``<mask>`` counts as one)."""
    return len(seq) - 5 * seq.upper().count("<MASK>")
