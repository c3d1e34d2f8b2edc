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
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from plmserve.api.app import create_app
from plmserve.settings import Settings
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_official_forge_client_round_trip(tmp_path):
    if not _sdk_available():
        pytest.skip(f"official esm SDK not installed at {SDK_PYTHON} (set PLMSERVE_ESM_SDK_PYTHON)")
    import uvicorn

    app = create_app(Settings(api_keys=["test-key"]))
    app.state.models.put("esm3-open-2024-03", load_fixture_model())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        names = ["a_sequence_cosine_8", "extra_d_structure_with_coords_from_c", "e_secondary_structure",
                 "extra_f_function_temp1", "extra_c_sequence_no_masks", "b_sequence_cosine_4"]
        reqs = tmp_path / "requests.json"
        reqs.write_text(json.dumps({n: RECORDS[n]["request"] for n in names}))
        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        env = dict(os.environ, DISABLE_ITERATIVE_SAMPLING_TQDM="1")
        proc = subprocess.run([SDK_PYTHON, str(script), f"http://127.0.0.1:{port}", str(reqs)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        server.should_exit = True
        thread.join(10)
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
