"""Checkpoint reading (official layout, Namespace hyperparameters, unknown classes, no code
execution), safetensors conversion and the registry loader."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from plmserve.errors import ModelLoadError, WeightsNotFoundError
from plmserve.models.poet import PoET, PoETConfig, convert, load
from plmserve.models.poet.checkpoint import read_official_checkpoint, read_safetensors
from plmserve.models.registry import get_spec
from plmserve.settings import Settings

from ._helpers import fixture_file, fixture_json, fixture_model

TINY = {"n_vocab": 24, "hidden_dim": 64, "num_layers": 2, "nhead": 4, "use_multi_rotary": True, "norm": True}


def _state():
    state, _ = read_official_checkpoint(fixture_file("model.ckpt"))
    return state


def test_both_fixture_checkpoints_read_with_hyperparameters():
    for name in ("model.ckpt", "model_namespace.ckpt"):
        state, init_args = read_official_checkpoint(fixture_file(name))
        assert init_args == TINY
        assert len(state) == 50 and all(not k.startswith("model.") for k in state)
        model = PoET.from_checkpoint(fixture_file(name))
        assert model.config == PoETConfig(**TINY)
        assert sum(p.numel() for p in model.model.parameters()) == 135_960


def test_config_inferred_from_shapes_matches():
    cfg = PoETConfig.from_state_dict(_state())
    assert cfg.same_architecture(PoETConfig(**TINY))
    assert cfg.head_dim == 16 and cfg.ffn_dim == 256


def test_full_size_parameter_count():
    with torch.device("meta"):
        from plmserve.models.poet import PoETModel

        net = PoETModel(PoETConfig())
    assert sum(p.numel() for p in net.parameters()) == 201_537_560
    assert len(net.state_dict()) == 270  # spec §3: 22 keys per layer + 6 top-level (buffers included)


class Opaque:  # stands in for a Lightning/jsonargparse class that is not importable at load time
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_unknown_pickled_classes_become_plain_records(tmp_path, monkeypatch):
    path = tmp_path / "odd.ckpt"
    spec = Opaque(init_args=argparse.Namespace(**TINY), class_path="poet.models.poet.PoET")
    torch.save({"hyper_parameters": {"model_spec": spec}, "state_dict": {f"model.{k}": v for k, v in _state().items()}},
               path)
    # make the class unimportable under its pickled name, as on a machine without Lightning
    monkeypatch.setattr(Opaque, "__module__", "lightning_missing.module")
    state, init_args = read_official_checkpoint(path)
    assert init_args == TINY and len(state) == 50


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_checkpoint_runs_no_code(tmp_path):
    target = tmp_path / "pwned"
    boom = _Boom()
    boom.target = target
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        torch.save({"hyper_parameters": boom, "state_dict": {"model.x": torch.zeros(1)}}, fh, pickle_module=pickle)
    with pytest.raises(ModelLoadError):
        PoET.from_checkpoint(path)
    assert not target.exists()


def test_shape_and_hyperparameter_mismatches_are_load_errors(tmp_path):
    state = _state()
    wrong = dict(TINY, num_layers=3)
    path = tmp_path / "wrong.ckpt"
    torch.save({"hyper_parameters": {"model_spec": {"init_args": wrong}},
                "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(ModelLoadError, match="disagree"):
        PoET.from_checkpoint(path)
    missing = {k: v for k, v in state.items() if k != "linear.bias"}
    with pytest.raises(ModelLoadError, match="linear.bias"):
        PoET.from_state_dict(missing, PoETConfig(**TINY))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        PoET.from_checkpoint(tmp_path / "junk.ckpt")


def test_convert_roundtrip_keeps_scores(tmp_path):
    st = tmp_path / "poet.safetensors"
    back = tmp_path / "back.ckpt"
    convert(fixture_file("model_namespace.ckpt"), st)
    convert(st, back)
    state, init_args = read_safetensors(st)
    assert init_args == TINY and len(state) == 50
    ckpt = torch.load(back, weights_only=True)  # plain dicts: loads without any allow-list
    assert ckpt["hyper_parameters"]["model_spec"]["init_args"] == TINY
    inputs = fixture_json("inputs.json")
    ref = fixture_model().score(inputs["prompt"][:2], inputs["variants"][:3])
    for path in (st, back):
        got = PoET.from_checkpoint(path).score(inputs["prompt"][:2], inputs["variants"][:3])
        np.testing.assert_array_equal(got, ref)


def test_registry_load_searches_model_dir(tmp_path):
    spec = get_spec("poet")
    with pytest.raises(WeightsNotFoundError) as err:
        load(spec, Settings(model_dir=tmp_path))
    msg = str(err.value)
    assert "zenodo.org/records/10061322" in msg and "CC BY-NC-SA" in msg and str(tmp_path / "poet.ckpt") in msg
    (tmp_path / "poet").mkdir()
    (tmp_path / "poet" / "poet.ckpt").write_bytes(fixture_file("model.ckpt").read_bytes())
    model = load(spec, Settings(model_dir=tmp_path, device="cpu"))
    assert model.config == PoETConfig(**TINY) and not model.is_dummy
    assert model.source.endswith("poet/poet.ckpt")
    st_dir = tmp_path / "st"
    convert(fixture_file("model.ckpt"), st_dir / "poet.safetensors")
    from_st = load(spec, Settings(model_dir=st_dir, device="cpu"))
    assert from_st.source.endswith("poet.safetensors") and from_st.config == model.config


def test_registry_dummy_load():
    spec = dataclasses.replace(get_spec("poet"), config={"hidden_dim": 64, "num_layers": 2})
    model = load(spec, Settings(load_format="dummy", device="cpu"))
    assert model.is_dummy and model.config.hidden_dim == 64 and model.config.num_layers == 2
    assert all(p.abs().sum() > 0 for p in model.model.parameters())  # nothing left at zero


def test_dtype_selection_and_rotary_buffers():
    from plmserve.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="not supported on CPU"):
        PoET.from_checkpoint(fixture_file("model.ckpt"), device="cpu", dtype="float16")
    with pytest.raises(InvalidParameterError, match="unknown dtype"):
        PoET.from_checkpoint(fixture_file("model.ckpt"), device="cpu", dtype="int8")
    m = PoET.from_checkpoint(fixture_file("model.ckpt"), device="cpu", dtype="auto")
    assert m.dtype == torch.float32
    inv = m.model.decoder.layers[0].self_attn.rotary_emb.inv_freq
    assert inv.dtype == torch.float32 and inv[0] == inv[1] == 1.0
