"""ESM3 public APIs (issue 12 item 8): Forge wire tokens -> ``ESM3.logits`` arguments, and
``from_pretrained`` refusing to guess ``n_heads``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from plmserve.errors import InvalidInputError, ModelLoadError
from plmserve.models.esm3 import ESM3, ESM3Config, ProteinTokens, logits_kwargs_from_wire
from plmserve.models.esm3.model import infer_config

from ._esm3_fixture import case, expected_logits, fixture_dir, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["a", "b", "c", "d", "e", "f"])
def test_wire_tokens_to_logits_arguments_reproduce_the_official_logits(name):
    kwargs = logits_kwargs_from_wire(case(name)["inputs"])
    n = len(next(v for v in case(name)["inputs"].values() if v is not None))
    assert kwargs["per_res_plddt"].shape == (1, n) and float(kwargs["average_plddt"]) == 1.0
    out = tiny_model().logits(**kwargs)
    ref = expected_logits()
    for head in ("sequence_logits", "secondary_structure_logits", "sasa_logits", "embeddings"):
        np.testing.assert_allclose(getattr(out, head)[0].numpy(), ref[f"{name}/{head}"], rtol=1e-4, atol=1e-4)


def test_logits_kwargs_shapes_and_validation():
    wire = {"sequence": [0, 20, 15, 11, 2], "function": [[0] * 8] * 5,
            "coordinates": [[[1.0, 2.0, 3.0]] + [[None, None, None]] * 36] * 5}
    kw = ProteinTokens.from_lists(wire).logits_kwargs()
    assert kw["sequence_tokens"].shape == (1, 5) and kw["sequence_tokens"].dtype == torch.long
    assert kw["function_tokens"].shape == (1, 5, 8)
    assert kw["structure_coords"].shape == (1, 5, 37, 3) and torch.isnan(kw["structure_coords"][0, 0, 1]).all()
    assert kw["per_res_plddt"].tolist() == [[1.0] * 5]
    assert "structure_tokens" not in kw
    with pytest.raises(InvalidInputError, match="sequence"):
        logits_kwargs_from_wire({"sequence": [0, 5, 70, 2]})


def _save_weights(tmp_path, config: ESM3Config, with_config: bool):
    folder = tmp_path / ("with" if with_config else "without")
    folder.mkdir()
    model = ESM3.dummy(config, seed=0)
    torch.save(model.state_dict(), folder / "model.pth")
    if with_config:
        (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder, model


def test_from_pretrained_refuses_to_guess_n_heads(tmp_path):
    config = ESM3Config(d_model=128, n_heads=8, v_heads=4, n_layers=1)  # d // 64 would say 2 heads
    folder, _ = _save_weights(tmp_path, config, with_config=False)
    with pytest.raises(ModelLoadError, match=r"cannot tell the number of attention heads.*d_model=128.*config\.json"):
        ESM3.from_pretrained(folder)
    folder, model = _save_weights(tmp_path, config, with_config=True)
    loaded = ESM3.from_pretrained(folder)
    assert loaded.config == config
    tokens = {"sequence_tokens": torch.tensor([[0, 5, 6, 7, 2]])}
    torch.testing.assert_close(loaded.logits(**tokens).sequence_logits, model.logits(**tokens).sequence_logits)
    assert ESM3.from_pretrained(tmp_path / "without", config=config).config == config


def test_known_sizes_are_still_inferred():
    sd = torch.load(fixture_dir() / "model.pth", map_location="cpu", weights_only=True)
    assert infer_config(sd) == ESM3Config.tiny()  # 4 heads, as the official tiny model (not 64 // 64)
