"""Contract test: the official ``esm`` SDK's Forge client against a live plmserve server.

The official package pins old torch/transformers, so it lives in its own virtual environment; point
``PLMSERVE_ESM_SDK_PYTHON`` at that interpreter (default ``/tmp/esmvenv/bin/python``). Set up
(docs/esm3.md)::

    python -m venv --system-site-packages /tmp/esmvenv
    /tmp/esmvenv/bin/pip install --no-deps esm==3.2.1.post1
    /tmp/esmvenv/bin/pip install einops "biotite>=1.0.0" msgpack-numpy biopython scikit-learn \
        brotli attrs cloudpathlib tenacity zstd

The test starts uvicorn with the tiny fixture model on a free port and runs a client script in
that interpreter: ``ESM3ForgeInferenceClient(model=..., url=..., token=...)`` with
``generate`` (ESMProteinTensor in, out) on fixture records, a no-mask error, and ``logits``.
It is skipped only when no interpreter with the ``esm`` package is available.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from plmserve.api.app import create_app
from plmserve.settings import Settings
from tests.client.support import LiveServer, run_sdk_script
from tests.models.esm3.test_generate_fixtures import RECORDS, load_fixture_model

SDK_PYTHON = os.environ.get("PLMSERVE_ESM_SDK_PYTHON", "/tmp/esmvenv/bin/python")

CLIENT_SCRIPT = r'''
import json, sys, math
import torch
from esm.sdk.api import ESMProteinTensor, GenerationConfig, LogitsConfig, ESMProteinError
from esm.sdk.forge import ESM3ForgeInferenceClient

url, names_json = sys.argv[1], sys.argv[2]
records = json.loads(open(names_json).read())
client = ESM3ForgeInferenceClient(model="esm3-sm-open-v1", url=url, token="test-key")

def tensor(x, dtype):
    if x is None:
        return None
    if dtype is torch.float32:
        x = [[[math.nan if v is None else v for v in atom] for atom in row] for row in x]
    return torch.tensor(x, dtype=dtype)

def protein(inputs):
    return ESMProteinTensor(
        sequence=tensor(inputs["sequence"], torch.long),
        structure=tensor(inputs["structure"], torch.long),
        secondary_structure=tensor(inputs["secondary_structure"], torch.long),
        sasa=tensor(inputs["sasa"], torch.long),
        function=tensor(inputs["function"], torch.long),
        residue_annotations=tensor(inputs["residue_annotation"], torch.long),
        coordinates=tensor(inputs["coordinates"], torch.float32),
    )

def listed(t):
    if t is None:
        return None
    if t.is_floating_point():
        return [[[None if math.isnan(v) else v for v in atom] for atom in row] for row in t.tolist()]
    return t.tolist()

out = {}
for name, req in records.items():
    cfg = GenerationConfig(track=req["track"], num_steps=req["num_steps"], temperature=req["temperature"],
                           top_p=req["top_p"], schedule=req["schedule"], strategy=req["strategy"],
                           temperature_annealing=req["temperature_annealing"], invalid_ids=req["invalid_ids"],
                           condition_on_coordinates_only=req["condition_on_coordinates_only"])
    res = client.generate(protein(req["inputs"]), cfg)
    if isinstance(res, ESMProteinError):
        out[name] = {"error": [res.error_code, res.error_msg]}
    else:
        out[name] = {"outputs": {
            "sequence": listed(res.sequence), "structure": listed(res.structure),
            "secondary_structure": listed(res.secondary_structure), "sasa": listed(res.sasa),
            "function": listed(res.function), "residue_annotation": listed(res.residue_annotations),
            "coordinates": listed(res.coordinates)}}
lg = client.logits(protein(records["b_sequence_cosine_4"]["inputs"]),
                   LogitsConfig(sequence=True, return_embeddings=True), return_bytes=True)
out["logits"] = {"sequence_shape": list(lg.logits.sequence.shape), "embeddings_shape": list(lg.embeddings.shape)}
print(json.dumps(out))
'''


def _sdk_available() -> bool:
    if not Path(SDK_PYTHON).exists():
        return False
    probe = subprocess.run([SDK_PYTHON, "-c", "import esm.sdk.forge"], capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.mark.slow
def test_official_forge_client_round_trip(tmp_path):
    if not _sdk_available():
        pytest.skip(f"official esm SDK not installed at {SDK_PYTHON} (set PLMSERVE_ESM_SDK_PYTHON)")

    app = create_app(Settings(api_keys=["test-key"], data_dir=tmp_path))
    app.state.models.put("esm3-open-2024-03", load_fixture_model())
    with LiveServer(app) as server:
        names = ["a_sequence_cosine_8", "extra_d_structure_with_coords_from_c", "e_secondary_structure",
                 "extra_f_function_temp1", "extra_c_sequence_no_masks", "b_sequence_cosine_4"]
        reqs = tmp_path / "requests.json"
        reqs.write_text(json.dumps({n: RECORDS[n]["request"] for n in names}))
        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        env = dict(os.environ, DISABLE_ITERATIVE_SAMPLING_TQDM="1")
        got = run_sdk_script(SDK_PYTHON, script, server.url, str(reqs), env=env)
    for name in names:
        record = RECORDS[name]
        if "error" in record:
            code, message = got[name]["error"]
            assert 400 <= code < 500 and record["error"]["error_msg"] in message
        else:
            assert got[name]["outputs"] == record["outputs"], name
    n = len(RECORDS["b_sequence_cosine_4"]["request"]["inputs"]["sequence"])
    assert got["logits"]["sequence_shape"] == [n, 64]
    assert got["logits"]["embeddings_shape"] == [n, 64]


# --- ESM C clients and ESMProtein-level calls (issue 10) ------------------------------------------

ESMC_SCRIPT = r'''
import json, sys
import torch
from esm.sdk.api import ESMProtein, ESMProteinError, GenerationConfig, LogitsConfig
from esm.sdk.forge import ESM3ForgeInferenceClient, ESMCForgeInferenceClient

url, seqs = sys.argv[1], json.loads(sys.argv[2])
out = {}
c = ESMCForgeInferenceClient(model="esmc-300m-2024-12", url=url, token="test-key")
for i, s in enumerate(seqs):
    t = c.encode(ESMProtein(sequence=s))
    assert not isinstance(t, ESMProteinError), t
    lg = c.logits(t, LogitsConfig(sequence=True, return_embeddings=True, return_hidden_states=True))
    assert not isinstance(lg, ESMProteinError), lg
    plain = c.logits(t, LogitsConfig(sequence=True, return_embeddings=True), return_bytes=False)
    back = c.decode(t)
    out[f"esmc_{i}"] = {"tokens": t.sequence.tolist(), "logits": lg.logits.sequence.tolist(),
                        "embeddings": lg.embeddings.tolist(), "hidden_shape": list(lg.hidden_states.shape),
                        "hidden_1": lg.hidden_states[1].tolist(),
                        "plain_logits": torch.as_tensor(plain.logits.sequence).tolist(),
                        "decoded": back.sequence}
# the 3.2.1 README's way: the ESM3 client with an ESM C model name
c3 = ESM3ForgeInferenceClient(model="esmc-300m-2024-12", url=url, token="test-key")
t3 = c3.encode(ESMProtein(sequence=seqs[0]))
lg3 = c3.logits(t3, LogitsConfig(sequence=True, return_embeddings=True))
out["esm3_client_esmc"] = {"tokens": t3.sequence.tolist(), "logits": lg3.logits.sequence.tolist()}
from esm.sdk.api import SamplingConfig, SamplingTrackConfig
fs = c3.forward_and_sample(t3, SamplingConfig(sequence=SamplingTrackConfig(temperature=0.0, only_sample_masked_tokens=False),
                                              return_mean_embedding=True))
assert not isinstance(fs, ESMProteinError), fs
out["esmc_forward_and_sample"] = {"tokens": fs.protein_tensor.sequence.tolist(), "mean": list(torch.as_tensor(fs.mean_embedding).shape)}
# ESM3: generate from an ESMProtein with a sequence prompt, and a structure prompt that cannot be served
g = ESM3ForgeInferenceClient(model="esm3-sm-open-v1", url=url, token="test-key")
prompt = "MKTAYIAK__RQISFVK___FSRQ"
res = g.generate(ESMProtein(sequence=prompt), GenerationConfig(track="sequence", num_steps=4, temperature=1.0))
out["generate"] = {"error": [res.error_code, res.error_msg]} if isinstance(res, ESMProteinError) else {
    "sequence": res.sequence, "coordinates": res.coordinates is None}
enc = g.encode(ESMProtein(sequence=prompt))
out["esm3_encode"] = enc.sequence.tolist()
bad = g.generate(ESMProtein(sequence="MKTA", coordinates=torch.zeros(4, 37, 3)), GenerationConfig(track="sequence", num_steps=2))
out["structure_prompt"] = [bad.error_code, bad.error_msg] if isinstance(bad, ESMProteinError) else None
print(json.dumps(out))
'''


@pytest.mark.slow
def test_official_esmc_and_esmprotein_clients(tmp_path):
    """esm 3.2.1: ESMCForgeInferenceClient encode/logits (bytes and JSON)/decode, the ESM3 client on
    an ESM C model, and ESM3ForgeInferenceClient.generate/encode on an ESMProtein prompt."""
    if not _sdk_available():
        pytest.skip(f"official esm SDK not installed at {SDK_PYTHON} (set PLMSERVE_ESM_SDK_PYTHON)")
    import numpy as np

    from tests.models.esmc._fixture import HIDDEN_ATOL, close, engine, expected, inputs

    app = create_app(Settings(api_keys=["test-key"], data_dir=tmp_path))
    app.state.models.put("esm3-open-2024-03", load_fixture_model())
    app.state.models.put("esmc-300m", engine("official"))
    seqs = [inputs()["sequences"][0], inputs()["sequences"][4]]  # TEM-1 (286 residues); masks and X
    with LiveServer(app) as server:
        script = tmp_path / "esmc_client.py"
        script.write_text(ESMC_SCRIPT)
        env = dict(os.environ, DISABLE_ITERATIVE_SAMPLING_TQDM="1")
        got = run_sdk_script(SDK_PYTHON, script, server.url, json.dumps(seqs), env=env)
    exp = expected()
    for i, fx in enumerate((0, 4)):
        g = got[f"esmc_{i}"]
        assert g["tokens"] == inputs()["token_ids"][fx]
        assert close(np.array(g["logits"]), exp[f"sequence_logits_{fx}"][None])
        assert close(np.array(g["plain_logits"]), exp[f"sequence_logits_{fx}"][None])
        assert close(np.array(g["embeddings"]), exp[f"embeddings_{fx}"][None])
        assert g["hidden_shape"] == [3, 1, len(g["tokens"]), 64]
        assert close(np.array(g["hidden_1"])[0], exp[f"hidden_states_{fx}"][0], atol=HIDDEN_ATOL)
    assert got["esmc_0"]["decoded"] == seqs[0]
    assert got["esmc_1"]["decoded"] == seqs[1].replace("<mask>", "_")
    assert got["esm3_client_esmc"]["tokens"] == inputs()["token_ids"][0]
    assert close(np.array(got["esm3_client_esmc"]["logits"]), exp["sequence_logits_0"][None])
    # forward_and_sample on ESM C through the ESM3 client: every residue re-sampled at temperature 0 =
    # arg-max of the official logits over the non-special amino-acid ids
    lg = exp["sequence_logits_0"].copy()
    lg[:, [0, 1, 2, 3, 31, 32] + list(range(33, 64))] = -np.inf
    fs = got["esmc_forward_and_sample"]
    ids0 = inputs()["token_ids"][0]
    assert fs["tokens"] == [ids0[0], *lg.argmax(-1)[1:-1].tolist(), ids0[-1]]
    assert fs["mean"] == [64]
    gen = got["generate"]
    assert "sequence" in gen, gen
    assert len(gen["sequence"]) == 24 and "_" not in gen["sequence"] and gen["coordinates"]
    assert got["esm3_encode"][0] == 0 and got["esm3_encode"][9] == 32
    code, msg = got["structure_prompt"]
    assert code == 422 and "structure tokenizer" in msg


# --- forward_and_sample (issue 10 follow-up) --------------------------------------------------------

FORWARD_SCRIPT = r'''
import json, sys
import torch
from esm.sdk.api import ESMProteinTensor, ESMProteinError, SamplingConfig, SamplingTrackConfig
from esm.sdk.forge import ESM3ForgeInferenceClient

url, inputs = sys.argv[1], json.loads(sys.argv[2])
c = ESM3ForgeInferenceClient(model="esm3-sm-open-v1", url=url, token="test-key")
t = ESMProteinTensor(sequence=torch.tensor(inputs["sequence"]))
cfg = SamplingConfig(sequence=SamplingTrackConfig(temperature=0.0, topk_logprobs=4),
                     return_per_residue_embeddings=True, return_mean_embedding=True)
r = c.forward_and_sample(t, cfg)
assert not isinstance(r, ESMProteinError), r
out = {"tokens": r.protein_tensor.sequence.tolist(), "structure": r.protein_tensor.structure,
       "logprob": r.logprob.sequence.tolist(), "prob": r.prob.sequence.tolist(),
       "entropy": r.entropy.sequence.tolist(), "topk_logprob": r.topk_logprob.sequence.tolist(),
       "topk_tokens": r.topk_tokens.sequence.tolist(),
       "per_residue": torch.as_tensor(r.per_residue_embedding).tolist(),
       "mean": torch.as_tensor(r.mean_embedding).tolist()}
r2 = c.forward_and_sample(t, SamplingConfig(sequence=SamplingTrackConfig(temperature=1.0)))
out["random_tokens"] = r2.protein_tensor.sequence.tolist()
out["random_topk"] = r2.topk_tokens.sequence
r3 = c.forward_and_sample(t, SamplingConfig(sasa=SamplingTrackConfig(), function=SamplingTrackConfig(topk_logprobs=2),
                                            secondary_structure=SamplingTrackConfig(temperature=0.0)))
assert not isinstance(r3, ESMProteinError), r3
out["sasa"] = [None if v == float("inf") else v for v in r3.protein_tensor.sasa.tolist()]
out["sasa_entropy"] = r3.entropy.sasa.tolist()
out["function_shape"] = list(r3.protein_tensor.function.shape)
out["function_topk_shape"] = list(r3.topk_tokens.function.shape)
out["ss8"] = r3.protein_tensor.secondary_structure.tolist()
bad = c.forward_and_sample(t, SamplingConfig(function=SamplingTrackConfig(temperature=0.0)))
out["function_t0_error"] = [bad.error_code, bad.error_msg] if isinstance(bad, ESMProteinError) else None
print(json.dumps(out))
'''


@pytest.mark.slow
def test_official_forward_and_sample(tmp_path):
    """esm 3.2.1 ``ESM3ForgeInferenceClient.forward_and_sample`` against the server: temperature 0
    equals the argmax of the official fixture logits (masked positions only), log-probabilities,
    entropy, top-k and embeddings as the official numbers; sasa, function and secondary structure
    sampled through the client; function at temperature 0 is a 400 ``ESMProteinError`` (no retries)."""
    if not _sdk_available():
        pytest.skip(f"official esm SDK not installed at {SDK_PYTHON} (set PLMSERVE_ESM_SDK_PYTHON)")
    import numpy as np
    import torch

    from tests.conftest import shared_path

    fixtures = shared_path("fixtures", "esm3")
    case = {c["name"]: c for c in json.loads((fixtures / "inputs.json").read_text())}["b"]["inputs"]
    ref = np.load(fixtures / "expected_logits.npz")
    app = create_app(Settings(api_keys=["test-key"], data_dir=tmp_path))
    app.state.models.put("esm3-open-2024-03", load_fixture_model())
    with LiveServer(app) as server:
        script = tmp_path / "forward_client.py"
        script.write_text(FORWARD_SCRIPT)
        got = run_sdk_script(SDK_PYTHON, script, server.url, json.dumps(case))
    seq = torch.tensor(case["sequence"])
    logits = torch.tensor(ref["b/sequence_logits"])
    logits[:, [0, 1, 2, 3, 31, 32] + list(range(33, 64))] = -torch.inf  # special and out-of-vocabulary ids
    lp = logits.log_softmax(-1)
    masked = seq == 32
    expected = torch.where(masked, lp.argmax(-1), seq)
    assert got["tokens"] == expected.tolist() and got["structure"] is None
    want_lp = torch.where(masked, lp.gather(-1, expected[:, None])[:, 0], torch.zeros(len(seq)))
    np.testing.assert_allclose(got["logprob"], want_lp, atol=1e-4)
    np.testing.assert_allclose(got["prob"], want_lp.exp(), atol=1e-4)
    np.testing.assert_allclose(got["entropy"], torch.distributions.Categorical(logits=lp).entropy(), atol=1e-4)
    np.testing.assert_allclose(got["topk_logprob"], torch.topk(lp, 4).values, atol=1e-4)
    np.testing.assert_allclose(got["per_residue"], ref["b/embeddings"], atol=1e-4)
    np.testing.assert_allclose(got["mean"], ref["b/embeddings"].mean(0), atol=1e-4)
    rnd = got["random_tokens"]
    assert 32 not in rnd and all(4 <= t < 31 for t in rnd[1:-1]) and got["random_topk"] is None
    assert [t for t, s in zip(rnd, case["sequence"]) if s != 32] == [s for s in case["sequence"] if s != 32]
    # sasa decoded to Å² (inf at BOS/EOS), function [N, 8] with top-k, ss8 sampled from all-mask
    n = len(case["sequence"])
    assert got["sasa"][0] is None and got["sasa"][-1] is None
    assert all(v is None or 0 <= v <= 151.4 for v in got["sasa"]) and any(v is not None for v in got["sasa"])
    assert len(got["sasa_entropy"]) == n
    assert got["function_shape"] == [n, 8] and got["function_topk_shape"] == [n, 8, 2]
    assert all(3 <= t <= 10 for t in got["ss8"][1:-1])
    code, msg = got["function_t0_error"]
    assert code == 400 and "temperature 0" in msg
