"""ESM3 iterative generation (``generate_tensor``): raw tokens in, raw tokens out.

This module reimplements the iterative unmasking sampler of the official ``esm`` package
(``esm.utils.generation.iterative_sampling_tokens`` and ``esm.utils.sampling``, versions 3.2.x and
3.4.x behave the same) as described in ``shared/specs/esm3-api.md`` §6:

1. If ``condition_on_coordinates_only`` is set and coordinates are given, the structure tokens are
   dropped for the duration of the sampling.
2. ``T`` = the number of positions to fill: the mask positions of the target track (BOS/EOS
   excluded; for ``function`` a position is masked only if all 8 ids are 0), or, when the target
   track is absent, the number of non-special sequence tokens (mask counts as non-special;
   ``N - 2`` without a sequence). ``num_steps`` is lowered to ``T`` when ``0 < T < num_steps``.
   Absent tracks are replaced by all-mask mocks (BOS/EOS at the ends, ``+inf`` coordinates).
3. At each step ``t``: one trunk forward pass; effective temperature
   ``max(temperature - t / max(1, num_steps - 1), 0.001) ** 2`` with annealing (note the square),
   else ``temperature``; a candidate token at every masked position (special ids and
   ``invalid_ids`` never sampled, top-p on the un-tempered distribution, then
   ``softmax(logits / T_eff)`` and a multinomial draw, or argmax at temperature 0); the number of
   positions to commit is ``still_masked - int(f((t + 1) / num_steps) * T + 0.1)`` with
   ``f(x) = cos(pi x / 2)`` (cosine) or ``1 - x`` (linear), evaluated in float32 like the official
   code; the positions are drawn uniformly (``random``) or are the lowest-entropy ones
   (``entropy``; entropy of the masked, un-tempered distribution). Committed tokens are never
   re-masked.
4. The function track: top-p, ``log_softmax(logits / T_eff)`` over [N, 8, 260]; where the mean
   over the 8 depths of P(``<none>``) exceeds 0.05 all 8 ids become ``<none>`` (3); elsewhere the
   arg-max per depth with ``<none>`` excluded. ``invalid_ids`` are ignored for this track. The
   entropy used by the ``entropy`` strategy is -- as in the official code, which sums it twice --
   one value shared by every sampleable position, so ``torch.topk`` tie-breaking decides.
5. Output: the generated track; every other track and the coordinates are echoed from the input
   (``None`` stays ``None``), except the residue annotations, which come back as the input or as
   an all-zero [N, 16] tensor (official behaviour).

Differences from Forge, on purpose: an optional integer ``seed`` makes a call reproducible (one
``torch.Generator`` per request, so batching with other requests does not change the result);
invalid ids are masked *before* top-p (the 3.4.x order; identical at ``top_p = 1``); only the
rows committed in a step are sampled (the official loop samples every masked row and throws most
away; the committed tokens are the same, the order of random draws is ours); errors are
:mod:`plmserve.errors` exceptions (4xx over HTTP), never 5xx.

Main entry points: :func:`generate_tensor` (one request, no batching) and
:class:`GenerationSession` (one request driven step by step; the batching engine in
:mod:`plmserve.models.esm3.engine` stacks the sessions of equal length into one forward pass).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm3 import constants as C

__all__ = [
    "GenerationConfig",
    "ProteinTokens",
    "GenerationResult",
    "StepRecord",
    "GenerationSession",
    "generate_tensor",
    "run_trunk",
    "annealed_temperature",
    "remaining_masked_after_step",
    "empty_tokens",
    "SCHEDULES",
    "STRATEGIES",
    "MAX_NUM_STEPS",
]

SCHEDULES = ("cosine", "linear")
STRATEGIES = ("random", "entropy")
MAX_NUM_STEPS = 100
#: Highest accepted temperature: the annealed temperature is squared, and far beyond ~100 the
#: distribution is uniform anyway; 1e200 would overflow to inf (and NaN probabilities).
MAX_TEMPERATURE = 1e4
P_NONE_THRESHOLD = 0.05

#: tracks whose ids are single tokens per position (function is [N, 8])
_TOKEN_TRACKS = (C.TRACK_SEQUENCE, C.TRACK_STRUCTURE, C.TRACK_SECONDARY_STRUCTURE, C.TRACK_SASA)
#: width of each head's logits for the token tracks
_HEAD_SIZE = {
    C.TRACK_SEQUENCE: C.SEQUENCE_HEAD_SIZE,
    C.TRACK_STRUCTURE: C.STRUCTURE_HEAD_SIZE,
    C.TRACK_SECONDARY_STRUCTURE: C.SS8_HEAD_SIZE,
    C.TRACK_SASA: C.SASA_HEAD_SIZE,
}
#: track name -> forward() keyword of the trunk
_FORWARD_KWARG = {
    C.TRACK_SEQUENCE: "sequence_tokens",
    C.TRACK_STRUCTURE: "structure_tokens",
    C.TRACK_SECONDARY_STRUCTURE: "ss8_tokens",
    C.TRACK_SASA: "sasa_tokens",
    C.TRACK_FUNCTION: "function_tokens",
    "residue_annotations": "residue_annotation_tokens",
}
_NOT_SAMPLEABLE = ("coordinates", "residue_annotations", "residue_annotation")


# ---------------------------------------------------------------------------------------------
# Inputs and configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class ProteinTokens:
    """The tracks of one protein as tensors (no batch dimension); ``None`` = absent track.

    ``N = L + 2`` (BOS and EOS included). Every present track has first dimension N.

    Attributes:
        sequence: int64 [N]; BOS 0, EOS 2, mask 32.
        structure: int64 [N]; VQ codes 0..4095, mask 4096, EOS 4097, BOS 4098.
        secondary_structure: int64 [N]; SS8 ids 3..10, 0 = BOS/EOS/mask.
        sasa: int64 [N]; bin ids 3..18, 0 = BOS/EOS/mask.
        function: int64 [N, 8]; 0 = BOS/EOS/mask, 3 ``<none>``, 4..259 LSH tokens.
        residue_annotations: int64 [N, 16]; multi-hot label ids padded with 0.
        coordinates: float32 [N, A, 3] (atom37, A = 37; N, CA, C first), NaN = missing atom.
    """

    sequence: torch.Tensor | None = None
    structure: torch.Tensor | None = None
    secondary_structure: torch.Tensor | None = None
    sasa: torch.Tensor | None = None
    function: torch.Tensor | None = None
    residue_annotations: torch.Tensor | None = None
    coordinates: torch.Tensor | None = None

    _FIELDS = (
        "sequence",
        "structure",
        "secondary_structure",
        "sasa",
        "function",
        "residue_annotations",
        "coordinates",
    )

    def present(self) -> dict[str, torch.Tensor]:
        """The present tracks by field name."""
        return {f: getattr(self, f) for f in self._FIELDS if getattr(self, f) is not None}

    def __len__(self) -> int:
        """N, the common first dimension of the present tracks (0 when all are absent)."""
        for value in self.present().values():
            return int(value.shape[0])
        return 0

    def clone(self) -> "ProteinTokens":
        """A deep copy (tensors cloned)."""
        return ProteinTokens(
            **{f: (None if getattr(self, f) is None else getattr(self, f).clone()) for f in self._FIELDS}
        )

    @classmethod
    def from_lists(cls, data: Mapping[str, Any]) -> "ProteinTokens":
        """Build from JSON-like nested lists (the Forge wire ``inputs`` object).

        Accepts the wire key ``residue_annotation`` (singular) and the attribute name
        ``residue_annotations``. ``None`` inside ``coordinates`` means NaN. Missing keys and
        ``None`` values are absent tracks. The result is validated with :meth:`validate`.

        Raises:
            InvalidInputError: unknown key, non-integer token ids, ragged lists, wrong shapes,
                inconsistent track lengths, ids out of range (message names the track and the
                position).
        """
        known = set(cls._FIELDS) | {"residue_annotation"}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise InvalidInputError(
                f"inputs: unknown track(s) {unknown}; known tracks: {sorted(known - {'residue_annotations'})}"
            )
        out = cls()
        for key, value in data.items():
            if value is None:
                continue
            name = "residue_annotations" if key == "residue_annotation" else key
            if name == "coordinates":
                setattr(out, name, _coordinates_tensor(value))
            else:
                setattr(out, name, _token_tensor(name, value))
        out.validate()
        return out

    def logits_kwargs(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Batch-1 keyword arguments of :meth:`plmserve.models.esm3.ESM3.logits` (and ``forward``)
        for these tokens, built as the official ``ESM3.logits`` builds them from an
        ``ESMProteinTensor`` (the Forge ``/api/v1/logits`` path)::

            kwargs = ProteinTokens.from_lists(wire_inputs).logits_kwargs()
            out = model.logits(**kwargs)          # out.sequence_logits: [1, N, 64] ...

        Returns:
            ``sequence_tokens``, ``structure_tokens``, ``ss8_tokens``, ``sasa_tokens`` int64
            ``[1, N]``, ``function_tokens`` int64 ``[1, N, 8]``, ``residue_annotation_tokens``
            int64 ``[1, N, 16]`` (present tracks only; absent ones take the trunk's defaults);
            with coordinates ``structure_coords`` float32 ``[1, N, 37, 3]`` (NaN = missing atom)
            and ``per_res_plddt`` float32 ``[1, N]`` (1.0 where any atom is finite), else
            ``per_res_plddt`` zeros; ``average_plddt`` = 1.0. On ``device`` (default CPU).
            Source: ``esm3-model.md`` §1 (official ``ESM3.logits``).
        """
        from plmserve.models.esm3.model import per_residue_plddt_from_coordinates

        names = {
            "sequence": "sequence_tokens",
            "structure": "structure_tokens",
            "secondary_structure": "ss8_tokens",
            "sasa": "sasa_tokens",
            "function": "function_tokens",
            "residue_annotations": "residue_annotation_tokens",
        }
        kwargs: dict[str, torch.Tensor] = {}
        for name, kwarg in names.items():
            value = getattr(self, name)
            if value is not None:
                kwargs[kwarg] = value.to(torch.long).unsqueeze(0)
        if self.coordinates is not None:
            coords = self.coordinates.to(torch.float32).unsqueeze(0)
            kwargs["structure_coords"] = coords
            kwargs["per_res_plddt"] = per_residue_plddt_from_coordinates(coords)
        else:
            kwargs["per_res_plddt"] = torch.zeros(1, len(self), dtype=torch.float32)
        kwargs["average_plddt"] = torch.tensor(1.0)
        return {k: v.to(device) for k, v in kwargs.items()} if device is not None else kwargs

    def to_lists(self) -> dict[str, Any]:
        """The Forge wire form: all seven keys, ``None`` for absent tracks, NaN/inf -> ``None``
        in coordinates, key ``residue_annotation`` (singular)."""
        out: dict[str, Any] = {}
        for f in self._FIELDS:
            key = "residue_annotation" if f == "residue_annotations" else f
            value = getattr(self, f)
            if value is None:
                out[key] = None
            elif f == "coordinates":
                arr = value.detach().to(torch.float32).cpu()
                out[key] = [
                    [[(float(x) if math.isfinite(x) else None) for x in atom] for atom in row]
                    for row in arr.tolist()
                ]
            else:
                out[key] = value.detach().cpu().tolist()
        return out

    def validate(self, residue_vocab_size: int = C.RESIDUE_ANNOTATION_VOCAB_SIZE) -> None:
        """Check shapes, lengths and id ranges.

        Raises:
            InvalidInputError: no track at all; a track with the wrong number of dimensions;
                tracks of different lengths N; N < 3; an id outside the track's vocabulary
                (``sequence`` 0..32, ``structure`` 0..4100, ``secondary_structure`` 0..10,
                ``sasa`` 0..18, ``function`` 0..259, ``residue_annotation`` 0..vocab-1).
        """
        tracks = self.present()
        if not tracks:
            raise InvalidInputError("inputs: no track given; send at least one of " + ", ".join(self._FIELDS))
        expected_dims = {
            "sequence": 1,
            "structure": 1,
            "secondary_structure": 1,
            "sasa": 1,
            "function": 2,
            "residue_annotations": 2,
            "coordinates": 3,
        }
        lengths = {}
        for name, value in tracks.items():
            wire = _wire(name)
            if value.dim() != expected_dims[name]:
                raise InvalidInputError(
                    f"inputs.{wire}: expected {expected_dims[name]} dimension(s), got shape {list(value.shape)}"
                )
            lengths[wire] = int(value.shape[0])
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
            raise InvalidInputError(
                f"inputs: inconsistent track lengths ({detail}); every track must have N = L + 2 rows "
                "(BOS and EOS included)"
            )
        n = next(iter(lengths.values()))
        if n < 3:
            raise InvalidInputError(f"inputs: length N = {n} is too short; N = L + 2 needs at least one residue")
        if self.function is not None and self.function.shape[1] != C.FUNCTION_DEPTH:
            raise InvalidInputError(
                f"inputs.function: expected [N, {C.FUNCTION_DEPTH}] ids per position, got shape {list(self.function.shape)}"
            )
        if self.residue_annotations is not None and self.residue_annotations.shape[1] != C.RESIDUE_ANNOTATION_DEPTH:
            raise InvalidInputError(
                f"inputs.residue_annotation: expected [N, {C.RESIDUE_ANNOTATION_DEPTH}] ids per position, "
                f"got shape {list(self.residue_annotations.shape)}"
            )
        if self.coordinates is not None and (self.coordinates.shape[1] < 3 or self.coordinates.shape[2] != 3):
            raise InvalidInputError(
                f"inputs.coordinates: expected [N, 37, 3] (atom37; at least N, CA, C), got shape "
                f"{list(self.coordinates.shape)}"
            )
        sizes = dict(C.TRACK_VOCAB_SIZE)
        sizes["residue_annotations"] = residue_vocab_size
        for name, value in tracks.items():
            if name == "coordinates":
                continue
            size = sizes["residue_annotation" if name == "residue_annotations" else name]
            bad = (value < 0) | (value >= size)
            if bool(bad.any()):
                where = bad.nonzero()[0].tolist()
                pos = where[0]
                loc = f"position {pos}" + (f", depth {where[1]}" if len(where) > 1 else "")
                raise InvalidInputError(
                    f"inputs.{_wire(name)}: token id {int(value[tuple(where)])} at {loc} is out of range "
                    f"(valid ids are 0..{size - 1})",
                    position=pos,
                )


def _wire(name: str) -> str:
    return "residue_annotation" if name == "residue_annotations" else name


def _token_tensor(name: str, value: Any) -> torch.Tensor:
    wire = _wire(name)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            raise InvalidInputError(f"inputs.{wire}: token ids must be integers, got dtype {value.dtype}")
        return value.to(torch.long)
    try:
        tensor = torch.tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InvalidInputError(
            f"inputs.{wire}: expected a (nested) list of integer token ids with equal row lengths ({exc})"
        ) from None
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        # find the first non-integer entry for the message
        flat = tensor.reshape(-1).tolist()
        idx = next((i for i, x in enumerate(flat) if isinstance(x, bool) or float(x) != int(x)), None)
        if idx is None and tensor.dtype != torch.bool:
            return tensor.to(torch.long)  # e.g. 5.0 -> 5
        raise InvalidInputError(f"inputs.{wire}: token ids must be integers (entry {idx if idx is not None else 0})")
    return tensor.to(torch.long)


def _coordinates_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(torch.float32)

    def conv(x):
        if isinstance(x, list):
            return [conv(y) for y in x]
        if x is None:
            return math.nan
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise InvalidInputError(f"inputs.coordinates: expected numbers or null, got {x!r}")
        return float(x)

    try:
        return torch.tensor(conv(value), dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(
            f"inputs.coordinates: expected an [N, 37, 3] nested list of numbers or null ({exc})"
        ) from None


def logits_kwargs_from_wire(inputs: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Forge wire tokens (the JSON ``inputs`` object: ``sequence``, ``structure``,
    ``secondary_structure``, ``sasa``, ``function``, ``residue_annotation``, ``coordinates``) ->
    the keyword arguments of :meth:`plmserve.models.esm3.ESM3.logits`, validated.

    Shapes and defaults: :meth:`ProteinTokens.logits_kwargs`.

    Raises:
        InvalidInputError: see :meth:`ProteinTokens.from_lists` (names the track and position).
    """
    return ProteinTokens.from_lists(inputs).logits_kwargs(device)


def empty_tokens(length: int) -> ProteinTokens:
    """An all-masked prompt of ``length`` residues (N = length + 2), as ``ESMProteinTensor.empty``:
    sequence ``[0] + [32]*L + [2]``, structure ``[4098] + [4096]*L + [4097]``, ss8/sasa/function/
    residue annotations all 0, no coordinates.

    Raises:
        InvalidParameterError: ``length`` < 1.
    """
    if length < 1:
        raise InvalidParameterError(f"length must be at least 1 residue, got {length}")
    n = length + 2
    seq = torch.full((n,), C.SEQUENCE_MASK_TOKEN, dtype=torch.long)
    seq[0], seq[-1] = C.SEQUENCE_BOS_TOKEN, C.SEQUENCE_EOS_TOKEN
    struct = torch.full((n,), C.STRUCTURE_MASK_TOKEN, dtype=torch.long)
    struct[0], struct[-1] = C.STRUCTURE_BOS_TOKEN, C.STRUCTURE_EOS_TOKEN
    return ProteinTokens(
        sequence=seq,
        structure=struct,
        secondary_structure=torch.zeros(n, dtype=torch.long),
        sasa=torch.zeros(n, dtype=torch.long),
        function=torch.zeros(n, C.FUNCTION_DEPTH, dtype=torch.long),
        residue_annotations=torch.zeros(n, C.RESIDUE_ANNOTATION_DEPTH, dtype=torch.long),
    )


@dataclass
class GenerationConfig:
    """How to generate one track (the ``generate_tensor`` request fields).

    Defaults are the Forge *server* defaults for omitted fields (esm3-api.md §2).

    Attributes:
        track: one of ``sequence``, ``structure``, ``secondary_structure``, ``sasa``, ``function``.
        num_steps: decoding iterations, 1..100 (lowered to the number of masked positions).
        temperature: sampling temperature >= 0.
        temperature_annealing: anneal as ``max(temperature - t/max(1, num_steps-1), 0.001)**2``.
        top_p: nucleus cutoff in (0, 1] on the un-tempered distribution.
        schedule: ``cosine`` or ``linear`` (how many positions to unmask per step).
        strategy: ``random`` or ``entropy`` (which positions to unmask).
        invalid_ids: token ids never to sample (ignored for ``function``).
        condition_on_coordinates_only: drop structure tokens while sampling if coordinates are given.
    """

    track: str
    num_steps: int = 20
    temperature: float = 0.5
    temperature_annealing: bool = True
    top_p: float = 1.0
    schedule: str = "cosine"
    strategy: str = "random"
    invalid_ids: Sequence[int] = field(default_factory=tuple)
    condition_on_coordinates_only: bool = True

    def validate(self) -> None:
        """Check every field.

        Raises:
            InvalidParameterError: unknown track/schedule/strategy, ``num_steps`` outside
                [1, 100], ``top_p`` outside (0, 1], negative or non-finite temperature, every id of
                the track invalid, or ``function`` at temperature 0 without annealing (the
                official sampler fails there with NaN logits).
        """
        if self.track in _NOT_SAMPLEABLE:
            raise InvalidParameterError(f"Iterative sampling {self.track} is not supported.")
        if self.track not in C.SAMPLEABLE_TRACKS:
            raise InvalidParameterError(
                f"unknown track '{self.track}'; allowed: {', '.join(C.SAMPLEABLE_TRACKS)}"
            )
        if self.schedule not in SCHEDULES:
            raise InvalidParameterError(f"unknown schedule '{self.schedule}'; allowed: {', '.join(SCHEDULES)}")
        if self.strategy not in STRATEGIES:
            raise InvalidParameterError(f"unknown strategy '{self.strategy}'; allowed: {', '.join(STRATEGIES)}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int):
            raise InvalidParameterError(f"num_steps must be an integer, got {self.num_steps!r}")
        if not 1 <= self.num_steps <= MAX_NUM_STEPS:
            raise InvalidParameterError(f"num_steps must be in [1, {MAX_NUM_STEPS}], got {self.num_steps}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise InvalidParameterError(
                f"temperature must be a finite number in [0, {MAX_TEMPERATURE:g}], got {self.temperature}")
        for i, tok in enumerate(self.invalid_ids):
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise InvalidParameterError(f"invalid_ids[{i}]: expected an integer token id, got {tok!r}")
        if self.track == C.TRACK_FUNCTION:
            if self.temperature == 0 and not self.temperature_annealing:
                raise InvalidParameterError(
                    "the function track cannot be sampled at temperature 0 without annealing "
                    "(log_softmax(logits / 0) is undefined); use a temperature > 0"
                )
        elif not allowed_ids(self.track, self.invalid_ids):
            raise InvalidParameterError(
                f"invalid_ids excludes every token of the {self.track} track; nothing left to sample"
            )


def allowed_ids(track: str, invalid_ids: Sequence[int] = ()) -> list[int]:
    """Ids that may be sampled on a token track: the head's ids that are in the vocabulary,
    minus the track's special ids, minus ``invalid_ids`` (sorted)."""
    vocab = min(C.TRACK_VOCAB_SIZE[track], _HEAD_SIZE[track])
    bad = set(C.TRACK_SPECIAL_IDS[track]) | {int(i) for i in invalid_ids}
    return [i for i in range(vocab) if i not in bad]


# ---------------------------------------------------------------------------------------------
# Schedule and temperature
# ---------------------------------------------------------------------------------------------


def annealed_temperature(step: int, num_steps: int, temperature: float) -> float:
    """``max(temperature - step / max(1, num_steps - 1), 0.001) ** 2`` (Python float64), the
    official ``_get_annealed_temperature``. ``step`` is 0-based."""
    ratio = step / max(1, num_steps - 1)
    return max(temperature - ratio, 0.001) ** 2


@functools.lru_cache(maxsize=65536)
def remaining_masked_after_step(step: int, num_steps: int, total: int, schedule: str) -> int:
    """Positions still masked after 0-based ``step``: ``int(f((step+1)/num_steps) * total + 0.1)``
    with ``f(x) = cos(pi x / 2)`` (cosine) or ``1 - x`` (linear), in float32 torch arithmetic as the
    official sampler (so the integer truncation matches it exactly)."""
    x = torch.tensor((step + 1) / num_steps)  # float32
    if schedule == "cosine":
        frac = torch.cos(x * math.pi * 0.5)
    elif schedule == "linear":
        frac = 1 - x
    else:
        raise InvalidParameterError(f"unknown schedule '{schedule}'; allowed: {', '.join(SCHEDULES)}")
    return int((frac * torch.tensor(int(total)) + 0.1).int())


# ---------------------------------------------------------------------------------------------
# Trunk call
# ---------------------------------------------------------------------------------------------


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


_ACCEPTS: dict[tuple[type, str], bool] = {}


def _forward_accepts(model: Any, name: str) -> bool:
    """Whether the trunk's ``forward`` takes keyword ``name`` (cached per model class)."""
    key = (type(model), name)
    if key not in _ACCEPTS:
        import inspect

        try:
            params = inspect.signature(model.forward if hasattr(model, "forward") else model).parameters
            _ACCEPTS[key] = name in params
        except (TypeError, ValueError):
            _ACCEPTS[key] = False
    return _ACCEPTS[key]


def run_trunk(model: Any, inputs: Mapping[str, torch.Tensor], tracks: Sequence[str] | None = None) -> Any:
    """One forward pass of the ESM3 trunk under ``torch.no_grad`` (the trunk itself runs bf16
    weights on CUDA under autocast, as the official ``ESM3.logits``).

    Args:
        model: callable with the keyword arguments of ``ESM3.forward`` returning an object with
            ``sequence_logits`` [B,N,64], ``structure_logits`` [B,N,4096],
            ``secondary_structure_logits`` [B,N,11], ``sasa_logits`` [B,N,19],
            ``function_logits`` [B,N,8,260] (or [B,N,2080]), ``residue_logits``, ``embeddings``.
        inputs: batched keyword arguments (CPU tensors; moved to the model's device).
        tracks: the tracks whose logits are needed; passed as ``heads=`` when the trunk's
            ``forward`` accepts that keyword (it may then skip the other output heads).
    """
    device = _model_device(model)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if tracks is not None and _forward_accepts(model, "heads"):
        kwargs["heads"] = tuple(tracks)
    with torch.no_grad():
        return model(**kwargs)


def track_logits(output: Any, track: str) -> torch.Tensor:
    """The logits of ``track`` from a trunk output, as float32 [B, N, V] (or [B, N, 8, 260])."""
    logits = getattr(output, C.TRACK_LOGITS_FIELD[track])
    if track == C.TRACK_FUNCTION and logits.dim() == 3:
        logits = logits.reshape(*logits.shape[:2], C.FUNCTION_DEPTH, C.FUNCTION_VOCAB_SIZE)
    return logits.float()


# ---------------------------------------------------------------------------------------------
# Per-request state machine
# ---------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """What one decoding step did (for tests and diagnostics).

    Attributes:
        step: 0-based step index.
        temperature: effective temperature used.
        still_masked_before / still_masked_after: masked positions of the track before/after.
        committed_positions: sorted indices (into the N-long track) written in this step.
    """

    step: int
    temperature: float
    still_masked_before: int
    still_masked_after: int
    committed_positions: list[int]

    @property
    def committed(self) -> int:
        return len(self.committed_positions)


@dataclass
class GenerationResult:
    """Output of :func:`generate_tensor`.

    Attributes:
        tokens: the output tracks (generated track filled in; see the module docstring for echo rules).
        num_steps: effective number of steps (after lowering to the number of masked positions).
        total_to_sample: ``T``, the number of positions the schedule distributes.
        steps: one :class:`StepRecord` per step.
        seed: the seed of the request's random generator.
    """

    tokens: ProteinTokens
    num_steps: int
    total_to_sample: int
    steps: list[StepRecord]
    seed: int


def _new_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


class GenerationSession:
    """One ``generate_tensor`` request, advanced one decoding step at a time.

    Usage: while not ``session.done``: run the trunk on ``session.forward_inputs()`` (possibly
    stacked with other sessions of the same length N) and call ``session.step(logits_row)`` with
    this request's logits of the target track ([N, V], or [N, 8, 260] for ``function``).
    :func:`generate_tensor` does exactly this for a single request.

    Args:
        tokens: the prompt (validated here).
        config: the generation config (validated here).
        seed: seed of this request's ``torch.Generator`` (random when ``None``).
        residue_vocab_size: size of the model's residue-annotation vocabulary (id range check).

    Raises:
        InvalidParameterError / InvalidInputError: bad config or prompt.
    """

    def __init__(
        self,
        tokens: ProteinTokens,
        config: GenerationConfig,
        *,
        seed: int | None = None,
        residue_vocab_size: int = C.RESIDUE_ANNOTATION_VOCAB_SIZE,
    ):
        config.validate()
        tokens.validate(residue_vocab_size)
        self.config = config
        self.input = tokens
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise InvalidParameterError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        self.seed = _new_seed() if seed is None else int(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self.track = config.track
        self.length = n = len(tokens)
        self.steps: list[StepRecord] = []
        self.t = 0

        work = tokens.clone()
        if config.condition_on_coordinates_only and work.coordinates is not None:
            work.structure = None

        # T: positions to fill
        target = getattr(work, self.track)
        if target is None:
            if work.sequence is None:
                total = n - 2
            else:
                special = torch.zeros(n, dtype=torch.bool)
                for sid in C.SEQUENCE_SPECIAL_IDS:
                    if sid != C.SEQUENCE_MASK_TOKEN:
                        special |= work.sequence == sid
                total = int((~special).sum())
        else:
            total = int(self._is_mask(target).sum())
        self.total_to_sample = total
        self.num_steps = total if 0 < total < config.num_steps else config.num_steps

        # mocks for absent tracks
        def mock(track: str, shape: tuple[int, ...]) -> torch.Tensor:
            t = torch.full(shape, C.TRACK_MASK_TOKEN[track], dtype=torch.long)
            t[0] = C.TRACK_BOS_TOKEN[track]
            t[-1] = C.TRACK_EOS_TOKEN[track]
            return t

        self.work = {
            "sequence": work.sequence if work.sequence is not None else mock(C.TRACK_SEQUENCE, (n,)),
            "structure": work.structure if work.structure is not None else mock(C.TRACK_STRUCTURE, (n,)),
            "secondary_structure": work.secondary_structure
            if work.secondary_structure is not None
            else mock(C.TRACK_SECONDARY_STRUCTURE, (n,)),
            "sasa": work.sasa if work.sasa is not None else mock(C.TRACK_SASA, (n,)),
            "function": work.function
            if work.function is not None
            else mock(C.TRACK_FUNCTION, (n, C.FUNCTION_DEPTH)),
            "residue_annotations": work.residue_annotations
            if work.residue_annotations is not None
            else torch.zeros(n, C.RESIDUE_ANNOTATION_DEPTH, dtype=torch.long),
        }
        if work.coordinates is not None:
            coords = work.coordinates.to(torch.float32)
            self.per_res_plddt = coords.isfinite().all(-1).any(-1).to(torch.float32)
            self.backbone = coords[:, :3, :].clone()
        else:
            self.per_res_plddt = torch.zeros(n, dtype=torch.float32)
            self.backbone = torch.full((n, 3, 3), math.inf, dtype=torch.float32)
        self._disallowed_bias: torch.Tensor | None = None
        if self.track != C.TRACK_FUNCTION:
            bias = torch.full((_HEAD_SIZE[self.track],), -math.inf)
            bias[allowed_ids(self.track, config.invalid_ids)] = 0.0
            if bool(torch.isinf(bias).any()):
                self._disallowed_bias = bias

    # -- helpers ---------------------------------------------------------------------------

    def _is_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N] bool: mask positions of the target track, BOS and EOS excluded."""
        mask_id = C.TRACK_MASK_TOKEN[self.track]
        if self.track == C.TRACK_FUNCTION:
            m = (tokens == mask_id).all(-1)
        else:
            m = tokens == mask_id
        m = m.clone()
        m[0] = False
        m[-1] = False
        return m

    @property
    def done(self) -> bool:
        """True when every step has run."""
        return self.t >= self.num_steps

    def forward_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the trunk for this request, each with a batch dimension of 1:
        token tracks [1,N] / [1,N,8] / [1,N,16] int64, ``structure_coords`` [1,N,3,3] float32
        (non-finite = missing), ``per_res_plddt`` [1,N] float32, ``average_plddt`` 0-dim 1.0 (as
        the official generate path)."""
        out = {_FORWARD_KWARG[k]: v.unsqueeze(0) for k, v in self.work.items()}
        out["structure_coords"] = self.backbone.unsqueeze(0)
        out["per_res_plddt"] = self.per_res_plddt.unsqueeze(0)
        out["average_plddt"] = torch.tensor(1.0)
        return out

    def temperature_at(self, step: int) -> float:
        """Effective temperature of 0-based ``step``."""
        if self.config.temperature_annealing:
            return annealed_temperature(step, self.num_steps, float(self.config.temperature))
        return float(self.config.temperature)

    # -- one step --------------------------------------------------------------------------

    def step(self, logits: torch.Tensor) -> StepRecord:
        """Advance one decoding step with this request's logits of the target track.

        Only the rows that are committed in this step are sampled (candidates elsewhere would be
        thrown away): with ``random`` the positions are drawn first, with ``entropy`` they are the
        lowest-entropy masked positions. The committed tokens are exactly those the official
        loop would commit; only the order of random draws differs (our seeds are our own).

        Args:
            logits: float [N, V] for token tracks (V = head width: 64, 4096, 11, 19) or
                [N, 8, 260] for ``function`` (any device/dtype; sampling runs in float32 on CPU).

        Raises:
            InvalidInputError: "Cannot sample <track> when input has no masks." (the official
                message) when the track has no masked position left.
            RuntimeError: called after the last step.
        """
        if self.done:
            raise RuntimeError("generation already finished")
        t = self.t
        track = self.track
        current = self.work[track]
        is_mask = self._is_mask(current)
        if not bool(is_mask.any()):
            raise InvalidInputError(f"Cannot sample {track} when input has no masks.")
        temperature = self.temperature_at(t)
        positions = is_mask.nonzero().squeeze(-1)  # sorted
        still = int(positions.numel())
        remaining = remaining_masked_after_step(t, self.num_steps, self.total_to_sample, self.config.schedule)
        n_commit = max(0, min(still, still - remaining))

        if n_commit == 0:
            chosen = torch.zeros(0, dtype=torch.long)
        elif self.config.strategy == "entropy":
            rows_logits = self._prepare(_rows(logits, positions))
            if track == C.TRACK_FUNCTION:
                log_p = self._function_log_probs(rows_logits, temperature)
                # official quirk: the per-position entropies are summed over positions too, so
                # every sampleable position has the same score and torch.topk breaks the tie
                entropy = _categorical_entropy(log_p).sum(-1).sum().expand(still)
            else:
                entropy = _categorical_entropy(rows_logits)
            scores = torch.full((1, self.length), torch.finfo(torch.float32).max, dtype=torch.float32)
            scores[0, positions] = entropy
            _, idx = scores.topk(n_commit, dim=-1, largest=False)
            chosen, _ = idx[0].sort()
            rows = torch.searchsorted(positions, chosen)
            if track == C.TRACK_FUNCTION:
                candidates = self._function_candidates(log_p[rows])
            else:
                candidates = self._sample_rows(rows_logits[rows], temperature)
        else:
            perm = torch.randperm(still, generator=self.generator)
            chosen, _ = positions[perm[:n_commit]].sort()
            rows_logits = self._prepare(_rows(logits, chosen))
            if track == C.TRACK_FUNCTION:
                candidates = self._function_candidates(self._function_log_probs(rows_logits, temperature))
            else:
                candidates = self._sample_rows(rows_logits, temperature)

        if chosen.numel():
            new = current.clone()
            new[chosen] = candidates
            self.work[track] = new
        record = StepRecord(
            step=t,
            temperature=temperature,
            still_masked_before=still,
            still_masked_after=still - int(chosen.numel()),
            committed_positions=chosen.tolist(),
        )
        self.steps.append(record)
        self.t += 1
        return record

    def _prepare(self, logits: torch.Tensor) -> torch.Tensor:
        """Disallowed ids -> -inf (token tracks), then the top-p filter; returns a new tensor."""
        if self.track != C.TRACK_FUNCTION and self._disallowed_bias is not None:
            logits = logits + self._disallowed_bias
        top_p = float(self.config.top_p)
        if top_p < 1.0:
            logits = _top_p_mask(logits, top_p)
        return logits

    def _sample_rows(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """One token per row of prepared logits [M, V]: argmax at temperature 0, else a draw
        from ``softmax(logits / temperature)`` with this request's generator."""
        if temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        return _sample_categorical(probs, self.generator)

    @staticmethod
    def _function_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """``log_softmax(logits / T)`` [M, 8, 260] with ``<none>`` set to -inf at the positions
        that are not ``<none>`` (mean over depths of P(``<none>``) <= 0.05)."""
        log_p = torch.log_softmax(logits / temperature, dim=-1)
        none = C.FUNCTION_NONE_TOKEN
        where_none = log_p[..., none].exp().mean(-1) > P_NONE_THRESHOLD
        log_p[~where_none, :, none] = -math.inf
        return log_p

    @staticmethod
    def _function_candidates(log_p: torch.Tensor) -> torch.Tensor:
        """[M, 8] ids: all ``<none>`` where the position predicts none, else argmax per depth."""
        none = C.FUNCTION_NONE_TOKEN
        where_none = torch.isfinite(log_p[..., none]).any(-1)
        ids = log_p.argmax(-1)
        ids[where_none] = none
        return ids

    def result(self) -> GenerationResult:
        """The output once :attr:`done` (echo rules of the module docstring)."""
        if not self.done:
            raise RuntimeError("generation not finished")
        out = self.input.clone()
        setattr(out, self.track, self.work[self.track].clone())
        if out.residue_annotations is None:
            out.residue_annotations = torch.zeros(self.length, C.RESIDUE_ANNOTATION_DEPTH, dtype=torch.long)
        return GenerationResult(
            tokens=out,
            num_steps=self.num_steps,
            total_to_sample=self.total_to_sample,
            steps=list(self.steps),
            seed=self.seed,
        )


def _rows(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (CPU int64 [M]) of ``logits`` [N, ...] as float32 on the CPU (the gather
    runs on the logits' device, so only M rows are transferred)."""
    picked = logits.index_select(0, index.to(logits.device))
    return picked.detach().to(device="cpu", dtype=torch.float32)


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` [M, V] (rows need not be normalised) by inverse-CDF
    sampling with ``u ~ U(0, 1]``: ids with probability 0 are never drawn. Same distribution as
    ``torch.multinomial(probs, 1)``, several times faster for small M."""
    cdf = probs.cumsum(-1)
    u = 1.0 - torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:])
    return ids.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on the last dimension: sort descending, softmax, cumulative sum; keep ids
    whose cumulative probability is <= ``top_p`` and always the top id; set the rest to the
    dtype minimum (as the official ``top_p_logits``)."""
    shape = logits.shape
    flat = logits.reshape(-1, shape[-1]).clone()
    sorted_logits, sorted_idx = flat.sort(dim=-1, descending=True)
    keep = sorted_logits.softmax(-1).cumsum(-1) <= top_p
    keep[:, 0] = True
    drop = torch.zeros_like(keep).scatter(1, sorted_idx, ~keep)
    flat[drop] = torch.finfo(flat.dtype).min
    return flat.reshape(shape)


def _categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``Categorical(logits=logits)`` on the last dimension; ``-inf`` entries
    contribute 0 (same clamping as ``torch.distributions.Categorical``)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)


# ---------------------------------------------------------------------------------------------
# Single request
# ---------------------------------------------------------------------------------------------


def generate_tensor(
    model: Any,
    tokens: ProteinTokens,
    config: GenerationConfig,
    *,
    seed: int | None = None,
    residue_vocab_size: int | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> GenerationResult:
    """Generate ``config.track`` of one prompt by iterative unmasking (no cross-request batching).

    Args:
        model: the ESM3 trunk (see :func:`run_trunk` for the interface).
        tokens: the prompt, N = L + 2 positions.
        config: generation settings (:class:`GenerationConfig`).
        seed: makes the call reproducible; ``None`` draws a fresh seed (stochastic like Forge).
        residue_vocab_size: the model's residue-annotation vocabulary size (default 1478, or the
            ``residue_annotation_vocab_size`` attribute of the model if it has one).
        on_step: called after every step (progress bars).

    Returns:
        :class:`GenerationResult`.

    Raises:
        InvalidParameterError, InvalidInputError: bad config, bad prompt, or a track with no masks.
    """
    if residue_vocab_size is None:
        residue_vocab_size = _residue_vocab_size(model)
    session = GenerationSession(tokens, config, seed=seed, residue_vocab_size=residue_vocab_size)
    while not session.done:
        output = run_trunk(model, session.forward_inputs(), tracks=(session.track,))
        record = session.step(track_logits(output, session.track)[0])
        if on_step is not None:
            on_step(record)
    return session.result()


def _residue_vocab_size(model: Any) -> int:
    for obj in (model, getattr(model, "config", None)):
        value = getattr(obj, "residue_annotation_vocab_size", None)
        if isinstance(value, int):
            return value
    return C.RESIDUE_ANNOTATION_VOCAB_SIZE
