"""``generate_tensor`` on the tiny fixture model against the official ``esm`` package, token for
token: ``tests/data/fixtures/esm3/expected_generate.json`` (outputs, effective num_steps, T, per-step
temperature, commit counts and committed positions, error records).
"""

from __future__ import annotations

import json

import pytest
import torch

from plmserve.errors import InvalidInputError, InvalidParameterError
from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens, generate_tensor
from tests.conftest import shared_path

FIXTURES = shared_path("fixtures", "esm3")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_fixture_model():
    """The tiny official-layout ESM3 (d=64, 4 heads, 2 layers) with the fixture weights, loaded
    strictly."""
    from plmserve.models.esm3.model import ESM3, ESM3Config

    config = json.loads((FIXTURES / "config.json").read_text())
    model = ESM3(ESM3Config.from_dict(config))
    state = torch.load(FIXTURES / "model.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def config_from_request(req: dict) -> GenerationConfig:
    return GenerationConfig(
        track=req["track"],
        num_steps=req["num_steps"],
        temperature=req["temperature"],
        temperature_annealing=req["temperature_annealing"],
        top_p=req["top_p"],
        schedule=req["schedule"],
        strategy=req["strategy"],
        invalid_ids=req["invalid_ids"],
        condition_on_coordinates_only=req["condition_on_coordinates_only"],
    )


_DATA = json.loads((FIXTURES / "expected_generate.json").read_text())
RECORDS = {r["name"]: r for r in _DATA["records"] + _DATA["extra_records"]}


@pytest.fixture(scope="module")
def model():
    return load_fixture_model()


def test_all_records_present():
    assert len(RECORDS) == 19


@pytest.mark.parametrize("name", [n for n, r in RECORDS.items() if "error" not in r])
def test_generate_matches_official(model, name):
    record = RECORDS[name]
    req = record["request"]
    result = generate_tensor(model, ProteinTokens.from_lists(req["inputs"]), config_from_request(req), seed=0)
    assert result.num_steps == record["effective_num_steps"]
    assert result.total_to_sample == record["total_to_sample"]
    got = result.tokens.to_lists()
    for key, expected in record["outputs"].items():
        assert got[key] == expected, f"{name}: track {key} differs"
    steps = record["steps"]
    assert len(result.steps) == len(steps)
    for mine, ref in zip(result.steps, steps):
        assert mine.temperature == pytest.approx(ref["temperature"], rel=1e-12, abs=0)
        assert mine.still_masked_before == ref["still_masked_before"]
        assert mine.committed == ref["committed"]
        assert mine.still_masked_after == ref["still_masked_after"]
        assert mine.committed_positions == ref["committed_positions"]


def test_function_at_temperature_zero_is_a_clear_error(model):
    """The official sampler crashes with NaN logits here; we answer with a parameter error."""
    req = RECORDS["f_function"]["request"]
    assert "error" in RECORDS["f_function"]
    with pytest.raises(InvalidParameterError, match="temperature 0"):
        generate_tensor(model, ProteinTokens.from_lists(req["inputs"]), config_from_request(req))


def test_no_masks_error_matches_official_message(model):
    record = RECORDS["extra_c_sequence_no_masks"]
    req = record["request"]
    with pytest.raises(InvalidInputError) as info:
        generate_tensor(model, ProteinTokens.from_lists(req["inputs"]), config_from_request(req))
    assert str(info.value) == record["error"]["error_msg"]
