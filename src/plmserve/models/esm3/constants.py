"""ESM3 vocabularies, special token ids, track names and sizes.

Facts from ``shared/specs/esm3-api.md`` §7 (vocabularies) and ``esm3-model.md`` §0/§6/§7 (sizes),
which were read from the official ``esm`` package (``esm/utils/constants/esm3.py``,
``esm/tokenization/*``). Token ids are plain Python ints; all tracks are int64 tensors in the model.

Token layout of every track: position 0 is BOS, position N-1 is EOS, N = L + 2 for L residues.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Track names (wire names of the Forge ``generate_tensor`` API, esm3-api.md §3)
# --------------------------------------------------------------------------------------------
TRACK_SEQUENCE = "sequence"
TRACK_STRUCTURE = "structure"
TRACK_SECONDARY_STRUCTURE = "secondary_structure"
TRACK_SASA = "sasa"
TRACK_FUNCTION = "function"
TRACK_RESIDUE_ANNOTATION = "residue_annotation"  # singular on the wire
TRACK_COORDINATES = "coordinates"

#: Tracks the iterative sampler can generate (``track`` field of generate_tensor).
SAMPLEABLE_TRACKS: tuple[str, ...] = (
    TRACK_SEQUENCE,
    TRACK_STRUCTURE,
    TRACK_SECONDARY_STRUCTURE,
    TRACK_SASA,
    TRACK_FUNCTION,
)
#: Every key of the wire ``inputs`` object.
ALL_TRACKS: tuple[str, ...] = SAMPLEABLE_TRACKS + (TRACK_RESIDUE_ANNOTATION, TRACK_COORDINATES)

# --------------------------------------------------------------------------------------------
# Sequence vocabulary (33 ids used, head width 64)
# --------------------------------------------------------------------------------------------
SEQUENCE_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-",
    "|", "<mask>",
)  # fmt: skip
SEQUENCE_BOS_TOKEN = 0
SEQUENCE_PAD_TOKEN = 1
SEQUENCE_EOS_TOKEN = 2
SEQUENCE_UNK_TOKEN = 3
SEQUENCE_CHAINBREAK_TOKEN = 31
SEQUENCE_MASK_TOKEN = 32
SEQUENCE_SPECIAL_IDS: frozenset[int] = frozenset({0, 1, 2, 3, 31, 32})
#: Standard amino acids are ids [4, 24) (``SEQUENCE_STANDARD_AA_MIN/MAX_TOKEN``).
SEQUENCE_STANDARD_AA_MIN_TOKEN = 4
SEQUENCE_STANDARD_AA_MAX_TOKEN = 24
#: Ids 24..30 (X B U Z O . -) are in the vocabulary and can be sampled unless listed in invalid_ids.
SEQUENCE_NONCANONICAL_IDS: tuple[int, ...] = tuple(range(24, 31))
SEQUENCE_VOCAB_SIZE = len(SEQUENCE_VOCAB)  # 33
SEQUENCE_HEAD_SIZE = 64  # embedding rows / logits width; ids 33..63 are unused
SEQUENCE_TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(SEQUENCE_VOCAB)}
#: One-letter form: '_' is the mask (ESMProtein strings), '|' the chain break.
SEQUENCE_CHAR_TO_ID: dict[str, int] = {
    **{tok: i for i, tok in enumerate(SEQUENCE_VOCAB) if len(tok) == 1},
    "_": SEQUENCE_MASK_TOKEN,
}

# --------------------------------------------------------------------------------------------
# Structure tokens (VQ-VAE codes 0..4095 + 5 specials; head width 4096 = codes only)
# --------------------------------------------------------------------------------------------
STRUCTURE_CODEBOOK_SIZE = 4096
STRUCTURE_MASK_TOKEN = 4096
STRUCTURE_EOS_TOKEN = 4097
STRUCTURE_BOS_TOKEN = 4098
STRUCTURE_PAD_TOKEN = 4099
STRUCTURE_CHAINBREAK_TOKEN = 4100
STRUCTURE_SPECIAL_IDS: frozenset[int] = frozenset({4096, 4097, 4098, 4099, 4100})
STRUCTURE_VOCAB_SIZE = 4101  # embedding rows
STRUCTURE_HEAD_SIZE = 4096

# --------------------------------------------------------------------------------------------
# Secondary structure (SS8; 11 ids). 0 is BOS/EOS/mask/pad.
# --------------------------------------------------------------------------------------------
SS8_VOCAB: tuple[str, ...] = ("<pad>", "<motif>", "<unk>", "G", "H", "I", "T", "E", "B", "S", "C")
SS8_PAD_TOKEN = 0
SS8_MASK_TOKEN = 0
SS8_BOS_TOKEN = 0
SS8_EOS_TOKEN = 0
SS8_SPECIAL_IDS: frozenset[int] = frozenset({0, 1, 2})
SS8_VOCAB_SIZE = 11
SS8_HEAD_SIZE = 11

# --------------------------------------------------------------------------------------------
# SASA (19 ids; 3..18 are 16 bins). 0 is BOS/EOS/mask/pad.
# --------------------------------------------------------------------------------------------
SASA_PAD_TOKEN = 0
SASA_MASK_TOKEN = 0
SASA_BOS_TOKEN = 0
SASA_EOS_TOKEN = 0
SASA_SPECIAL_IDS: frozenset[int] = frozenset({0, 1, 2})
#: Upper bin boundaries in Å² (torch.bucketize); token = 3 + bin index.
SASA_BOUNDARIES: tuple[float, ...] = (
    0.8, 4.0, 9.6, 16.4, 24.5, 32.9, 42.0, 51.5, 61.2, 70.9, 81.6, 93.3, 107.2, 125.4, 151.4,
)  # fmt: skip
SASA_VOCAB_SIZE = 19
SASA_HEAD_SIZE = 19

# --------------------------------------------------------------------------------------------
# Function tokens: 8 depths x 260 ids (0 pad/BOS/EOS/mask, 1 motif, 2 unk, 3 <none>, 4..259 LSH)
# --------------------------------------------------------------------------------------------
FUNCTION_DEPTH = 8
FUNCTION_PAD_TOKEN = 0
FUNCTION_MASK_TOKEN = 0
FUNCTION_BOS_TOKEN = 0
FUNCTION_EOS_TOKEN = 0
FUNCTION_MOTIF_TOKEN = 1
FUNCTION_UNK_TOKEN = 2
FUNCTION_NONE_TOKEN = 3
FUNCTION_SPECIAL_IDS: frozenset[int] = frozenset({0, 1, 2, 3})
FUNCTION_VOCAB_SIZE = 260  # per depth
FUNCTION_HEAD_SIZE = FUNCTION_DEPTH * FUNCTION_VOCAB_SIZE  # 2080, reshaped depth-major to [8, 260]

# --------------------------------------------------------------------------------------------
# Residue annotations: up to 16 ids per position (multi-hot), 0 = pad/none/mask
# --------------------------------------------------------------------------------------------
RESIDUE_ANNOTATION_DEPTH = 16
RESIDUE_ANNOTATION_PAD_TOKEN = 0
RESIDUE_ANNOTATION_MASK_TOKEN = 0
RESIDUE_ANNOTATION_VOCAB_SIZE = 1478
RESIDUE_ANNOTATION_HEAD_SIZE = 1478

# --------------------------------------------------------------------------------------------
# Coordinates, pLDDT
# --------------------------------------------------------------------------------------------
ATOM37_NUM_ATOMS = 37
BACKBONE_ATOMS: tuple[str, ...] = ("N", "CA", "C")  # atom37 slots 0, 1, 2
PLDDT_RBF_BINS = 16

# --------------------------------------------------------------------------------------------
# Track -> (mask id, BOS id, EOS id, pad id) for the token tracks
# --------------------------------------------------------------------------------------------
TRACK_MASK_TOKEN: dict[str, int] = {
    TRACK_SEQUENCE: SEQUENCE_MASK_TOKEN,
    TRACK_STRUCTURE: STRUCTURE_MASK_TOKEN,
    TRACK_SECONDARY_STRUCTURE: SS8_MASK_TOKEN,
    TRACK_SASA: SASA_MASK_TOKEN,
    TRACK_FUNCTION: FUNCTION_MASK_TOKEN,
    TRACK_RESIDUE_ANNOTATION: RESIDUE_ANNOTATION_MASK_TOKEN,
}
TRACK_BOS_TOKEN: dict[str, int] = {
    TRACK_SEQUENCE: SEQUENCE_BOS_TOKEN,
    TRACK_STRUCTURE: STRUCTURE_BOS_TOKEN,
    TRACK_SECONDARY_STRUCTURE: SS8_BOS_TOKEN,
    TRACK_SASA: SASA_BOS_TOKEN,
    TRACK_FUNCTION: FUNCTION_BOS_TOKEN,
    TRACK_RESIDUE_ANNOTATION: RESIDUE_ANNOTATION_PAD_TOKEN,
}
TRACK_EOS_TOKEN: dict[str, int] = {
    TRACK_SEQUENCE: SEQUENCE_EOS_TOKEN,
    TRACK_STRUCTURE: STRUCTURE_EOS_TOKEN,
    TRACK_SECONDARY_STRUCTURE: SS8_EOS_TOKEN,
    TRACK_SASA: SASA_EOS_TOKEN,
    TRACK_FUNCTION: FUNCTION_EOS_TOKEN,
    TRACK_RESIDUE_ANNOTATION: RESIDUE_ANNOTATION_PAD_TOKEN,
}
TRACK_PAD_TOKEN: dict[str, int] = {
    TRACK_SEQUENCE: SEQUENCE_PAD_TOKEN,
    TRACK_STRUCTURE: STRUCTURE_PAD_TOKEN,
    TRACK_SECONDARY_STRUCTURE: SS8_PAD_TOKEN,
    TRACK_SASA: SASA_PAD_TOKEN,
    TRACK_FUNCTION: FUNCTION_PAD_TOKEN,
    TRACK_RESIDUE_ANNOTATION: RESIDUE_ANNOTATION_PAD_TOKEN,
}
#: Special ids never sampled on each token track (the sampler adds the request's invalid_ids).
TRACK_SPECIAL_IDS: dict[str, frozenset[int]] = {
    TRACK_SEQUENCE: SEQUENCE_SPECIAL_IDS,
    TRACK_STRUCTURE: STRUCTURE_SPECIAL_IDS,
    TRACK_SECONDARY_STRUCTURE: SS8_SPECIAL_IDS,
    TRACK_SASA: SASA_SPECIAL_IDS,
    TRACK_FUNCTION: FUNCTION_SPECIAL_IDS,
}
#: Number of ids of each track's vocabulary (valid input ids are 0..size-1).
TRACK_VOCAB_SIZE: dict[str, int] = {
    TRACK_SEQUENCE: SEQUENCE_VOCAB_SIZE,
    TRACK_STRUCTURE: STRUCTURE_VOCAB_SIZE,
    TRACK_SECONDARY_STRUCTURE: SS8_VOCAB_SIZE,
    TRACK_SASA: SASA_VOCAB_SIZE,
    TRACK_FUNCTION: FUNCTION_VOCAB_SIZE,
    TRACK_RESIDUE_ANNOTATION: RESIDUE_ANNOTATION_VOCAB_SIZE,
}
#: Track -> name of the matching field of :class:`~plmserve.models.esm3.model.ESM3Output`.
TRACK_LOGITS_FIELD: dict[str, str] = {
    TRACK_SEQUENCE: "sequence_logits",
    TRACK_STRUCTURE: "structure_logits",
    TRACK_SECONDARY_STRUCTURE: "secondary_structure_logits",
    TRACK_SASA: "sasa_logits",
    TRACK_FUNCTION: "function_logits",
    TRACK_RESIDUE_ANNOTATION: "residue_logits",
}

# --------------------------------------------------------------------------------------------
# Model sizes
# --------------------------------------------------------------------------------------------
#: ``esm3_sm_open_v1`` (esm/pretrained.py): d_model, n_heads, v_heads, n_layers.
ESM3_OPEN_SMALL = {"d_model": 1536, "n_heads": 24, "v_heads": 256, "n_layers": 48}
ESM3_OPEN_WEIGHTS_FILE = "esm3_sm_open_v1.pth"
#: Path of the trunk file inside the hub repository (snapshot layout).
ESM3_OPEN_WEIGHTS_REPO_PATH = "data/weights/esm3_sm_open_v1.pth"
