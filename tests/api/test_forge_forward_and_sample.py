"""``POST /api/v1/forward_and_sample`` (ESM3) with the tiny fixture model: the sampled tokens and
their statistics against the official logits of the fixture (``expected_logits.npz``, the official
``esm`` 3.2.1 model) and against the trunk called directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from plmserve.api.app import create_app
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.forward_sample import SamplingTrackConfig, forward_and_sample
from plmserve.models.esm3.sampler import ProteinTokens
from plmserve.settings import Settings
from tests.conftest import shared_path
from tests.models.esm3.test_generate_fixtures import load_fixture_model

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FIXTURES = shared_path("fixtures", "esm3")
CASES = {c["name"]: c for c in json.loads((FIXTURES / "inputs.json").read_text())}
EXPECTED = np.load(FIXTURES / "expected_logits.npz")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return load_fixture_model()


@pytest.fixture(scope="module")
def client(model):
    app = create_app(Settings(api_keys=[KEY], esm3_batch_window_ms=5))
    app.state.models.put("esm3-open-2024-03", model)
    from tests.models.esmc._fixture import engine

    app.state.models.put("esmc-300m", engine("official"))
    with TestClient(app) as c:
        yield c


def _track(**kw) -> dict:
    cfg = {"temperature": 1.0, "top_p": 1.0, "only_sample_masked_tokens": True, "invalid_ids": [],
           "topk_logprobs": 0}
    cfg.update(kw)
    return cfg


def _body(inputs: dict, sampling: dict, per_residue: bool = False, mean: bool = False, **extra) -> dict:
    full = {t: None for t in ("sequence", "structure", "secondary_structure", "sasa", "function")}
    full.update(sampling)
    body = {"model": "esm3-sm-open-v1", "inputs": inputs, "sampling_config": full,
            "embedding_config": {"sequence": mean, "per_residue": per_residue}}
    body.update(extra)
    return body


def _reference(logits: np.ndarray, tokens: list[int], track: str, invalid=(), only_masked=True, k=0):
    """The official 3.2.1 metadata at temperature 0 computed from reference logits [N, V]."""
    lg = torch.tensor(logits, dtype=torch.float32).clone()
    vocab_n = min(C.TRACK_VOCAB_SIZE[track], lg.shape[-1])
    bad = {i for i in set(C.TRACK_SPECIAL_IDS[track]) | set(invalid) if i < lg.shape[-1]}
    bad |= set(range(vocab_n, lg.shape[-1]))
    lg[:, sorted(bad)] = -torch.inf
    lp = lg.log_softmax(-1)
    tok = torch.tensor(tokens)
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[0] = mask[-1] = False
    if only_masked:
        mask &= tok == C.TRACK_MASK_TOKEN[track]
    out = torch.where(mask, lg.argmax(-1), tok)
    logprob = torch.zeros(len(tokens))
    logprob[mask] = lp[mask, out[mask]]
    entropy = torch.distributions.Categorical(logits=lp).entropy()
    top = torch.topk(lp, k, dim=-1) if k else None
    return out, logprob, entropy, top


@pytest.mark.parametrize("name", ["a", "b", "c", "f"])
def test_sequence_at_temperature_0_matches_official_logits(client, name):
    inputs = CASES[name]["inputs"]
    body = _body(inputs, {"sequence": _track(temperature=0.0, topk_logprobs=5)}, per_residue=True, mean=True)
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    tokens, logprob, entropy, top = _reference(EXPECTED[f"{name}/sequence_logits"], inputs["sequence"], "sequence", k=5)
    seq = data["sequence"]
    assert seq["tokens"] == tokens.tolist()
    assert 32 not in seq["tokens"]  # every mask filled, nothing else changed
    assert [t for t, s in zip(seq["tokens"], inputs["sequence"]) if s != 32] == [s for s in inputs["sequence"] if s != 32]
    np.testing.assert_allclose(seq["logprobs"], logprob, atol=1e-4)
    np.testing.assert_allclose(seq["entropy"], entropy, atol=1e-4)
    np.testing.assert_allclose(seq["topk_logprobs"], top.values, atol=1e-4)
    assert np.array(seq["topk_tokens"]).shape == (len(tokens), 5)
    emb = EXPECTED[f"{name}/embeddings"]
    np.testing.assert_allclose(data["embeddings"]["per_residue"], emb, atol=1e-4)
    np.testing.assert_allclose(data["embeddings"]["sequence"], emb.mean(0), atol=1e-4)
    # tracks not sampled: echoed when given, null when absent
    assert data["structure"] is None and data["sasa"] is None and data["secondary_structure"] is None
    if name == "f":
        assert data["function"]["tokens"] == inputs["function"] and data["function"]["logprobs"] is None


def test_structure_and_ss8_invalid_ids_and_unmasked(client, model):
    inputs = CASES["d"]["inputs"]
    struct = inputs["structure"]
    body = _body(inputs, {"structure": _track(temperature=0.0, invalid_ids=[5, 6, 7]),
                          "secondary_structure": _track(temperature=0.0, only_sample_masked_tokens=False)})
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    # the trunk called directly (its structure logits equal the official ones on the stored rows)
    with torch.no_grad():
        out = model(**ProteinTokens.from_lists(inputs).logits_kwargs())
    ref = out.structure_logits[0].float().numpy()
    rows = EXPECTED["d/wide_rows"]
    np.testing.assert_allclose(ref[rows], EXPECTED["d/structure_logits"][rows], atol=1e-4)
    tokens, logprob, entropy, _ = _reference(ref, struct, "structure", invalid=[5, 6, 7])
    assert data["structure"]["tokens"] == tokens.tolist()
    changed = [i for i, (a, b) in enumerate(zip(data["structure"]["tokens"], struct)) if a != b]
    assert changed == [i for i, t in enumerate(struct) if t == C.STRUCTURE_MASK_TOKEN]
    assert not {5, 6, 7} & set(data["structure"]["tokens"]) and data["structure"]["topk_logprobs"] is None
    np.testing.assert_allclose(data["structure"]["logprobs"], logprob, atol=1e-4)
    np.testing.assert_allclose(data["structure"]["entropy"], entropy, atol=1e-4)
    ss_tokens, ss_lp, _, _ = _reference(EXPECTED["d/secondary_structure_logits"], [0] * len(struct),
                                        "secondary_structure", only_masked=False)
    assert data["secondary_structure"]["tokens"] == ss_tokens.tolist()
    assert all(3 <= t <= 10 for t in data["secondary_structure"]["tokens"][1:-1])
    np.testing.assert_allclose(data["secondary_structure"]["logprobs"], ss_lp, atol=1e-4)
    assert data["sequence"]["tokens"] == inputs["sequence"]


def test_route_equals_engine_called_directly_and_seed(client, model):
    inputs = {"sequence": [0] + [32] * 30 + [2]}
    cfg = _track(temperature=0.7, top_p=0.9, topk_logprobs=3, invalid_ids=[23, 24])
    body = _body(inputs, {"sequence": cfg}, seed=1234)
    first = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH).json()
    again = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH).json()
    assert first == again
    samples, _ = forward_and_sample(model, ProteinTokens.from_lists(inputs),
                                    {"sequence": SamplingTrackConfig(**cfg)}, seed=1234)
    direct = samples["sequence"]
    assert first["sequence"]["tokens"] == direct.tokens.tolist()
    np.testing.assert_allclose(first["sequence"]["logprobs"], direct.logprobs, atol=1e-6)
    assert not {23, 24} & set(first["sequence"]["tokens"][1:-1])
    assert all(4 <= t < 31 for t in first["sequence"]["tokens"][1:-1])
    # top-p and invalid ids show in the log-probs: excluded ids have -inf, never in the top-k
    assert all(-1e30 < lp <= 0 for lp in first["sequence"]["logprobs"][1:-1])
    assert not {23, 24} & {t for row in first["sequence"]["topk_tokens"] for t in row}
    other = client.post("/api/v1/forward_and_sample", json=dict(body, seed=99), headers=AUTH).json()
    assert other["sequence"]["tokens"] != first["sequence"]["tokens"]


@pytest.mark.parametrize(
    "change, status, message",
    [
        ({"sampling_config": {"function": _track(temperature=0.0)}}, 400, "temperature 0"),
        ({"sampling_config": {"function": _track(topk_logprobs=33)}}, 400, "topk_logprobs"),
        ({"sampling_config": {"sequence": _track(topk_logprobs=33)}}, 400, "topk_logprobs"),
        ({"sampling_config": {"sequence": _track(top_p=0)}}, 400, "top_p"),
        ({"sampling_config": {"sequence": _track(temperature=-1)}}, 400, "temperature"),
        ({"sampling_config": {"sequence": _track(invalid_ids=list(range(64)))}}, 400, "invalid_ids"),
        ({"sampling_config": {"sequence": _track(temperature="hot")}}, 400, "temperature"),
        ({"sampling_config": {"coordinates": _track()}}, 400, "unknown track"),
        ({"inputs": {"sequence": [0, 5, 99, 2]}}, 400, "position 2"),
        ({"inputs": {"sequence": "MKT"}}, 400, "sequence"),
        ({"inputs": {}}, 400, "no track"),
        ({"model": "esm2-8m"}, 400, "ESM3 and ESM C models"),
        ({"model": "nope"}, 404, "nope"),
        ({"seed": -1}, 400, "seed"),
        ({"seed": 2**70}, 400, "seed"),
        ({"sampling_config": {"secondary_structure": _track(topk_logprobs=12)}}, 400, "11 ids"),
        ({"sampling_config": "x"}, 400, "sampling_config"),
        ({"embedding_config": None}, 400, "embedding_config"),
    ],
)
def test_bad_requests_are_4xx(client, change, status, message):
    body = _body({"sequence": [0, 32, 5, 2]}, {"sequence": _track()})
    body.update(change)
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["detail"]


def test_auth_and_bad_json(client):
    body = _body({"sequence": [0, 32, 5, 2]}, {"sequence": _track()})
    assert client.post("/api/v1/forward_and_sample", json=body).status_code == 401
    resp = client.post("/api/v1/forward_and_sample", content=b"{nope", headers=AUTH)
    assert resp.status_code == 400


def test_extreme_values_answer_200(client):
    """Out-of-range invalid ids are ignored, any temperature > 0 samples allowed ids, and top-k over
    the allowed ids gives -inf entries, sent as -Infinity (read back as -inf by Python's json)."""
    for cfg in (_track(invalid_ids=[2**70, -5, 40]), _track(temperature=1e300), _track(temperature=1e-30),
                _track(topk_logprobs=32)):
        body = _body({"sequence": [0, 32, 5, 32, 32, 2]}, {"sequence": cfg}, seed=3)
        resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
        assert resp.status_code == 200, resp.text
        seq = json.loads(resp.text)["sequence"]
        assert all(4 <= t < 31 for t in seq["tokens"][1:-1]), cfg
        assert all(np.isfinite(seq["logprobs"]))
    top = np.array(seq["topk_logprobs"])
    assert top.shape == (6, 32) and np.isneginf(top[:, -1]).all() and np.isfinite(top[:, 0]).all()
    # at T -> 0 the draw is the argmax
    cold = _body({"sequence": [0, 32, 5, 32, 32, 2]}, {"sequence": _track(temperature=1e-30)}, seed=3)
    zero = _body({"sequence": [0, 32, 5, 32, 32, 2]}, {"sequence": _track(temperature=0.0)})
    assert (client.post("/api/v1/forward_and_sample", json=cold, headers=AUTH).json()["sequence"]["tokens"]
            == client.post("/api/v1/forward_and_sample", json=zero, headers=AUTH).json()["sequence"]["tokens"])


def test_openapi_documents_the_body(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/forward_and_sample"]["post"]
    props = op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"model", "inputs", "sampling_config", "embedding_config"} <= set(props)


def test_sasa_values_match_official_logits(client):
    """sasa is decoded to Å² from the official fixture logits (case e: some sasa positions masked)."""
    inputs = CASES["e"]["inputs"]
    sasa_in = torch.tensor(inputs["sasa"])
    body = _body(inputs, {"sasa": _track(temperature=0.3, top_p=0.5, invalid_ids=[18])})
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    got = json.loads(resp.text)["sasa"]  # Infinity is allowed in this response
    lg = torch.tensor(EXPECTED["e/sasa_logits"])
    lg[:, [0, 1, 2, 18]] = -torch.inf  # specials and invalid id 18
    p = lg.softmax(-1)
    bins = torch.tensor([0.0, *C.SASA_BOUNDARIES])
    want = (p[:, 3:-1] * (bins[:-1] + bins[1:]) / 2).sum(-1)
    sampled = torch.zeros(len(sasa_in), dtype=torch.bool)
    sampled[1:-1] = sasa_in[1:-1] == 0
    want[~sampled] = torch.inf
    assert sampled.any() and (~sampled[1:-1]).any()
    np.testing.assert_allclose(got["tokens"], want, atol=1e-4)  # temperature and top-p are not used
    np.testing.assert_allclose(got["entropy"], -(p * lg.log_softmax(-1)).nan_to_num().sum(-1), atol=1e-4)
    assert got["logprobs"] is None and got["topk_logprobs"] is None


def test_function_matches_official_rule(client, model):
    """function [N, 8]: the <none> rule and arg-max per depth on the trunk's logits (equal to the
    official fixture logits on the stored rows), log-probs at temperature 1, one-hot outside the mask."""
    inputs = CASES["f"]["inputs"]
    body = _body(inputs, {"function": _track(temperature=1.0, topk_logprobs=3)})
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    got = resp.json()["function"]
    with torch.no_grad():
        out = model(**ProteinTokens.from_lists(inputs).logits_kwargs())
    lg = out.function_logits[0].float().reshape(-1, 8, 260)
    rows = EXPECTED["f/wide_rows"]
    np.testing.assert_allclose(lg[rows].numpy(), EXPECTED["f/function_logits"][rows], atol=1e-4)
    log_p = (lg / 1.0).log_softmax(-1)
    none = log_p[..., 3].exp().mean(-1) > 0.05
    log_p[~none, :, 3] = -torch.inf
    ids = log_p.argmax(-1)
    ids[none] = 3
    tok = torch.tensor(inputs["function"])
    mask = (tok == 0).all(-1)
    mask[0] = mask[-1] = False
    assert mask.any() and (~mask[1:-1]).any() and none[mask].any() and (~none[mask]).any()
    want = torch.where(mask[:, None], ids, tok)
    assert got["tokens"] == want.tolist()
    fixed = torch.full_like(log_p, -torch.inf).scatter(-1, tok[..., None], 0.0)
    log_p = torch.where(mask[:, None, None], log_p, fixed)
    lp = torch.where(mask[:, None], log_p.gather(-1, want[..., None])[..., 0], torch.zeros(want.shape))
    np.testing.assert_allclose(got["logprobs"], lp, atol=1e-4)
    np.testing.assert_allclose(got["entropy"], torch.distributions.Categorical(logits=log_p).entropy(), atol=1e-4)
    np.testing.assert_allclose(np.array(got["topk_logprobs"], dtype=float), torch.topk(log_p, 3).values, atol=1e-4)
    assert np.array(got["topk_tokens"]).shape == (len(tok), 8, 3)


def test_esmc_sequence_track_matches_official_fixture(client):
    """ESM C through the same route (sequence track only): temperature 0 is the arg-max of the official
    ESM C fixture logits at the mask positions, with its log-probs; embeddings as ESM C ``logits``."""
    from tests.models.esmc._fixture import close, expected, inputs

    fx = next(i for i, ids in enumerate(inputs()["token_ids"]) if 32 in ids)
    ids = inputs()["token_ids"][fx]
    body = _body({"sequence": ids}, {"sequence": _track(temperature=0.0, topk_logprobs=2)}, per_residue=True,
                 mean=True, model="esmc-300m-2024-12")
    resp = client.post("/api/v1/forward_and_sample", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    tokens, logprob, entropy, top = _reference(expected()[f"sequence_logits_{fx}"], ids, "sequence", k=2)
    assert data["sequence"]["tokens"] == tokens.tolist() and 32 not in tokens.tolist()
    np.testing.assert_allclose(data["sequence"]["logprobs"], logprob, atol=1e-4)
    np.testing.assert_allclose(data["sequence"]["entropy"], entropy, atol=1e-4)
    np.testing.assert_allclose(data["sequence"]["topk_logprobs"], top.values, atol=1e-4)
    assert close(data["embeddings"]["per_residue"], expected()[f"embeddings_{fx}"])
    assert data["structure"] is None and data["function"] is None
    for change, status in (({"sampling_config": {"structure": _track()}}, 422),
                           ({"inputs": {"sequence": ids, "coordinates": [[[0.0] * 3] * 37] * len(ids)}}, 422),
                           ({"inputs": {"sequence": [0, 99, 2]}}, 400),
                           ({"sampling_config": {"sequence": _track(top_p=5)}}, 400)):
        bad = dict(body, **change)
        resp = client.post("/api/v1/forward_and_sample", json=bad, headers=AUTH)
        assert resp.status_code == status, (change, resp.text)
