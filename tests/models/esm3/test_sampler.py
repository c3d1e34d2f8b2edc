"""Unit tests of the ESM3 iterative sampler (``plmserve.models.esm3.sampler``).

The trunk is replaced by :class:`FakeTrunk`, a small deterministic module whose logits depend on
the input tokens, so these tests need no weights. The fixture-model tests (token for token
against the official package) are in ``test_generate_fixtures.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.sampler import (
    GenerationConfig,
    GenerationSession,
    ProteinTokens,
    allowed_ids,
    annealed_temperature,
    empty_tokens,
    generate_tensor,
    remaining_masked_after_step,
)
from tests.conftest import shared_path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeTrunk(torch.nn.Module):
    """A stand-in for the ESM3 trunk: per-position logits from embeddings of the sequence and
    structure tokens plus a position term, for every head, with the trunk's output shapes.

    ``bias`` (optional) maps a track name to a logits offset added everywhere ([V] or
    [8, 260]); ``calls`` records the batch size of every forward pass.
    """

    def __init__(self, d: int = 16, seed: int = 0, bias: dict | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.seq = torch.nn.Parameter(torch.randn(64, d, generator=g))
        self.struct = torch.nn.Parameter(torch.randn(4101, d, generator=g))
        self.pos = torch.nn.Parameter(torch.randn(512, d, generator=g))
        self.heads = torch.nn.ParameterDict(
            {
                "sequence": torch.nn.Parameter(torch.randn(d, 64, generator=g)),
                "structure": torch.nn.Parameter(torch.randn(d, 4096, generator=g)),
                "secondary_structure": torch.nn.Parameter(torch.randn(d, 11, generator=g)),
                "sasa": torch.nn.Parameter(torch.randn(d, 19, generator=g)),
                "function": torch.nn.Parameter(torch.randn(d, 8 * 260, generator=g)),
                "residue": torch.nn.Parameter(torch.randn(d, 1478, generator=g)),
            }
        )
        self.bias = bias or {}
        self.calls: list[int] = []

    def forward(self, *, sequence_tokens, structure_tokens, ss8_tokens, sasa_tokens, function_tokens,
                residue_annotation_tokens, average_plddt, per_res_plddt, structure_coords, **_):
        b, n = sequence_tokens.shape
        assert structure_tokens.shape == (b, n) and ss8_tokens.shape == (b, n) and sasa_tokens.shape == (b, n)
        assert function_tokens.shape == (b, n, 8) and residue_annotation_tokens.shape == (b, n, 16)
        assert structure_coords.shape == (b, n, 3, 3) and per_res_plddt.shape == (b, n)
        self.calls.append(b)
        h = self.seq[sequence_tokens] + self.struct[structure_tokens] + self.pos[:n] + per_res_plddt[..., None]
        h = torch.tanh(h)

        def head(name, shape=None):
            out = h @ self.heads[name]
            if shape is not None:
                out = out.reshape(b, n, *shape)
            if name in self.bias:
                out = out + self.bias[name]
            return out

        # heads are computed lazily on first access (the sampler reads one track per step)
        return _LazyOutput(
            sequence_logits=lambda: head("sequence"),
            structure_logits=lambda: head("structure"),
            secondary_structure_logits=lambda: head("secondary_structure"),
            sasa_logits=lambda: head("sasa"),
            function_logits=lambda: head("function", (8, 260)),
            residue_logits=lambda: head("residue"),
            embeddings=lambda: h,
        )


class _LazyOutput:
    """Attributes computed on first access from zero-argument callables (settable)."""

    def __init__(self, **makers):
        object.__setattr__(self, "_makers", makers)

    def __getattr__(self, name):
        makers = object.__getattribute__(self, "_makers")
        if name not in makers:
            raise AttributeError(name)
        value = makers[name]()
        object.__setattr__(self, name, value)
        return value


def masked_sequence(length: int, masked: list[int] | None = None, seed: int = 0) -> ProteinTokens:
    """A sequence-only prompt of ``length`` residues; 1-based ``masked`` residues are masks
    (all when None)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(4, 24, (length + 2,), generator=g)
    seq[0], seq[-1] = 0, 2
    if masked is None:
        seq[1:-1] = 32
    else:
        seq[torch.tensor(masked, dtype=torch.long)] = 32
    return ProteinTokens(sequence=seq)


# ---------------------------------------------------------------------------------------------
# schedule and temperature: schedule.json (official loop measurements)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schedule_fixture() -> dict:
    return json.loads(shared_path("fixtures", "esm3", "schedule.json").read_text())


def test_schedule_formula_matches_official(schedule_fixture):
    entries = schedule_fixture["remaining_masked_after_each_step"]
    assert len(entries) >= 10
    for e in entries:
        n = e["effective_num_steps"]
        assert n == min(e["requested_num_steps"], e["masked_positions"])
        got = [remaining_masked_after_step(t, n, e["masked_positions"], e["schedule"]) for t in range(n)]
        assert got == e["remaining_after_step"], e


def test_schedule_through_the_sampler_loop(schedule_fixture):
    """The whole loop (T, num_steps clamping, commit counts) on fully masked sequences."""
    model = FakeTrunk()
    for e in schedule_fixture["remaining_masked_after_each_step"]:
        prompt = masked_sequence(e["masked_positions"])
        cfg = GenerationConfig(track="sequence", num_steps=e["requested_num_steps"], schedule=e["schedule"],
                               temperature=0.0, temperature_annealing=False, strategy="entropy")
        res = generate_tensor(model, prompt, cfg)
        assert res.num_steps == e["effective_num_steps"]
        assert res.total_to_sample == e["masked_positions"]
        assert [s.still_masked_after for s in res.steps] == e["remaining_after_step"]
        assert [s.committed for s in res.steps] == e["committed_per_step"]


def test_annealed_temperature_matches_official(schedule_fixture):
    entries = schedule_fixture["annealed_temperature"]
    assert len(entries) >= 2
    for e in entries:
        got = [annealed_temperature(t, e["num_steps"], e["temperature"]) for t in range(e["num_steps"])]
        assert got == pytest.approx(e["effective_temperature_per_step"], rel=1e-12, abs=0)


def test_annealing_reaches_the_sampler():
    model = FakeTrunk()
    res = generate_tensor(model, masked_sequence(40), GenerationConfig(track="sequence", num_steps=20,
                                                                       temperature=0.5), seed=1)
    temps = [s.temperature for s in res.steps]
    assert temps[0] == pytest.approx(0.25)
    assert temps[1] == pytest.approx((0.5 - 1 / 19) ** 2)
    assert temps[-1] == pytest.approx(1e-6)
    res = generate_tensor(model, masked_sequence(40), GenerationConfig(track="sequence", num_steps=5, temperature=0.7,
                                                                       temperature_annealing=False), seed=1)
    assert [s.temperature for s in res.steps] == [0.7] * 5


# ---------------------------------------------------------------------------------------------
# sampling rules
# ---------------------------------------------------------------------------------------------


def test_special_and_invalid_ids_are_never_sampled():
    # push every special id, the unused head ids 33..63 and X/B/U/Z/O/./- far above the rest
    bias = torch.zeros(64)
    bias[list(C.SEQUENCE_SPECIAL_IDS)] = 20.0
    bias[33:] = 20.0
    bias[24:31] = 15.0
    model = FakeTrunk(bias={"sequence": bias})
    invalid = list(range(24, 31))
    for seed in range(3):
        res = generate_tensor(model, masked_sequence(60), GenerationConfig(
            track="sequence", num_steps=6, temperature=1.0, temperature_annealing=False, invalid_ids=invalid), seed=seed)
        body = res.tokens.sequence[1:-1]
        assert bool(((body >= 4) & (body < 24)).all()), body
    # without invalid_ids the (favoured) extra letters do get sampled
    res = generate_tensor(model, masked_sequence(60), GenerationConfig(
        track="sequence", num_steps=6, temperature=1.0, temperature_annealing=False), seed=0)
    body = res.tokens.sequence[1:-1]
    assert bool(((body >= 24) & (body <= 30)).any())
    assert not bool(torch.isin(body, torch.tensor(sorted(C.SEQUENCE_SPECIAL_IDS))).any())


def test_allowed_ids_per_track():
    assert allowed_ids("sequence") == list(range(4, 31))
    assert allowed_ids("sequence", [24, 25, 26, 27, 28, 29, 30]) == list(range(4, 24))
    assert allowed_ids("structure") == list(range(4096))
    assert allowed_ids("secondary_structure") == list(range(3, 11))
    assert allowed_ids("sasa") == list(range(3, 19))


def test_top_p_uses_untempered_distribution():
    # one allowed id with probability ~0.7: top_p 0.5 keeps only it, even at a high temperature
    fixed = torch.full((64,), -5.0)
    fixed[5] = 5.0
    fixed[6] = 4.0

    class Fixed(FakeTrunk):
        def forward(self, **kw):
            out = super().forward(**kw)
            out.sequence_logits = fixed.expand_as(out.sequence_logits).clone()
            return out

    model = Fixed()
    res = generate_tensor(model, masked_sequence(50), GenerationConfig(
        track="sequence", num_steps=3, temperature=50.0, temperature_annealing=False, top_p=0.5), seed=3)
    assert set(res.tokens.sequence[1:-1].tolist()) == {5}
    res = generate_tensor(model, masked_sequence(50), GenerationConfig(
        track="sequence", num_steps=3, temperature=50.0, temperature_annealing=False, top_p=1.0), seed=3)
    assert len(set(res.tokens.sequence[1:-1].tolist())) > 2


def test_temperature_zero_is_argmax_and_deterministic():
    model = FakeTrunk()
    cfg = GenerationConfig(track="sequence", num_steps=1, temperature=0.0, temperature_annealing=False)
    prompt = masked_sequence(30)
    res = generate_tensor(model, prompt, cfg, seed=1)
    inputs = GenerationSession(prompt, cfg).forward_inputs()
    logits = model(**inputs).sequence_logits[0].clone()
    logits[:, [i for i in range(64) if i not in allowed_ids("sequence")]] = -math.inf
    assert res.tokens.sequence[1:-1].tolist() == logits.argmax(-1)[1:-1].tolist()
    assert generate_tensor(model, prompt, cfg, seed=2).tokens.sequence.tolist() == res.tokens.sequence.tolist()


def test_committed_tokens_are_never_remasked_or_changed():
    model = FakeTrunk()
    prompt = masked_sequence(40, masked=list(range(2, 41, 2)))
    session = GenerationSession(prompt, GenerationConfig(track="sequence", num_steps=8, temperature=1.0), seed=5)
    given = prompt.sequence != 32
    history = []
    while not session.done:
        session.step(model(**session.forward_inputs()).sequence_logits[0])
        history.append(session.work["sequence"].clone())
    for before, after in zip(history, history[1:]):
        fixed = before != 32
        assert torch.equal(before[fixed], after[fixed])
    final = session.result().tokens.sequence
    assert torch.equal(final[given], prompt.sequence[given])
    assert not bool((final == 32).any())
    committed = sorted(p for s in session.steps for p in s.committed_positions)
    assert committed == list(range(2, 41, 2))


def test_seed_makes_calls_reproducible():
    model = FakeTrunk()
    cfg = GenerationConfig(track="sequence", num_steps=10, temperature=1.0)
    a = generate_tensor(model, masked_sequence(50), cfg, seed=123)
    b = generate_tensor(model, masked_sequence(50), cfg, seed=123)
    c = generate_tensor(model, masked_sequence(50), cfg, seed=124)
    assert a.tokens.sequence.tolist() == b.tokens.sequence.tolist()
    assert [s.committed_positions for s in a.steps] == [s.committed_positions for s in b.steps]
    assert a.tokens.sequence.tolist() != c.tokens.sequence.tolist()
    # without a seed each call draws its own
    assert generate_tensor(model, masked_sequence(50), cfg).seed != generate_tensor(model, masked_sequence(50), cfg).seed


def test_num_steps_clamped_to_masked_positions():
    model = FakeTrunk()
    res = generate_tensor(model, masked_sequence(30, masked=[3, 7, 9, 20, 28]),
                          GenerationConfig(track="sequence", num_steps=20), seed=0)
    assert res.num_steps == 5 and res.total_to_sample == 5
    assert len(res.steps) == 5 and sum(s.committed for s in res.steps) == 5


def test_entropy_strategy_commits_lowest_entropy_first():
    # position-dependent sharpness: later positions get sharper (lower-entropy) logits
    class Sharp(FakeTrunk):
        def forward(self, **kw):
            out = super().forward(**kw)
            n = out.sequence_logits.shape[1]
            scale = torch.linspace(0.1, 10.0, n)[None, :, None]
            out.sequence_logits = out.sequence_logits * scale
            return out

    res = generate_tensor(Sharp(), masked_sequence(20), GenerationConfig(
        track="sequence", num_steps=4, strategy="entropy", temperature=0.0, temperature_annealing=False))
    first = res.steps[0].committed_positions
    assert first and min(first) > 14  # the sharpest (last) positions first


def test_echo_rules_for_untouched_tracks():
    model = FakeTrunk()
    n = 22
    prompt = masked_sequence(20, masked=[2, 5, 9])
    prompt.secondary_structure = torch.randint(3, 11, (n,))
    prompt.secondary_structure[0] = prompt.secondary_structure[-1] = 0
    prompt.coordinates = torch.full((n, 37, 3), math.nan)
    prompt.coordinates[1:-1, :3] = torch.randn(n - 2, 3, 3)
    res = generate_tensor(model, prompt, GenerationConfig(track="sequence", num_steps=3), seed=0)
    out = res.tokens
    assert torch.equal(out.secondary_structure, prompt.secondary_structure)
    assert torch.allclose(out.coordinates, prompt.coordinates, equal_nan=True)
    assert out.structure is None and out.sasa is None and out.function is None
    assert out.residue_annotations is not None and out.residue_annotations.shape == (n, 16)
    assert not bool(out.residue_annotations.any())
    wire = out.to_lists()
    assert set(wire) == {"sequence", "structure", "secondary_structure", "sasa", "function",
                         "residue_annotation", "coordinates"}
    assert wire["structure"] is None and wire["coordinates"][0][0] == [None, None, None]


def test_generate_absent_track_fills_every_residue():
    model = FakeTrunk()
    prompt = masked_sequence(25, masked=[])
    res = generate_tensor(model, prompt, GenerationConfig(track="secondary_structure", num_steps=5), seed=0)
    ss = res.tokens.secondary_structure
    assert res.total_to_sample == 25
    assert ss[0] == 0 and ss[-1] == 0 and bool(((ss[1:-1] >= 3) & (ss[1:-1] <= 10)).all())
    assert torch.equal(res.tokens.sequence, prompt.sequence)


def test_condition_on_coordinates_only():
    model = FakeTrunk()
    n = 18
    prompt = masked_sequence(16, masked=[])
    prompt.structure = torch.randint(0, 4096, (n,))
    prompt.structure[0], prompt.structure[-1] = 4098, 4097
    prompt.coordinates = torch.randn(n, 37, 3)
    # coordinates given + condition_on_coordinates_only: every structure position is regenerated
    res = generate_tensor(model, prompt, GenerationConfig(track="structure", num_steps=4, temperature=1.0), seed=0)
    assert res.total_to_sample == 16
    assert sum(s.committed for s in res.steps) == 16
    assert bool((res.tokens.structure[1:-1] < 4096).all())
    # without it, a complete structure track has nothing to sample
    with pytest.raises(InvalidInputError, match="Cannot sample structure when input has no masks."):
        generate_tensor(model, prompt, GenerationConfig(track="structure", num_steps=4,
                                                        condition_on_coordinates_only=False))


def test_function_none_rule():
    # depths strongly predict <none> at odd positions only
    class NoneAtOdd(FakeTrunk):
        def forward(self, **kw):
            out = super().forward(**kw)
            f = out.function_logits.clone()
            f[:, 1::2, :, 3] += 30.0
            f[:, 0::2, :, 3] -= 30.0
            out.function_logits = f
            return out

    prompt = masked_sequence(20, masked=[])
    res = generate_tensor(NoneAtOdd(), prompt, GenerationConfig(track="function", num_steps=4, temperature=1.0,
                                                                temperature_annealing=False), seed=0)
    fn = res.tokens.function
    assert fn.shape == (22, 8)
    assert bool((fn[0] == 0).all()) and bool((fn[-1] == 0).all())
    for pos in range(1, 21):
        if pos % 2 == 1:
            assert fn[pos].tolist() == [3] * 8
        else:
            assert not bool((fn[pos] == 3).any())
            assert bool((fn[pos] != 0).all())


def test_function_partial_masks_keep_given_positions():
    model = FakeTrunk()
    prompt = masked_sequence(12, masked=[])
    fn = torch.zeros(14, 8, dtype=torch.long)
    fn[3] = torch.arange(10, 18)
    fn[4] = 3
    prompt.function = fn
    res = generate_tensor(model, prompt, GenerationConfig(track="function", num_steps=20, temperature=1.0), seed=0)
    assert res.total_to_sample == 10 and res.num_steps == 10
    assert res.tokens.function[3].tolist() == list(range(10, 18))
    assert res.tokens.function[4].tolist() == [3] * 8


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"track": "coordinates"}, "Iterative sampling coordinates is not supported"),
        ({"track": "residue_annotations"}, "Iterative sampling residue_annotations is not supported"),
        ({"track": "seqence"}, "unknown track 'seqence'"),
        ({"track": "sequence", "num_steps": 0}, r"num_steps must be in \[1, 100\]"),
        ({"track": "sequence", "num_steps": 101}, r"num_steps must be in \[1, 100\]"),
        ({"track": "sequence", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"track": "sequence", "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"track": "sequence", "temperature": -1.0}, "temperature must be"),
        ({"track": "sequence", "schedule": "cubic"}, "unknown schedule 'cubic'"),
        ({"track": "sequence", "strategy": "greedy"}, "unknown strategy 'greedy'"),
        ({"track": "secondary_structure", "invalid_ids": list(range(11))}, "excludes every token"),
        ({"track": "function", "temperature": 0.0, "temperature_annealing": False}, "temperature 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        GenerationConfig(**kwargs).validate()


def test_prompt_validation_messages():
    with pytest.raises(InvalidInputError, match="inconsistent track lengths"):
        ProteinTokens.from_lists({"sequence": [0, 32, 32, 2], "structure": [4098, 4096, 4097]})
    with pytest.raises(InvalidInputError, match=r"inputs.sequence: token id 40 at position 2 is out of range"):
        ProteinTokens.from_lists({"sequence": [0, 32, 40, 2]})
    with pytest.raises(InvalidInputError, match=r"inputs.structure: token id -3 at position 1"):
        ProteinTokens.from_lists({"sequence": [0, 32, 32, 2], "structure": [4098, -3, 4096, 4097]})
    with pytest.raises(InvalidInputError, match=r"inputs.function: token id 300 at position 1, depth 2"):
        ProteinTokens.from_lists({"function": [[0] * 8, [0, 0, 300, 0, 0, 0, 0, 0], [0] * 8]})
    with pytest.raises(InvalidInputError, match=r"inputs.function: expected \[N, 8\]"):
        ProteinTokens.from_lists({"function": [[0] * 7] * 3})
    with pytest.raises(InvalidInputError, match="no track given"):
        ProteinTokens.from_lists({"sequence": None})
    with pytest.raises(InvalidInputError, match="unknown track"):
        ProteinTokens.from_lists({"sequnce": [0, 2]})
    with pytest.raises(InvalidInputError, match="integers"):
        ProteinTokens.from_lists({"sequence": [0, 32.5, 2]})
    with pytest.raises(InvalidInputError, match="too short"):
        ProteinTokens.from_lists({"sequence": [0, 2]})
    ok = ProteinTokens.from_lists({"sequence": [0, 32, 2], "residue_annotation": [[0] * 16] * 3,
                                   "coordinates": [[[None, 1.0, 2.0]] * 37] * 3})
    assert ok.residue_annotations.shape == (3, 16) and math.isnan(float(ok.coordinates[0, 0, 0]))


def test_no_masks_error_message():
    with pytest.raises(InvalidInputError, match=r"^Cannot sample sequence when input has no masks\.$"):
        generate_tensor(FakeTrunk(), masked_sequence(10, masked=[]), GenerationConfig(track="sequence"))


def test_empty_tokens_layout():
    t = empty_tokens(5)
    assert t.sequence.tolist() == [0] + [32] * 5 + [2]
    assert t.structure.tolist() == [4098] + [4096] * 5 + [4097]
    assert t.function.shape == (7, 8) and t.residue_annotations.shape == (7, 16)
    with pytest.raises(InvalidParameterError):
        empty_tokens(0)


def test_run_trunk_asks_for_only_the_needed_head_when_supported():
    from plmserve.models.esm3.sampler import run_trunk

    class WithHeads(FakeTrunk):
        def forward(self, *, heads=None, **kw):
            self.heads_asked = heads
            return super().forward(**kw)

    model = WithHeads()
    res = generate_tensor(model, masked_sequence(10), GenerationConfig(track="sasa", num_steps=2), seed=0)
    assert model.heads_asked == ("sasa",) and res.num_steps == 2
    plain = FakeTrunk()  # no ``heads`` keyword: not passed
    run_trunk(plain, GenerationSession(masked_sequence(5), GenerationConfig(track="sequence")).forward_inputs(),
              tracks=("sequence",))
    assert plain.calls == [1]
