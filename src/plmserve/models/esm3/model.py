"""The ESM3 trunk: input encoding of all tracks, transformer stack, output heads.

A clean-room PyTorch port written from ``shared/specs/esm3-model.md`` (which describes the official
``esm`` package, ``esm/models/esm3.py``). Module and parameter names equal the official ones, so the
official ``esm3_sm_open_v1.pth`` state dict loads with ``strict=True`` (539 keys; 79 for the tiny
test model).

Public interface::

    model = ESM3.from_pretrained("path/to/esm3_sm_open_v1.pth" | "dir/", device="cpu", dtype=None)
    model = ESM3.dummy(ESM3Config.open_small(), seed=0)            # random weights
    out = model(sequence_tokens=seq)                                # every other track optional
    out.sequence_logits  # [B, L, 64] fp32

    inputs = default_inputs(num_residues=120, batch_size=1)        # the all-mask prompt (forward kwargs)

Inputs of :meth:`ESM3.forward` (all keyword-only, all optional, L tokens including BOS/EOS):

=============================  ==================  ========================================
argument                       shape / dtype       default when None
=============================  ==================  ========================================
sequence_tokens                [B, L] long         32 (<mask>)
structure_tokens               [B, L] long         4096 (mask); -1 also means mask
ss8_tokens                     [B, L] long         0
sasa_tokens                    [B, L] long         0
function_tokens                [B, L, 8] long      0
residue_annotation_tokens      [B, L, 16] long     0 (id 0 is skipped in the sum)
average_plddt                  broadcastable [B,L] 1.0
per_res_plddt                  [B, L] float        0.0
structure_coords               [B, L, A>=3, 3]     NaN (no frames); N, CA, C = atoms 0, 1, 2
chain_id                       [B, L] long         0
sequence_id                    [B, L]              None: no mask (official semantics)
attention_mask                 [B, L] bool         None; True = real token, False = padding
=============================  ==================  ========================================

``attention_mask`` is plmserve's addition: the official batch path does not mask padding, so a
right-padded row would attend to its padding. With ``attention_mask`` the padded positions are
invisible as keys (self- and geometric attention), and each real row gives the same logits as
the unpadded single run (to fp32 rounding).
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from plmserve.errors import InvalidInputError, ModelLoadError, WeightsNotFoundError
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.layers import RotaryEmbedding, TransformerStack, regression_head

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Config and outputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ESM3Config:
    """Architecture of an ESM3 trunk.

    Attributes:
        d_model: residual width d (1536 for esm3_sm_open_v1).
        n_heads: self-attention heads H (24); head width d/H, all of it rotary.
        v_heads: geometric-attention heads of block 0 (256).
        n_layers: transformer blocks (48).
        residue_annotation_vocab_size: rows of ``residue_embed`` and width of ``residue_head`` (1478).
    """

    d_model: int = 1536
    n_heads: int = 24
    v_heads: int = 256
    n_layers: int = 48
    residue_annotation_vocab_size: int = C.RESIDUE_ANNOTATION_VOCAB_SIZE

    @classmethod
    def open_small(cls) -> ESM3Config:
        """``esm3_sm_open_v1`` (1.4 B parameters)."""
        return cls(**C.ESM3_OPEN_SMALL)

    @classmethod
    def tiny(cls) -> ESM3Config:
        """The official tiny test model ``ESM3(64, 4, 4, 2)`` (1.05 M parameters)."""
        return cls(d_model=64, n_heads=4, v_heads=4, n_layers=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ESM3Config:
        """Build from a dict (e.g. ``config.json``); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ESM3Output:
    """Outputs of one forward pass; all float32 (cast from the compute dtype).

    Attributes:
        sequence_logits: [B, L, 64]; only ids 0..32 are vocabulary.
        structure_logits: [B, L, 4096]; VQ codes only (no special ids).
        secondary_structure_logits: [B, L, 11] (SS8 ids).
        sasa_logits: [B, L, 19] (SASA bin ids).
        function_logits: [B, L, 8, 260], depth-major (channel k*260 + token).
        residue_logits: [B, L, 1478], independent (multi-hot) logits per residue annotation.
        embeddings: [B, L, d], the **pre**-final-LayerNorm last hidden state (official semantics).
        hidden_states: the residual stream after each block ([B, L, d] each), only when requested.

    A logits field is ``None`` when ``forward(heads=...)`` did not ask for its track.
    """

    sequence_logits: torch.Tensor | None
    structure_logits: torch.Tensor | None
    secondary_structure_logits: torch.Tensor | None
    sasa_logits: torch.Tensor | None
    function_logits: torch.Tensor | None
    residue_logits: torch.Tensor | None
    embeddings: torch.Tensor
    hidden_states: list[torch.Tensor] | None = None

    def logits(self, track: str) -> torch.Tensor:
        """Logits of a track by its wire name (``sequence``, ``structure``, ``secondary_structure``,
        ``sasa``, ``function``, ``residue_annotation``)."""
        try:
            value = getattr(self, C.TRACK_LOGITS_FIELD[track])
        except KeyError:
            raise InvalidInputError(
                f"unknown track '{track}'; known tracks: {', '.join(C.TRACK_LOGITS_FIELD)}"
            ) from None
        if value is None:
            raise InvalidInputError(f"the '{track}' head was not computed (forward(heads=...) left it out)")
        return value


# --------------------------------------------------------------------------------------------
# Default inputs (the official "empty" prompt)
# --------------------------------------------------------------------------------------------


def default_tokens(track: str, num_residues: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The all-mask token track of a protein of ``num_residues`` residues, with BOS and EOS.

    Args:
        track: ``sequence`` | ``structure`` | ``secondary_structure`` | ``sasa`` | ``function`` |
            ``residue_annotation``.
        num_residues: L >= 0; the result has N = L + 2 tokens.

    Returns:
        long tensor [N] (token tracks), [N, 8] (function) or [N, 16] (residue_annotation):
        sequence ``[0, 32 ... 32, 2]``, structure ``[4098, 4096 ... 4096, 4097]``, all other tracks 0
        (0 is BOS, EOS, mask and pad there). Same as the official ``get_default_*_tokens``.

    Raises:
        InvalidInputError: unknown track or negative length.
    """
    if num_residues < 0:
        raise InvalidInputError(f"num_residues must be >= 0, got {num_residues}")
    if track not in C.TRACK_MASK_TOKEN:
        raise InvalidInputError(f"unknown track '{track}'; known tracks: {', '.join(C.TRACK_MASK_TOKEN)}")
    n = num_residues + 2
    shape: tuple[int, ...] = (n,)
    if track == C.TRACK_FUNCTION:
        shape = (n, C.FUNCTION_DEPTH)
    elif track == C.TRACK_RESIDUE_ANNOTATION:
        shape = (n, C.RESIDUE_ANNOTATION_DEPTH)
    out = torch.full(shape, C.TRACK_MASK_TOKEN[track], dtype=torch.long, device=device)
    out[0] = C.TRACK_BOS_TOKEN[track]
    out[-1] = C.TRACK_EOS_TOKEN[track]
    return out


def default_coordinates(num_residues: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates of a protein without structure: [L + 2, 37, 3] float32 filled with +inf
    (the sampler's mock in the official code; every residue is frameless)."""
    return torch.full((num_residues + 2, C.ATOM37_NUM_ATOMS, 3), float("inf"), device=device)


def per_residue_plddt_from_coordinates(coords: torch.Tensor) -> torch.Tensor:
    """``per_res_plddt`` as the official logits/generate path computes it.

    Args:
        coords: [..., L, A, 3] float; NaN/inf = missing.

    Returns:
        float32 [..., L]: 1.0 where **any** atom has three finite numbers, else 0.0. (This is not the
        frame mask: a residue with only a side-chain atom gets 1.0 but no frame.)
    """
    return torch.isfinite(coords).all(-1).any(-1).float()


def default_inputs(
    num_residues: int, batch_size: int = 1, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Forward kwargs of the all-mask prompt (what the official sampler's mocks pass).

    Returns a dict with ``sequence_tokens``, ``structure_tokens``, ``ss8_tokens``, ``sasa_tokens``
    ([B, N] long), ``function_tokens`` [B, N, 8], ``residue_annotation_tokens`` [B, N, 16],
    ``structure_coords`` [B, N, 37, 3] (+inf), ``average_plddt`` (0-dim 1.0) and
    ``per_res_plddt`` [B, N] (0.0), N = num_residues + 2. Edit a copy of the tracks you condition on.
    """
    out: dict[str, torch.Tensor] = {}
    for track, kw in (
        (C.TRACK_SEQUENCE, "sequence_tokens"),
        (C.TRACK_STRUCTURE, "structure_tokens"),
        (C.TRACK_SECONDARY_STRUCTURE, "ss8_tokens"),
        (C.TRACK_SASA, "sasa_tokens"),
        (C.TRACK_FUNCTION, "function_tokens"),
        (C.TRACK_RESIDUE_ANNOTATION, "residue_annotation_tokens"),
    ):
        t = default_tokens(track, num_residues, device)
        out[kw] = t.unsqueeze(0).expand(batch_size, *t.shape).clone()
    coords = default_coordinates(num_residues, device)
    out["structure_coords"] = coords.unsqueeze(0).expand(batch_size, *coords.shape).clone()
    out["average_plddt"] = torch.tensor(1.0, device=device)
    out["per_res_plddt"] = per_residue_plddt_from_coordinates(out["structure_coords"])
    return out


# --------------------------------------------------------------------------------------------
# Encoder and heads
# --------------------------------------------------------------------------------------------


def rbf(values: torch.Tensor, v_min: float = 0.0, v_max: float = 1.0, n_bins: int = C.PLDDT_RBF_BINS) -> torch.Tensor:
    """Gaussian radial basis features: exp(-((v - c_k) / sigma)^2), c_k = linspace(v_min, v_max, n),
    sigma = (v_max - v_min) / n (note: n, not n - 1). fp32; adds a trailing dim of ``n_bins``.

    Source: esm3-model.md §2 (official ``esm/utils/misc.rbf``)."""
    values = values.float()
    centers = torch.linspace(v_min, v_max, n_bins, device=values.device, dtype=torch.float32)
    sigma = (v_max - v_min) / n_bins
    z = (values[..., None] - centers) / sigma
    return torch.exp(-(z**2))


class EncodeInputs(nn.Module):
    """``encoder``: sum of the eight track encodings, [B, L, d].

    Order: sequence + average pLDDT + per-residue pLDDT + structure + SS8 + SASA + function
    (8 tables of width d/8, concatenated by depth) + residue annotations (EmbeddingBag sum,
    id 0 skipped). Source: esm3-model.md §2.
    """

    def __init__(self, d_model: int, residue_annotation_vocab_size: int = C.RESIDUE_ANNOTATION_VOCAB_SIZE):
        super().__init__()
        if d_model % C.FUNCTION_DEPTH:
            raise ValueError(f"d_model {d_model} must be divisible by {C.FUNCTION_DEPTH}")
        self.sequence_embed = nn.Embedding(C.SEQUENCE_HEAD_SIZE, d_model)
        self.plddt_projection = nn.Linear(C.PLDDT_RBF_BINS, d_model)
        self.structure_per_res_plddt_projection = nn.Linear(C.PLDDT_RBF_BINS, d_model)
        self.structure_tokens_embed = nn.Embedding(C.STRUCTURE_VOCAB_SIZE, d_model)
        self.ss8_embed = nn.Embedding(C.SS8_VOCAB_SIZE, d_model)
        self.sasa_embed = nn.Embedding(C.SASA_VOCAB_SIZE, d_model)
        self.function_embed = nn.ModuleList(
            nn.Embedding(C.FUNCTION_VOCAB_SIZE, d_model // C.FUNCTION_DEPTH, padding_idx=0)
            for _ in range(C.FUNCTION_DEPTH)
        )
        self.residue_embed = nn.EmbeddingBag(residue_annotation_vocab_size, d_model, mode="sum", padding_idx=0)

    def forward(
        self,
        sequence_tokens: torch.Tensor,
        structure_tokens: torch.Tensor,
        average_plddt: torch.Tensor,
        per_res_plddt: torch.Tensor,
        ss8_tokens: torch.Tensor,
        sasa_tokens: torch.Tensor,
        function_tokens: torch.Tensor,
        residue_annotation_tokens: torch.Tensor,
    ) -> torch.Tensor:
        wdtype = self.plddt_projection.weight.dtype
        x = self.sequence_embed(sequence_tokens)
        x = x + self.plddt_projection(rbf(average_plddt).to(wdtype))
        x = x + self.structure_per_res_plddt_projection(rbf(per_res_plddt).to(wdtype))
        x = x + self.structure_tokens_embed(structure_tokens)
        x = x + self.ss8_embed(ss8_tokens)
        x = x + self.sasa_embed(sasa_tokens)
        x = x + torch.cat([emb(function_tokens[..., k]) for k, emb in enumerate(self.function_embed)], dim=-1)
        lead = residue_annotation_tokens.shape[:-1]
        res = self.residue_embed(residue_annotation_tokens.reshape(-1, residue_annotation_tokens.shape[-1]))
        x = x + res.reshape(*lead, -1)
        return x


class OutputHeads(nn.Module):
    """``output_heads``: six Linear-GELU-LayerNorm-Linear heads on the post-norm state."""

    def __init__(self, d_model: int, residue_annotation_vocab_size: int = C.RESIDUE_ANNOTATION_VOCAB_SIZE):
        super().__init__()
        self.sequence_head = regression_head(d_model, C.SEQUENCE_HEAD_SIZE)
        self.structure_head = regression_head(d_model, C.STRUCTURE_HEAD_SIZE)
        self.ss8_head = regression_head(d_model, C.SS8_HEAD_SIZE)
        self.sasa_head = regression_head(d_model, C.SASA_HEAD_SIZE)
        self.function_head = regression_head(d_model, C.FUNCTION_HEAD_SIZE)
        self.residue_head = regression_head(d_model, residue_annotation_vocab_size)

    def forward(
        self, x: torch.Tensor, embeddings: torch.Tensor, heads: Sequence[str] | None = None
    ) -> ESM3Output:
        """All six heads, or only those of the tracks named in ``heads`` (wire names); the
        fields of the heads not computed are ``None``."""
        if heads is not None:
            unknown = [h for h in heads if h not in C.TRACK_LOGITS_FIELD]
            if unknown:
                raise InvalidInputError(
                    f"unknown track '{unknown[0]}'; known tracks: {', '.join(C.TRACK_LOGITS_FIELD)}"
                )
        wanted = set(C.TRACK_LOGITS_FIELD) if heads is None else set(heads)

        def run(track: str, head: nn.Module) -> torch.Tensor | None:
            return head(x).float() if track in wanted else None

        function_logits = run(C.TRACK_FUNCTION, self.function_head)
        if function_logits is not None:
            function_logits = function_logits.reshape(
                *function_logits.shape[:-1], C.FUNCTION_DEPTH, C.FUNCTION_VOCAB_SIZE
            )
        return ESM3Output(
            sequence_logits=run(C.TRACK_SEQUENCE, self.sequence_head),
            structure_logits=run(C.TRACK_STRUCTURE, self.structure_head),
            secondary_structure_logits=run(C.TRACK_SECONDARY_STRUCTURE, self.ss8_head),
            sasa_logits=run(C.TRACK_SASA, self.sasa_head),
            function_logits=function_logits,
            residue_logits=run(C.TRACK_RESIDUE_ANNOTATION, self.residue_head),
            embeddings=embeddings.float(),
        )


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

_TOKEN_TRACKS = (
    # (kwarg, wire name, vocabulary size, trailing dims)
    ("sequence_tokens", C.TRACK_SEQUENCE, C.SEQUENCE_HEAD_SIZE, 0),
    ("structure_tokens", C.TRACK_STRUCTURE, C.STRUCTURE_VOCAB_SIZE, 0),
    ("ss8_tokens", C.TRACK_SECONDARY_STRUCTURE, C.SS8_VOCAB_SIZE, 0),
    ("sasa_tokens", C.TRACK_SASA, C.SASA_VOCAB_SIZE, 0),
    ("function_tokens", C.TRACK_FUNCTION, C.FUNCTION_VOCAB_SIZE, 1),
    ("residue_annotation_tokens", C.TRACK_RESIDUE_ANNOTATION, None, 1),
)


class ESM3(nn.Module):
    """The ESM3 trunk (EvolutionaryScale, Hayes et al. 2024/2025), official state-dict layout.

    Sub-modules: ``encoder`` (:class:`EncodeInputs`), ``transformer``
    (:class:`~plmserve.models.esm3.layers.TransformerStack`), ``output_heads`` (:class:`OutputHeads`).

    Attributes:
        config: the :class:`ESM3Config`.
        is_dummy: True when built with random weights (``load_format=dummy``); servers must say so.
        use_autocast: on CUDA with bf16/fp16 weights, run under ``torch.autocast`` like the official
            code (LayerNorm and softmax in fp32). Default True.
    """

    def __init__(self, config: ESM3Config | None = None):
        super().__init__()
        self.config = config or ESM3Config.open_small()
        cfg = self.config
        self.encoder = EncodeInputs(cfg.d_model, cfg.residue_annotation_vocab_size)
        self.transformer = TransformerStack(cfg.d_model, cfg.n_heads, cfg.v_heads, cfg.n_layers, n_layers_geom=1)
        self.output_heads = OutputHeads(cfg.d_model, cfg.residue_annotation_vocab_size)
        self.is_dummy = False
        self.use_autocast = True
        self.name = "esm3"

    # ---- properties ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.encoder.sequence_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.sequence_embed.weight.dtype

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def dummy(
        cls,
        config: ESM3Config | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ESM3:
        """The real architecture with random weights (PyTorch default initialisation, seeded).

        Args:
            config: architecture; default the full ``esm3_sm_open_v1`` (1.4 B, 5.6 GB in fp32).
            seed: torch seed of the initialisation (the global RNG state is restored afterwards).
            device, dtype: where to build; default CPU / float32.
        """
        device = torch.device(device) if device is not None else torch.device("cpu")
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            with device:
                model = cls(config)
        if dtype is not None:
            model = model.to(dtype)
        model.is_dummy = True
        model.name = "esm3-dummy"
        return model.eval().requires_grad_(False)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        config: ESM3Config | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ESM3:
        """Build from an official state dict, loading it **strictly** (no missing or extra key).

        Args:
            state_dict: ``esm3_sm_open_v1.pth`` contents (or the tiny model's ``model.pth``).
            config: architecture; default inferred from the tensor shapes (:func:`infer_config`:
                ``n_heads`` only for a known ``d_model``, else ModelLoadError).
            device, dtype: target; default CPU and the file's dtype cast to float32.

        Raises:
            ModelLoadError: keys or shapes differ from the architecture (the message lists them).
        """
        if config is None:
            config = infer_config(state_dict)
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or torch.float32
        with torch.device("meta"):
            model = cls(config)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"the ESM3 weights do not match the {config} architecture: {exc}") from exc
        model._reset_rotary_buffers(torch.device("cpu"))
        # .to(bf16) also rounds the rotary inv_freq, exactly like the official GPU path (§9)
        model = model.to(device=device, dtype=dtype)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        config: ESM3Config | None = None,
    ) -> ESM3:
        """Load official weights from a file or a directory.

        ``path`` may be the ``.pth`` file itself, or a directory holding ``esm3_sm_open_v1.pth``,
        ``data/weights/esm3_sm_open_v1.pth`` (the hub snapshot layout) or a single ``*.pth``. An
        optional ``config.json`` next to the file (or in the directory) gives ``d_model``,
        ``n_heads``, ``v_heads``, ``n_layers`` (and ``residue_annotation_vocab_size``).

        Without ``config`` and ``config.json`` the architecture is read from the tensor shapes;
        ``n_heads`` cannot be, so weights whose ``d_model`` is not a known size are refused
        (:func:`infer_config`) instead of loaded with a guessed head count.

        Raises:
            WeightsNotFoundError: nothing loadable at ``path``.
            ModelLoadError: the file is not a state dict of this architecture; or ``n_heads``
                unknown (no config, no ``config.json``, ``d_model`` not a known size).
        """
        weights = find_weights_file(Path(path))
        if config is None:
            cfg_file = _find_config_file(Path(path), weights)
            if cfg_file is not None:
                config = ESM3Config.from_dict(json.loads(cfg_file.read_text()))
        try:
            try:  # memory-mapped: the 5.6 GB file is not copied when the dtype already fits
                state_dict = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be mapped
                state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt/unreadable file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"could not read ESM3 weights {weights}: {first}") from exc
        if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
            state_dict = state_dict["model"]
        if not isinstance(state_dict, dict):
            raise ModelLoadError(f"{weights} does not hold a state dict (found {type(state_dict).__name__})")
        model = cls.from_state_dict(state_dict, config=config, device=device, dtype=dtype)
        model.name = weights.stem
        return model

    def _reset_rotary_buffers(self, device: torch.device) -> None:
        """Recompute the non-persistent rotary ``inv_freq`` buffers (they are not in the file)."""
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                fresh = RotaryEmbedding(module.dim)
                module.inv_freq = fresh.inv_freq.to(device)
                module._cache = None

    # ---- forward ---------------------------------------------------------------------------
    def forward(
        self,
        *,
        sequence_tokens: torch.Tensor | None = None,
        structure_tokens: torch.Tensor | None = None,
        ss8_tokens: torch.Tensor | None = None,
        sasa_tokens: torch.Tensor | None = None,
        function_tokens: torch.Tensor | None = None,
        residue_annotation_tokens: torch.Tensor | None = None,
        average_plddt: torch.Tensor | float | None = None,
        per_res_plddt: torch.Tensor | None = None,
        structure_coords: torch.Tensor | None = None,
        chain_id: torch.Tensor | None = None,
        sequence_id: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_hidden_states: bool = False,
        heads: Sequence[str] | None = None,
    ) -> ESM3Output:
        """One forward pass over all tracks (see the module docstring for shapes and defaults).

        Semantics follow the official ``ESM3.forward`` (esm3-model.md §1): missing tracks take
        their defaults with batch 1 (they broadcast), structure tokens -1 become mask and are
        overridden from the sequence (BOS 4098, PAD 4099, EOS 4097, chain break 4100); only
        atoms 0..2 of ``structure_coords`` are used (frames for the block-0 geometric attention).

        Args:
            attention_mask: [B, L] bool, True = real token. Padding keys are hidden from every
                attention (and get no frame); padded positions' outputs are meaningless.
            return_hidden_states: also return the residual stream after every block.
            heads: compute only the output heads of these tracks (wire names, e.g.
                ``("sequence",)``); the other logits fields are ``None``. Default: all six.

        Returns:
            :class:`ESM3Output` (float32).

        Raises:
            InvalidInputError: no track given, track lengths/batch sizes disagree, or a token id
                outside its vocabulary (the message names the track, item and position).
        """
        length = _check_inputs(
            sequence_tokens=sequence_tokens,
            structure_tokens=structure_tokens,
            ss8_tokens=ss8_tokens,
            sasa_tokens=sasa_tokens,
            function_tokens=function_tokens,
            residue_annotation_tokens=residue_annotation_tokens,
            structure_coords=structure_coords,
            per_res_plddt=per_res_plddt,
            chain_id=chain_id,
            sequence_id=sequence_id,
            attention_mask=attention_mask,
            residue_vocab=self.config.residue_annotation_vocab_size,
        )

        dev = self.device

        def filled(t: torch.Tensor | None, value: float | int, shape: tuple[int, ...], dtype=torch.long) -> torch.Tensor:
            if t is None:
                return torch.full(shape, value, dtype=dtype, device=dev)
            return t.to(dev)

        sequence_tokens = filled(sequence_tokens, C.SEQUENCE_MASK_TOKEN, (1, length))
        ss8_tokens = filled(ss8_tokens, 0, (1, length))
        sasa_tokens = filled(sasa_tokens, 0, (1, length))
        if average_plddt is None:
            average_plddt = 1.0
        average_plddt = torch.as_tensor(average_plddt, device=dev).float()
        try:
            torch.broadcast_shapes(average_plddt.shape, (1, length))
        except RuntimeError:
            raise InvalidInputError(
                f"average_plddt of shape {list(average_plddt.shape)} does not broadcast to [B, {length}]; "
                "pass a scalar or a [B, 1] tensor"
            ) from None
        per_res_plddt = filled(per_res_plddt, 0.0, (1, length), torch.float32).float()
        chain_id = filled(chain_id, 0, (1, length))
        residue_annotation_tokens = filled(residue_annotation_tokens, 0, (1, length, C.RESIDUE_ANNOTATION_DEPTH))
        function_tokens = filled(function_tokens, 0, (1, length, C.FUNCTION_DEPTH))
        structure_coords = filled(structure_coords, float("nan"), (1, length, 3, 3), torch.float32)
        structure_tokens = filled(structure_tokens, C.STRUCTURE_MASK_TOKEN, (1, length))

        # structure-token override from the sequence (official order)
        structure_tokens = structure_tokens.masked_fill(structure_tokens == -1, C.STRUCTURE_MASK_TOKEN)
        seq_b, st_b = torch.broadcast_tensors(sequence_tokens, structure_tokens)
        structure_tokens = st_b
        for seq_id, st_id in (
            (C.SEQUENCE_BOS_TOKEN, C.STRUCTURE_BOS_TOKEN),
            (C.SEQUENCE_PAD_TOKEN, C.STRUCTURE_PAD_TOKEN),
            (C.SEQUENCE_EOS_TOKEN, C.STRUCTURE_EOS_TOKEN),
            (C.SEQUENCE_CHAINBREAK_TOKEN, C.STRUCTURE_CHAINBREAK_TOKEN),
        ):
            structure_tokens = structure_tokens.masked_fill(seq_b == seq_id, st_id)

        rot, trans, has_frame = _frames_fp32(structure_coords)
        if attention_mask is not None:
            attention_mask = attention_mask.to(dev, torch.bool)
            has_frame = has_frame & attention_mask

        ctx = nullcontext()
        if self.use_autocast and dev.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            ctx = torch.autocast("cuda", dtype=self.dtype)
        with ctx:
            x = self.encoder(
                sequence_tokens,
                structure_tokens,
                average_plddt,
                per_res_plddt,
                ss8_tokens,
                sasa_tokens,
                function_tokens,
                residue_annotation_tokens,
            )
            batch = x.shape[0]
            # broadcast per-position side inputs to the batch
            chain_b = chain_id.expand(batch, length)
            seq_id_b = sequence_id.to(dev).expand(batch, length) if sequence_id is not None else None
            has_frame = has_frame.expand(batch, length)
            rot = rot.expand(batch, length, 3, 3)
            trans = trans.expand(batch, length, 3)
            attn_mask = _self_attention_mask(seq_id_b, attention_mask, batch, length, dev)
            y, embeddings, hiddens = self.transformer(
                x, attn_mask, (rot, trans, has_frame), seq_id_b, chain_b, return_hidden_states
            )
            out = self.output_heads(y, embeddings, heads)
        if return_hidden_states:
            out.hidden_states = [h.float() for h in hiddens]
        return out

    @torch.no_grad()
    def logits(self, **inputs: Any) -> ESM3Output:
        """:meth:`forward` under ``torch.no_grad()`` (the official ``ESM3.logits`` path)."""
        return self.forward(**inputs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _frames_fp32(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from plmserve.models.esm3.layers import backbone_frames

    with torch.autocast(device_type=coords.device.type, enabled=False):
        return backbone_frames(coords)


def _self_attention_mask(
    sequence_id: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    batch: int,
    length: int,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean [B, 1, L, L] mask (True = may attend), or None when nothing is masked."""
    if sequence_id is None and attention_mask is None:
        return None
    allowed = torch.ones((batch, length, length), dtype=torch.bool, device=device)
    if sequence_id is not None:
        allowed = allowed & (sequence_id[:, :, None] == sequence_id[:, None, :])
    if attention_mask is not None:
        allowed = allowed & attention_mask.expand(batch, length)[:, None, :]
    # every query may see itself, so no row is empty (no NaN at padded positions)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)
    return allowed[:, None]


def _check_inputs(*, residue_vocab: int, **kw: torch.Tensor | None) -> int:
    """Validate shapes and token ranges; return L. Raises InvalidInputError."""
    order = (
        "sequence_tokens",
        "structure_tokens",
        "ss8_tokens",
        "sasa_tokens",
        "structure_coords",
        "function_tokens",
        "residue_annotation_tokens",
    )
    first = next((name for name in order if kw[name] is not None), None)
    if first is None:
        raise InvalidInputError(
            "ESM3 needs at least one of sequence, structure, ss8, sasa, coordinates, function or "
            "residue annotation tokens to know the length"
        )
    ref = kw[first]
    if ref.dim() < 2:
        raise InvalidInputError(f"{first} must have a batch dimension: expected [B, L, ...], got {list(ref.shape)}")
    length = ref.shape[1]
    batch_sizes = set()
    expected_dims = {
        "sequence_tokens": 2,
        "structure_tokens": 2,
        "ss8_tokens": 2,
        "sasa_tokens": 2,
        "function_tokens": 3,
        "residue_annotation_tokens": 3,
        "structure_coords": 4,
        "per_res_plddt": 2,
        "chain_id": 2,
        "sequence_id": 2,
        "attention_mask": 2,
    }
    for name, ndim in expected_dims.items():
        t = kw[name]
        if t is None:
            continue
        if t.dim() != ndim or t.shape[1] != length:
            raise InvalidInputError(
                f"{name} has shape {list(t.shape)}; expected {ndim} dimensions with length {length} "
                f"(from {first}) in dimension 1"
            )
        batch_sizes.add(t.shape[0])
    if len(batch_sizes - {1}) > 1:
        raise InvalidInputError(f"the inputs disagree on the batch size: {sorted(batch_sizes)}")
    if kw["function_tokens"] is not None and kw["function_tokens"].shape[2] != C.FUNCTION_DEPTH:
        raise InvalidInputError(f"function_tokens must be [B, L, 8], got {list(kw['function_tokens'].shape)}")
    if kw["structure_coords"] is not None:
        sc = kw["structure_coords"]
        if sc.shape[2] < 3 or sc.shape[3] != 3:
            raise InvalidInputError(f"structure_coords must be [B, L, A>=3, 3], got {list(sc.shape)}")
    for name, track, vocab, _ in _TOKEN_TRACKS:
        t = kw[name]
        if t is None:
            continue
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InvalidInputError(f"{name} must be integer token ids, got dtype {t.dtype}")
        vocab = vocab if vocab is not None else residue_vocab
        low = -1 if name == "structure_tokens" else 0
        bad = (t < low) | (t >= vocab)
        if bool(bad.any()):
            idx = bad.nonzero()[0].tolist()
            raise InvalidInputError(
                f"{track} token {int(t[tuple(idx)])} at item {idx[0]}, position {idx[1]} is outside "
                f"the vocabulary [{low}, {vocab - 1}]",
                item=idx[0],
                position=idx[1],
            )
    return length


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


#: attention heads of the ESM3 configurations whose ``d_model`` identifies them: the released
#: esm3_sm_open_v1 (1536 -> 24) and the official tiny test model ``ESM3(64, 4, 4, 2)``
KNOWN_N_HEADS: dict[int, int] = {C.ESM3_OPEN_SMALL["d_model"]: C.ESM3_OPEN_SMALL["n_heads"], 64: 4}


def infer_config(state_dict: dict[str, torch.Tensor]) -> ESM3Config:
    """Architecture from the tensor shapes of an official state dict.

    d_model, v_heads, n_layers and the residue vocabulary are read from the shapes. n_heads is not
    visible in the shapes (the fused QKV projection is ``3d x d`` for any head count): it is taken
    from :data:`KNOWN_N_HEADS` for a known ``d_model`` and otherwise never guessed.

    Raises:
        ModelLoadError: not an ESM3 state dict; or a ``d_model`` of no known configuration (pass
            ``config=ESM3Config(...)`` or put a ``config.json`` with ``n_heads`` next to the weights).
    """
    try:
        d = state_dict["encoder.sequence_embed.weight"].shape[1]
        v = state_dict["transformer.blocks.0.geom_attn.distance_scale_per_head"].shape[0]
        n_res = state_dict["encoder.residue_embed.weight"].shape[0]
    except KeyError as exc:
        raise ModelLoadError(f"not an ESM3 trunk state dict: key {exc} is missing") from exc
    prefix = "transformer.blocks."
    n_layers = 1 + max(int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix))
    if d not in KNOWN_N_HEADS:
        raise ModelLoadError(
            f"cannot tell the number of attention heads of these ESM3 weights (d_model={d}, {n_layers} layers; "
            f"known sizes: {', '.join(f'{k} -> {v} heads' for k, v in KNOWN_N_HEADS.items())}): put a config.json "
            '{"d_model": ..., "n_heads": ..., "v_heads": ..., "n_layers": ...} next to the weights, or pass '
            "config=ESM3Config(...)"
        )
    n_heads = KNOWN_N_HEADS[d]
    return ESM3Config(d_model=d, n_heads=n_heads, v_heads=v, n_layers=n_layers, residue_annotation_vocab_size=n_res)


def find_weights_file(path: Path) -> Path:
    """The ``.pth`` file at ``path`` (a file, or a directory in local or hub snapshot layout).

    Raises:
        WeightsNotFoundError: nothing found (the message lists the places searched).
    """
    if path.is_file():
        return path
    candidates = [
        path / C.ESM3_OPEN_WEIGHTS_FILE,
        path / C.ESM3_OPEN_WEIGHTS_REPO_PATH,
        path / "model.pth",
    ]
    for cand in candidates:
        if cand.is_file():
            return cand
    if path.is_dir():
        found = sorted(path.glob("*.pth"))
        if len(found) == 1:
            return found[0]
    raise WeightsNotFoundError(
        f"no ESM3 weights at {path}: looked for " + ", ".join(str(c) for c in candidates) + " and a single *.pth"
    )


def _find_config_file(path: Path, weights: Path) -> Path | None:
    snapshot_root = weights.parent.parent.parent if weights.parent.parts[-2:] == ("data", "weights") else None
    for cand in (
        weights.with_suffix(".json"),
        weights.parent / "config.json",
        path / "config.json" if path.is_dir() else None,
        snapshot_root / "config.json" if snapshot_root is not None else None,
    ):
        if cand is not None and cand.is_file():
            return cand
    return None


def parameter_count(config: ESM3Config) -> int:
    """Number of parameters of a config (closed form of esm3-model.md §7; 1,401,735,748 for
    esm3_sm_open_v1)."""
    d, v, n = config.d_model, config.v_heads, config.n_layers
    f = int(((8 / 3) * d + 255) // 256 * 256)
    r = config.residue_annotation_vocab_size
    encoder = (C.SEQUENCE_HEAD_SIZE + C.STRUCTURE_VOCAB_SIZE + C.SS8_VOCAB_SIZE + C.SASA_VOCAB_SIZE + r) * d
    encoder += 2 * (C.PLDDT_RBF_BINS * d + d) + C.FUNCTION_VOCAB_SIZE * d
    # per block: LN (2d) + qkv (3d^2) + out_proj (d^2) + q_ln, k_ln (2d) + FFN LN (2d) + FFN (3Fd)
    blocks = n * (4 * d * d + 6 * d + 3 * f * d)
    geom = 18 * v * d + d + 2 * v
    outs = (C.SEQUENCE_HEAD_SIZE, C.STRUCTURE_HEAD_SIZE, C.SS8_HEAD_SIZE, C.SASA_HEAD_SIZE, C.FUNCTION_HEAD_SIZE, r)
    heads = 6 * (d * d + 3 * d) + sum(outs) * (d + 1)
    return encoder + blocks + geom + d + heads
