"""Weight resolution and loading: HF folders (save_pretrained), fair-esm files, conversion, dummy
weights and the offline error. No network: HF_HUB_OFFLINE=1 (tests/conftest.py)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from plmserve.errors import InvalidParameterError, ModelLoadError, WeightsNotFoundError
from plmserve.models import esm2
from plmserve.models.registry import ModelSpec, get_spec
from plmserve.settings import Settings

from .conftest import assert_close

SEQ = "MKTAYIAKQRQISFVKSHFSRQ"


@pytest.fixture(autouse=True)
def _empty_caches(tmp_path, monkeypatch):
    """No real HF or torch-hub cache may satisfy a lookup."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _spec(slug="esm2-tinytest"):
    return ModelSpec(
        slug=slug,
        family="esm2",
        description="test model",
        hf_repo="plmserve-tests/esm2-does-not-exist",
        official_files=("esm2_tiny.pt", "esm2_tiny-contact-regression.pt"),
        config={"num_layers": 2, "embed_dim": 64, "attention_heads": 4, "fair_esm_name": "esm2_tiny"},
    )


def test_hf_save_pretrained_folder_loads_from_model_dir(tmp_path):
    """A random EsmForMaskedLM written by transformers itself is found in <model_dir>/<slug>/ and
    gives the same logits as transformers' own eager forward."""
    from transformers import EsmForMaskedLM

    config = esm2.weights.esm2_config(num_layers=2, embed_dim=32, attention_heads=4)
    torch.manual_seed(3)
    reference = EsmForMaskedLM(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.3)
    reference.save_pretrained(tmp_path / "models" / "esm2-tinytest")
    reference.config._attn_implementation = "eager"

    engine = esm2.load(_spec(), Settings(model_dir=tmp_path / "models"))
    assert engine.load_format == "hf-dir"
    assert (engine.num_layers, engine.embed_dim, engine.max_residues) == (2, 32, 1024)
    ids = torch.tensor([[0] + [esm2.alphabet.TOKEN_ID[c] for c in SEQ] + [2]])
    with torch.inference_mode():
        ref = reference(input_ids=ids)
    (out,) = engine.encode([SEQ], include=["logits", "mean"])
    np.testing.assert_allclose(out["logits"], ref.logits[0, 1:-1, 4:24].numpy(), atol=1e-5)
    (pred,) = engine.predict([SEQ[:5] + "<mask>" + SEQ[6:]])
    assert pred["logits"].shape == (len(SEQ), 20)


def test_converted_fair_esm_folder_reproduces_fixture(tmp_path, expected, inputs, fixture_dir):
    """`plmserve models convert` output (save_pretrained) keeps the fp16-rounded rotary inv_freq
    and the contact head: the fixture numbers still match after the round trip."""
    dst = esm2.convert(fixture_dir / "esm2_tiny.pt", tmp_path / "models" / "esm2-tinytest")
    assert (dst / "config.json").is_file()
    from safetensors import safe_open

    with safe_open(str(dst / "model.safetensors"), framework="pt") as f:  # the facebook/esm2_* hub layout
        keys = set(f.keys())
    assert {f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq" for i in range(2)} <= keys
    assert "esm.contact_head.regression.weight" in keys
    assert (dst / "vocab.txt").read_text().split() == list(esm2.alphabet.ALL_TOKENS)
    engine = esm2.load(_spec(), Settings(model_dir=tmp_path / "models"))
    assert engine.load_format == "hf-dir" and engine.has_contact_head
    seq = inputs["sequences"][0]
    (out,) = engine.encode([seq], include=["logits", "contacts"])
    L = len(seq)
    assert_close(out["logits"], expected["single/0/logits"][1 : L + 1, 4:24], atol=1e-4, rtol=1e-5, what="logits")
    assert_close(out["contacts"], expected["single/0/contacts"], atol=1e-5, what="contacts")


def test_fair_esm_checkpoint_in_model_dir(tmp_path, fixture_dir, expected, inputs):
    (tmp_path / "models").mkdir()
    for name in ("esm2_tiny.pt", "esm2_tiny-contact-regression.pt"):
        shutil.copy(fixture_dir / name, tmp_path / "models" / name)
    engine = esm2.load(_spec(), Settings(model_dir=tmp_path / "models"))
    assert engine.load_format == "fair-esm"
    (out,) = engine.encode(inputs["sequences"][1:2], include=["logits"])
    assert_close(out["logits"], expected["single/1/logits"][1:-1, 4:24], atol=1e-4, rtol=1e-5, what="logits")


def test_fair_esm_checkpoint_in_torch_hub_dir(tmp_path, fixture_dir):
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(fixture_dir / "esm2_tiny.pt", hub / "esm2_tiny.pt")  # no regression file
    engine = esm2.load(_spec(), Settings(model_dir=None))
    assert engine.load_format == "fair-esm" and not engine.has_contact_head
    with pytest.raises(InvalidParameterError, match="contact"):
        engine.encode([SEQ], include=["contacts"])


def test_offline_without_weights_is_one_clear_error(tmp_path):
    settings = Settings(model_dir=tmp_path / "models", offline=True)
    with pytest.raises(WeightsNotFoundError) as info:
        esm2.load(get_spec("esm2-650m"), settings)
    msg = str(info.value)
    for fragment in (
        "esm2-650m",
        "facebook/esm2_t33_650M_UR50D",
        str(tmp_path / "models" / "esm2-650m"),
        "esm2_t33_650M_UR50D.pt",
        str(tmp_path / "torch-home" / "hub" / "checkpoints"),
        "Hugging Face cache",
        "offline",
        "plmserve models pull esm2-650m",
        "PLMSERVE_MODEL_DIR",
    ):
        assert fragment in msg, fragment
    assert info.value.status_code == 503


def test_dummy_load_format_builds_the_registry_shape(caplog):
    with caplog.at_level(logging.WARNING):
        engine = esm2.load(get_spec("esm2-8m"), Settings(load_format="dummy"))
    assert engine.load_format == "dummy"
    assert (engine.num_layers, engine.embed_dim, engine.attention_heads) == (6, 320, 20)
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    (out,) = engine.encode([SEQ], include=["mean", "contacts"], repr_layers=[-1, 3])
    assert set(out["mean_representations"]) == {6, 3}
    assert out["contacts"].shape == (len(SEQ), len(SEQ))
    assert np.isfinite(out["mean_representations"][6]).all()
    again = esm2.load(get_spec("esm2-8m"), Settings(load_format="dummy"))
    (out2,) = again.encode([SEQ])
    # same seed, same weights (the eager path used for contacts vs SDPA differs only by rounding)
    np.testing.assert_allclose(out2["mean_representations"][6], out["mean_representations"][6], atol=1e-5)


def test_bad_checkpoint_files(tmp_path):
    bad = tmp_path / "esm2_bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="esm2_bad.pt"):
        esm2.ESM2Engine.from_fair_esm(bad)
    torch.save({"model": {"foo": torch.zeros(2)}}, tmp_path / "esm2_other.pt")
    with pytest.raises(ModelLoadError, match="embed_tokens"):
        esm2.ESM2Engine.from_fair_esm(tmp_path / "esm2_other.pt")
    with pytest.raises(FileNotFoundError):
        esm2.ESM2Engine.from_fair_esm(tmp_path / "missing.pt")


def test_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path, fixture_dir):
    data = torch.load(fixture_dir / "esm2_tiny.pt", weights_only=False)
    data["extra"] = shutil.copy  # a global that is not allow-listed
    torch.save(data, tmp_path / "esm2_evil.pt")
    with pytest.raises(ModelLoadError, match="esm2_evil.pt"):
        esm2.ESM2Engine.from_fair_esm(tmp_path / "esm2_evil.pt")


def test_model_manager_loads_the_engine_lazily_once():
    from plmserve.models.registry import ModelManager

    manager = ModelManager(Settings(load_format="dummy"))
    engine = manager.get("esm2_t6_8M_UR50D")  # an alias
    assert isinstance(engine, esm2.ESM2Engine) and engine.slug == "esm2-8m"
    assert manager.get("esm2-8m") is engine
