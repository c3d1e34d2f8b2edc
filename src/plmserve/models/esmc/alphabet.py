"""The ESM C sequence vocabulary (``esm`` 3.2.1 ``EsmSequenceTokenizer``) and tokenisation.

33 tokens in id order (the embedding and the sequence head are 64 wide; ids 33..63 are never
produced)::

    <cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - | <mask>

Ids 0..30 equal fair-esm ESM-2's, so residue validation and residue-id lookup are shared with
:mod:`plmserve.models.esm2.alphabet`; ESM C has the chain break ``|`` at 31 where ESM-2 has
``<null_1>``. Source: ``shared/specs/esmc-and-biolm-v3.md`` §5.5.
"""

from __future__ import annotations

import re

import numpy as np

from plmserve.models.esm2.alphabet import (  # noqa: F401  (re-exported: same ids 0..30)
    MASK_TOKEN,
    RESIDUE_LETTERS,
    encode_residues,
    num_residues,
    split_tokens,
    validate_sequences,
)

VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "|", "<mask>",
)  # fmt: skip
"""The 33 ESM C tokens in id order."""

BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
CHAIN_BREAK_ID = 31
MASK_ID = 32
VOCAB_SIZE = 64  # rows of the embedding / columns of the sequence head
TOKEN_ID: dict[str, int] = {tok: i for i, tok in enumerate(VOCAB)}

CANONICAL_AA: tuple[str, ...] = tuple("ACDEFGHIKLMNPQRSTVWY")
"""The 20 canonical amino acids in alphabetical order: the columns of every 20-wide ``logits``
output of the ESM C engine (BioLM's ``vocab_tokens`` for ESM C)."""
CANONICAL_IDS: np.ndarray = np.array([TOKEN_ID[a] for a in CANONICAL_AA], dtype=np.int64)

_SPECIAL = re.compile(r"<cls>|<pad>|<eos>|<unk>|<mask>")


def tokenize(sequence: str) -> list[int]:
    """Token ids exactly as the official ``ESMC.encode`` produces them: ``<cls>`` + one id per
    character + ``<eos>``.

    ``_`` becomes ``<mask>``; the literal special tokens ``<mask>``, ``<cls>``, ``<pad>``,
    ``<eos>``, ``<unk>`` are one token each; any other character outside the vocabulary,
    **lower case included**, becomes ``<unk>`` (3). Never raises.
    """
    s = sequence.replace("_", "<mask>")
    ids = [BOS_ID]
    pos = 0
    for m in _SPECIAL.finditer(s):
        ids.extend(TOKEN_ID.get(ch, UNK_ID) for ch in s[pos:m.start()])
        ids.append(TOKEN_ID[m.group(0)])
        pos = m.end()
    ids.extend(TOKEN_ID.get(ch, UNK_ID) for ch in s[pos:])
    ids.append(EOS_ID)
    return ids


def detokenize(ids) -> str:
    """The inverse of :func:`tokenize` for Forge ``decode``: ``<cls>``/``<eos>``/``<pad>`` are
    dropped, ``<mask>`` becomes ``_``, every other id its token (ids >= 33 raise ``ValueError``)."""
    out = []
    for i in ids:
        i = int(i)
        if i in (BOS_ID, EOS_ID, PAD_ID):
            continue
        if not 0 <= i < len(VOCAB):
            raise ValueError(f"token id {i} is outside the ESM C vocabulary (0..{len(VOCAB) - 1})")
        out.append("_" if i == MASK_ID else VOCAB[i])
    return "".join(out)
