"""ESM3 trunk: fixture logits, strict loading, weights resolution, dummy weights, padding mask,
input checks and geometric properties."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import httpx
import numpy as np
import pytest
import torch

from plmserve.errors import InvalidInputError, ModelLoadError, WeightsNotFoundError
from plmserve.models.esm3 import (
    ESM3,
    ESM3Config,
    constants as C,
    default_inputs,
    default_tokens,
    per_residue_plddt_from_coordinates,
)
from plmserve.models.esm3.layers import backbone_frames
from plmserve.models.esm3.loader import load_esm3, locate_weights
from plmserve.models.esm3.model import parameter_count
from plmserve.models.registry import ModelManager, get_spec
from plmserve.settings import Settings
from tests.models.esm3._esm3_fixture import (
    case,
    cases,
    expected_logits,
    fixture_dir,
    tiny_model,
    wire_to_forward_kwargs,
)

HEADS = (
    "sequence_logits",
    "structure_logits",
    "secondary_structure_logits",
    "sasa_logits",
    "function_logits",
    "residue_logits",
    "embeddings",
)
SPEC = get_spec("esm3-open-2024-03")


def _assert_matches_fixture(out, name: str) -> None:
    exp = expected_logits()
    for head in HEADS:
        expected = exp[f"{name}/{head}"]
        got = getattr(out, head)[0].numpy()
        assert got.shape == expected.shape, head
        finite = np.isfinite(expected)
        assert finite.sum() > 0
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4, err_msg=f"{name}/{head}")


# ---------------------------------------------------------------------------------------------
# fidelity


@pytest.mark.parametrize("name", ["a", "b", "c", "d", "e", "f"])
def test_fixture_logits_all_heads(name):
    model = tiny_model()
    out = model.logits(**wire_to_forward_kwargs(case(name)["inputs"]))
    _assert_matches_fixture(out, name)


def test_fixture_generate_path_mocks_give_the_same_logits():
    """The sampler's mocks (mask/BOS/EOS structure, +inf coordinates, zeros) equal forward defaults."""
    model = tiny_model()
    inputs = case("b")["inputs"]
    n = len(inputs["sequence"])
    kw = default_inputs(n - 2)
    kw["sequence_tokens"] = torch.tensor(inputs["sequence"])[None]
    out = model.logits(**kw)
    _assert_matches_fixture(out, "b")


def test_output_shapes_and_dtypes():
    out = tiny_model().logits(**wire_to_forward_kwargs(case("f")["inputs"]))
    n = len(case("f")["inputs"]["sequence"])
    assert out.sequence_logits.shape == (1, n, 64)
    assert out.structure_logits.shape == (1, n, 4096)
    assert out.secondary_structure_logits.shape == (1, n, 11)
    assert out.sasa_logits.shape == (1, n, 19)
    assert out.function_logits.shape == (1, n, 8, 260)
    assert out.residue_logits.shape == (1, n, 1478)
    assert out.embeddings.shape == (1, n, 64)
    assert all(getattr(out, h).dtype == torch.float32 for h in HEADS)
    assert out.logits("secondary_structure") is out.secondary_structure_logits
    with pytest.raises(InvalidInputError, match="unknown track"):
        out.logits("coords")


def test_heads_subset_computes_only_the_requested_heads():
    model = tiny_model()
    kw = wire_to_forward_kwargs(case("c")["inputs"])
    full = model.logits(**kw)
    part = model.logits(**kw, heads=("sequence", "function"))
    torch.testing.assert_close(part.sequence_logits, full.sequence_logits, rtol=0, atol=0)
    torch.testing.assert_close(part.function_logits, full.function_logits, rtol=0, atol=0)
    torch.testing.assert_close(part.embeddings, full.embeddings, rtol=0, atol=0)
    assert part.structure_logits is None and part.residue_logits is None and part.sasa_logits is None
    with pytest.raises(InvalidInputError, match="not computed"):
        part.logits("structure")
    with pytest.raises(InvalidInputError, match="unknown track"):
        model.logits(**kw, heads=("coords",))


def test_hidden_states_last_equals_embeddings():
    out = tiny_model().logits(**wire_to_forward_kwargs(case("a")["inputs"]), return_hidden_states=True)
    assert len(out.hidden_states) == 2
    torch.testing.assert_close(out.hidden_states[-1], out.embeddings)


# ---------------------------------------------------------------------------------------------
# loading


def test_strict_state_dict_keys_match_official_file():
    sd = torch.load(fixture_dir() / "model.pth", map_location="cpu", weights_only=True)
    model = tiny_model()
    ours = model.state_dict()
    assert len(sd) == 79
    assert set(ours) == set(sd)
    assert all(ours[k].shape == sd[k].shape for k in sd)
    assert not any("inv_freq" in k for k in ours)
    assert model.num_parameters() == 1_047_820 == parameter_count(ESM3Config.tiny())


def test_full_size_architecture_keys_and_parameter_count():
    with torch.device("meta"):
        full = ESM3(ESM3Config.open_small())
    keys = full.state_dict()
    assert len(keys) == 539
    assert sum(p.numel() for p in full.parameters()) == 1_401_735_748 == parameter_count(ESM3Config.open_small())
    assert keys["transformer.blocks.0.geom_attn.proj.weight"].shape == (3840, 1536)
    assert keys["transformer.blocks.0.ffn.1.weight"].shape == (8192, 1536)
    assert "transformer.blocks.1.geom_attn.proj.weight" not in keys
    assert "transformer.norm.bias" not in keys


def test_missing_or_extra_key_is_a_load_error():
    sd = torch.load(fixture_dir() / "model.pth", map_location="cpu", weights_only=True)
    broken = dict(sd)
    del broken["transformer.blocks.1.ffn.3.weight"]
    with pytest.raises(ModelLoadError, match=r"ffn\.3\.weight"):
        ESM3.from_state_dict(broken, config=ESM3Config.tiny())
    extra = dict(sd)
    extra["transformer.blocks.0.attn.rotary.inv_freq"] = torch.zeros(8)
    with pytest.raises(ModelLoadError, match="inv_freq"):
        ESM3.from_state_dict(extra, config=ESM3Config.tiny())


def test_config_inferred_from_shapes():
    sd = torch.load(fixture_dir() / "model.pth", map_location="cpu", weights_only=True)
    from plmserve.models.esm3.model import infer_config

    cfg = infer_config(sd)
    assert (cfg.d_model, cfg.v_heads, cfg.n_layers, cfg.residue_annotation_vocab_size) == (64, 4, 2, 1478)
    with pytest.raises(ModelLoadError, match="not an ESM3"):
        infer_config({"foo": torch.zeros(1)})


def _model_dir_with_fixture(root, layout: str):
    if layout == "slug":
        target = root / "esm3-open-2024-03"
        target.mkdir(parents=True)
        shutil.copy(fixture_dir() / "model.pth", target / C.ESM3_OPEN_WEIGHTS_FILE)
        shutil.copy(fixture_dir() / "config.json", target / "config.json")
    else:  # hub snapshot layout under an alias directory
        target = root / "esm3_sm_open_v1"
        (target / "data" / "weights").mkdir(parents=True)
        shutil.copy(fixture_dir() / "model.pth", target / C.ESM3_OPEN_WEIGHTS_REPO_PATH)
        shutil.copy(fixture_dir() / "config.json", target / "config.json")
    return root


@pytest.mark.parametrize("layout", ["slug", "snapshot"])
def test_model_manager_loads_local_official_file(tmp_path, layout):
    settings = Settings(model_dir=_model_dir_with_fixture(tmp_path, layout), device="cpu")
    model = ModelManager(settings).get("esm3-sm-open-v1", family="esm3")
    assert isinstance(model, ESM3) and not model.is_dummy
    assert model.dtype == torch.float32
    _assert_matches_fixture(model.logits(**wire_to_forward_kwargs(case("c")["inputs"])), "c")


def test_load_from_hub_cache(tmp_path, monkeypatch):
    """A pre-filled Hugging Face cache is used offline (snapshot layout data/weights/*.pth)."""
    import huggingface_hub.constants as hfc

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "models--biohub--esm3-sm-open-v1"
    snap = repo_dir / "snapshots" / revision / "data" / "weights"
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    shutil.copy(fixture_dir() / "model.pth", snap / C.ESM3_OPEN_WEIGHTS_FILE)
    shutil.copy(fixture_dir() / "config.json", snap / "config.json")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    settings = Settings(model_dir=tmp_path / "empty", offline=True, device="cpu")
    path = locate_weights(SPEC, settings)
    assert path.name == C.ESM3_OPEN_WEIGHTS_FILE and "biohub" in str(path)
    model = load_esm3(SPEC, settings)
    _assert_matches_fixture(model.logits(**wire_to_forward_kwargs(case("d")["inputs"])), "d")


def test_missing_weights_message_offline(tmp_path):
    settings = Settings(model_dir=tmp_path, offline=True, device="cpu")
    with pytest.raises(WeightsNotFoundError) as info:
        ModelManager(settings).get("esm3-open")
    msg = str(info.value)
    assert info.value.status_code == 503
    assert "esm3-open-2024-03" in msg and str(tmp_path) in msg
    assert "EvolutionaryScale/esm3-sm-open-v1" in msg and "biohub/esm3-sm-open-v1" in msg
    assert "offline" in msg and "HF_TOKEN" in msg and "--load-format dummy" in msg


def test_gated_repo_message(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    def fake_download(repo_id, filename, local_files_only=False, **kw):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        request = httpx.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/{filename}")
        raise GatedRepoError(f"Access to {repo_id} is restricted", response=httpx.Response(403, request=request))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)  # also means offline (as for ESM-2)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("plmserve.models.esm3.loader.hub_unreachable", lambda: None)  # as if online
    with pytest.raises(WeightsNotFoundError) as info:
        locate_weights(SPEC, Settings(model_dir=tmp_path, offline=False))
    msg = str(info.value)
    assert "EvolutionaryScale/esm3-sm-open-v1 is gated" in msg
    assert "accept the licence at https://huggingface.co/EvolutionaryScale/esm3-sm-open-v1" in msg
    assert "HF_TOKEN" in msg


def test_corrupt_file_is_a_load_error(tmp_path):
    bad = tmp_path / C.ESM3_OPEN_WEIGHTS_FILE
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="could not read"):
        ESM3.from_pretrained(bad)
    with pytest.raises(WeightsNotFoundError):
        ESM3.from_pretrained(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# dummy weights


def test_dummy_is_seeded_and_flagged():
    a = ESM3.dummy(ESM3Config.tiny(), seed=3)
    b = ESM3.dummy(ESM3Config.tiny(), seed=3)
    c = ESM3.dummy(ESM3Config.tiny(), seed=4)
    assert a.is_dummy
    kw = default_inputs(10)
    torch.testing.assert_close(a.logits(**kw).sequence_logits, b.logits(**kw).sequence_logits, rtol=0, atol=0)
    assert not torch.equal(a.logits(**kw).sequence_logits, c.logits(**kw).sequence_logits)
    assert a.num_parameters() == 1_047_820


def test_load_format_dummy_through_registry_with_reduced_config():
    spec = dataclasses.replace(SPEC, config={**SPEC.config, **ESM3Config.tiny().to_dict()})
    model = load_esm3(spec, Settings(load_format="dummy", device="cpu"))
    assert model.is_dummy and model.config == ESM3Config.tiny()
    out = model.logits(**default_inputs(5, batch_size=2))
    assert out.sequence_logits.shape == (2, 7, 64)
    assert torch.isfinite(out.structure_logits).all()


# ---------------------------------------------------------------------------------------------
# padded batches


def _random_prompt(num_residues: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kw = default_inputs(num_residues)
    kw["sequence_tokens"][0, 1:-1] = torch.randint(4, 24, (num_residues,), generator=g)
    kw["sequence_tokens"][0, 2] = C.SEQUENCE_MASK_TOKEN
    kw["structure_tokens"][0, 3] = 17
    kw["ss8_tokens"][0, 4] = 5
    kw["sasa_tokens"][0, 5] = 9
    kw["structure_coords"][0, 1:-1, :3] = torch.randn(num_residues, 3, 3, generator=g) * 3
    kw["structure_coords"][0, 6] = float("nan")
    kw["per_res_plddt"] = per_residue_plddt_from_coordinates(kw["structure_coords"])
    kw["function_tokens"][0, 3] = torch.randint(4, 260, (8,), generator=g)
    kw["residue_annotation_tokens"][0, 5, :2] = torch.tensor([17, 345])
    return kw


_PAD = {
    "sequence_tokens": C.SEQUENCE_PAD_TOKEN,
    "structure_tokens": C.STRUCTURE_PAD_TOKEN,
    "ss8_tokens": 0,
    "sasa_tokens": 0,
    "function_tokens": 0,
    "residue_annotation_tokens": 0,
    "structure_coords": float("inf"),
    "per_res_plddt": 0.0,
}


def test_padded_batch_gives_the_unpadded_logits():
    model = tiny_model()
    short, long_ = _random_prompt(13, 1), _random_prompt(24, 2)
    n_short, n_long = 15, 26
    batch = {}
    for key, value in _PAD.items():
        t = short[key]
        pad_shape = list(t.shape)
        pad_shape[1] = n_long - n_short
        padded = torch.cat([t, torch.full(pad_shape, value, dtype=t.dtype)], dim=1)
        batch[key] = torch.cat([padded, long_[key]], dim=0)
    batch["average_plddt"] = torch.tensor(1.0)
    mask = torch.ones(2, n_long, dtype=torch.bool)
    mask[0, n_short:] = False

    out = model.logits(**batch, attention_mask=mask)
    single_short, single_long = model.logits(**short), model.logits(**long_)
    for head in HEADS:
        torch.testing.assert_close(getattr(out, head)[0, :n_short], getattr(single_short, head)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(getattr(out, head)[1], getattr(single_long, head)[0], rtol=1e-4, atol=1e-5)
    # without the mask (the official batch path) the padded row is wrong
    unmasked = model.logits(**batch)
    assert (unmasked.sequence_logits[0, :n_short] - single_short.sequence_logits[0]).abs().max() > 1e-2


def test_sequence_id_is_a_hard_mask_in_self_attention_only():
    """Official semantics: sequence_id blocks self-attention across ids, but is only a +1 bias in
    the geometric attention (coordinates of the other id still matter)."""
    model = tiny_model()
    kw = _random_prompt(20, 5)
    seq_id = torch.zeros(1, 22, dtype=torch.long)
    seq_id[0, 11:] = 1
    no_coords = {k: v for k, v in kw.items() if k not in ("structure_coords", "per_res_plddt")}
    base = model.logits(**no_coords, sequence_id=seq_id)
    changed = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in no_coords.items()}
    changed["sequence_tokens"][0, 12:21] = 6
    out = model.logits(**changed, sequence_id=seq_id)
    torch.testing.assert_close(out.sequence_logits[0, :11], base.sequence_logits[0, :11], rtol=0, atol=1e-6)
    assert (out.sequence_logits[0, 12:] - base.sequence_logits[0, 12:]).abs().max() > 1e-3

    with_coords = model.logits(**kw, sequence_id=seq_id)
    moved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    moved["structure_coords"][0, 12:21, :3] += torch.randn(9, 3, 3)
    out = model.logits(**moved, sequence_id=seq_id)
    assert (out.sequence_logits[0, 1:11] - with_coords.sequence_logits[0, 1:11]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# geometry


def _random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def test_logits_invariant_to_rigid_motion_of_the_coordinates():
    model = tiny_model()
    kw = wire_to_forward_kwargs(case("c")["inputs"])
    base = model.logits(**kw)
    rot = _random_rotation(7)
    moved = dict(kw)
    moved["structure_coords"] = kw["structure_coords"] @ rot.T + torch.tensor([10.0, -4.0, 3.0])
    out = model.logits(**moved)
    for head in HEADS:
        torch.testing.assert_close(getattr(out, head), getattr(base, head), rtol=1e-4, atol=2e-4)
    # a mirror image is not a rigid motion: the geometric attention sees it
    mirrored = dict(kw)
    mirrored["structure_coords"] = kw["structure_coords"] * torch.tensor([-1.0, 1.0, 1.0])
    assert (model.logits(**mirrored).sequence_logits - base.sequence_logits).abs().max() > 1e-3


def test_backbone_frames():
    n = torch.tensor([1.458, 0.0, 0.0])
    ca = torch.tensor([0.0, 0.0, 0.0])
    c = torch.tensor([-0.55, 1.42, 0.0])
    coords = torch.stack(
        [
            torch.stack([n, ca, c]),
            torch.full((3, 3), float("nan")),
            torch.stack([n, ca, c]) + 2e6,  # >= 1e6: frameless
            torch.stack([n, ca, c]) - 2e6,  # <= -1e6 still has a frame (official signed check)
        ]
    )[None]
    rot, trans, has_frame = backbone_frames(coords)
    assert has_frame.tolist() == [[True, False, False, True]]
    r = rot[0, 0]
    torch.testing.assert_close(r.T @ r, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.det(r) == pytest.approx(1.0, abs=1e-6)
    e0 = (ca - c) / (ca - c).norm()
    torch.testing.assert_close(r[:, 0], e0)  # x axis from C to CA, as a column
    assert torch.dot(r[:, 1], n - ca) > 0 and abs(torch.dot(r[:, 2], n - ca)) < 1e-5
    torch.testing.assert_close(trans[0, 0], ca)
    assert torch.isfinite(rot).all() and torch.isfinite(trans).all()


def test_no_coordinates_means_no_geometric_update():
    """+inf and NaN coordinates are both frameless: identical outputs."""
    model = tiny_model()
    kw = default_inputs(8)
    a = model.logits(**kw)
    kw["structure_coords"] = torch.full_like(kw["structure_coords"], float("nan"))
    b = model.logits(**kw)
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# defaults and input checks


def test_default_tokens():
    assert default_tokens("sequence", 3).tolist() == [0, 32, 32, 32, 2]
    assert default_tokens("structure", 2).tolist() == [4098, 4096, 4096, 4097]
    assert default_tokens("secondary_structure", 2).tolist() == [0, 0, 0, 0]
    assert default_tokens("function", 1).shape == (3, 8)
    assert default_tokens("residue_annotation", 1).shape == (3, 16)
    with pytest.raises(InvalidInputError):
        default_tokens("coordinates", 3)
    kw = default_inputs(4, batch_size=3)
    assert kw["structure_coords"].shape == (3, 6, 37, 3)
    assert (kw["per_res_plddt"] == 0).all()


def test_structure_override_from_sequence():
    """BOS/EOS/pad/chain-break structure tokens are forced from the sequence; -1 means mask."""
    model = tiny_model()
    seq = torch.tensor([[0, 5, 6, 31, 7, 2, 1]])
    arbitrary = torch.tensor([[100, -1, 200, 300, 400, 500, 600]])
    forced = torch.tensor([[4098, 4096, 200, 4100, 400, 4097, 4099]])
    a = model.logits(sequence_tokens=seq, structure_tokens=arbitrary)
    b = model.logits(sequence_tokens=seq, structure_tokens=forced)
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "at least one"),
        ({"sequence_tokens": torch.tensor([[0, 5, 64, 2]])}, r"sequence token 64 at item 0, position 2"),
        ({"structure_tokens": torch.tensor([[4098, -2, 4097]])}, r"structure token -2 at item 0, position 1"),
        ({"function_tokens": torch.full((1, 3, 8), 260)}, "function token 260"),
        ({"sequence_tokens": torch.zeros(1, 4, dtype=torch.long), "ss8_tokens": torch.zeros(1, 5, dtype=torch.long)}, "ss8_tokens has shape"),
        ({"sequence_tokens": torch.zeros(2, 4, dtype=torch.long), "sasa_tokens": torch.zeros(3, 4, dtype=torch.long)}, "batch size"),
        ({"sequence_tokens": torch.zeros(4, dtype=torch.long)}, "batch dimension"),
        ({"sequence_tokens": torch.zeros(1, 4)}, "integer token ids"),
        ({"sequence_tokens": torch.zeros(1, 4, dtype=torch.long), "average_plddt": torch.ones(3)}, "average_plddt"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        tiny_model().logits(**kwargs)


def test_bf16_runs_and_stays_close_to_fp32():
    fp32 = tiny_model()
    bf16 = ESM3.from_pretrained(fixture_dir(), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    # .to(bf16) rounds the rotary inv_freq, as the official GPU path does
    assert bf16.transformer.blocks[0].attn.rotary.inv_freq.dtype == torch.bfloat16
    kw = wire_to_forward_kwargs(case("c")["inputs"])
    a, b = fp32.logits(**kw), bf16.logits(**kw)
    assert b.sequence_logits.dtype == torch.float32
    assert torch.isfinite(b.structure_logits).all()
    assert (a.sequence_logits - b.sequence_logits).abs().max() < 0.15
    assert math.isfinite(float(b.embeddings.abs().max()))


def test_cases_cover_every_fixture():
    assert sorted(c["name"] for c in cases()) == ["a", "b", "c", "d", "e", "f"]
    assert json.loads((fixture_dir() / "config.json").read_text())["n_heads"] == 4
