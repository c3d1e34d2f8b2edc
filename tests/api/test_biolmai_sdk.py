"""Contract test: the official BioLM client ``biolmai`` 0.4.0 against a live plmserve ``/api/v3``.

``biolmai`` lives in its own virtual environment (``.ci/sdk_venvs.sh`` exports
``PLMSERVE_BIOLMAI_SDK_PYTHON``; default ``/tmp/plmserve-sdk/biolmai/bin/python``). The client is
pointed at the server with ``BIOLMAI_BASE_API_URL=http://127.0.0.1:<port>/api/v3`` and
``BIOLMAI_THREADS=4`` (it refuses to import on machines with fewer than 4 cores otherwise), and
runs, unchanged, ``Model(slug).encode``/``predict`` and ``BioLMApi(slug).call("log_prob", ...)`` for
ESM-2 (the fair-esm tiny fixture as esm2-8m) and ESM C (the official esm 3.2.1 tiny fixture as
esmc-300m) on TEM-1 (286 residues) and on a batch of 8 real BLAT homologs. The server records what
arrived, so the test also checks the client's wire behaviour: it asked the schema route for its
batch size, and gzipped the larger bodies.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plmserve.api.app import create_app
from plmserve.models.registry import ModelManager
from plmserve.settings import Settings
from tests.client.support import LiveServer, install_esm2_fixture, install_esmc_fixture, run_sdk_script
from tests.conftest import shared_path

SDK_PYTHON = os.environ.get("PLMSERVE_BIOLMAI_SDK_PYTHON", "/tmp/plmserve-sdk/biolmai/bin/python")

CLIENT = r'''
import json, sys
from biolmai import BioLMApi, Model

data = json.loads(open(sys.argv[1]).read())
tem1, batch, masked = data["tem1"], data["batch"], data["masked"]
out = {}
for slug in ("esm2-8m", "esmc-300m"):
    m = Model(slug, api_key="test-key")
    one = m.encode(items=[tem1], type="sequence", params={"include": ["mean", "per_token", "logits"]}, progress=False)
    many = m.encode(items=batch, type="sequence", params={"include": ["mean"]}, progress=False)
    pred = m.predict(items=[masked], type="sequence", progress=False)
    api = BioLMApi(slug, api_key="test-key")
    lp_one = api.call("log_prob", [{"sequence": tem1}])
    lp_many = api.call("log_prob", [{"sequence": s} for s in batch])
    out[slug] = {"one": one, "many": many, "pred": pred, "lp_one": lp_one, "lp_many": lp_many}
print(json.dumps(out))
'''


def _sdk_available() -> bool:
    if not Path(SDK_PYTHON).exists():
        return False
    env = dict(os.environ, BIOLMAI_THREADS="4")
    return subprocess.run([SDK_PYTHON, "-c", "import biolmai"], capture_output=True, env=env,
                          timeout=120).returncode == 0


def blat_homologs(n: int) -> list[str]:
    """The first ``n`` homologs of the BLAT_ECOLX MSA (after the query), as unaligned sequences."""
    seqs, cur = [], None
    for line in shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m").read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append(cur)
            cur = ""
        elif cur is not None:
            cur += line.strip().replace("-", "").upper()
    if cur:
        seqs.append(cur)
    return [s for s in seqs[1:] if len(s) <= 1000][:n]


class WireLog:
    """ASGI wrapper recording (method, path, Content-Encoding) of each request."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            enc = dict(scope["headers"]).get(b"content-encoding", b"").decode()
            self.seen.append((scope["method"], scope["path"], enc))
        await self.app(scope, receive, send)


@pytest.mark.slow
def test_biolmai_client_encode_predict_log_prob(tmp_path):
    if not _sdk_available():
        pytest.skip(f"biolmai 0.4.0 not installed at {SDK_PYTHON} (set PLMSERVE_BIOLMAI_SDK_PYTHON)")
    models = tmp_path / "models"
    models.mkdir()
    install_esm2_fixture(models)
    install_esmc_fixture(models, "300m")
    settings = Settings(api_keys=["test-key"], model_dir=models, device="cpu", data_dir=tmp_path / "data")
    manager = ModelManager(settings)
    app = WireLog(create_app(settings, manager))

    inputs = json.loads(shared_path("fixtures", "esmc", "inputs.json").read_text())
    tem1 = inputs["sequences"][0]
    batch = blat_homologs(8)
    assert len(tem1) == 286 and len(batch) == 8
    masked = tem1[:40] + "<mask>" + tem1[41:80] + "<mask>" + tem1[81:]
    data = tmp_path / "inputs.json"
    data.write_text(json.dumps({"tem1": tem1, "batch": batch, "masked": masked}))

    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with LiveServer(app) as srv:
        env = dict(os.environ, BIOLMAI_BASE_API_URL=f"{srv.url}/api/v3", BIOLMAI_THREADS="4")
        env.pop("BIOLMAI_TOKEN", None)
        got = run_sdk_script(SDK_PYTHON, script, data, env=env, timeout=600, cwd=tmp_path)

    # the client's wire behaviour: schema discovery, one request per batch of 8, gzip bodies
    seen = app.seen
    assert ("GET", "/api/v3/schema/esmc-300m/encode/", "") in seen
    assert ("GET", "/api/v3/schema/esm2-8m/predict/", "") in seen
    posts = [p for p in seen if p[0] == "POST"]
    assert all(enc == "gzip" for _, _, enc in posts), posts  # every body here is over 256 bytes
    assert sum(1 for p in posts if p[1] == "/api/v3/esmc-300m/encode/") == 2  # TEM-1, then the batch of 8

    # values: the same numbers the engines give in-process (and, for ESM C, the official fixture)
    esm2 = manager.get("esm2-8m")
    esmc = manager.get("esmc-300m")
    for slug, eng in (("esm2-8m", esm2), ("esmc-300m", esmc)):
        g = got[slug]
        ref = eng.encode([tem1], include=("mean", "per_token", "logits"))[0]
        (layer,) = ref["mean_representations"]
        one = g["one"]
        assert one["embeddings"][0]["layer"] == layer
        np.testing.assert_allclose(one["embeddings"][0]["embedding"], ref["mean_representations"][layer], atol=1e-5)
        np.testing.assert_allclose(one["per_token_embeddings"][0]["embeddings"], ref["representations"][layer],
                                   atol=1e-5)
        np.testing.assert_allclose(one["logits"], ref["logits"], atol=1e-5)
        assert one["vocab_tokens"] == eng.alphabet_tokens
        assert isinstance(g["many"], list) and len(g["many"]) == 8
        refs = eng.encode(batch, include=("mean",))
        for res, r in zip(g["many"], refs):
            np.testing.assert_allclose(res["embeddings"][0]["embedding"], r["mean_representations"][layer], atol=1e-4)
        pred = g["pred"]
        assert np.shape(pred["logits"]) == (286, 20)
        mask_tok = "_" if slug == "esmc-300m" else "<mask>"
        assert pred["sequence_tokens"][40] == mask_tok and pred["sequence_tokens"][80] == mask_tok
        lp = eng.log_prob([tem1] + batch, method="biolm")
        assert g["lp_one"][0]["log_prob"] == pytest.approx(lp[0], abs=1e-3)
        assert [x["log_prob"] for x in g["lp_many"]] == pytest.approx(lp[1:], abs=1e-3)
    # ESM C against the official esm 3.2.1 numbers (fixture): TEM-1 logits at the residues
    from plmserve.models.esmc.alphabet import CANONICAL_IDS
    from tests.models.esmc._fixture import expected

    want = expected()["sequence_logits_0"][1:-1][:, CANONICAL_IDS]
    np.testing.assert_allclose(got["esmc-300m"]["one"]["logits"], want, atol=1e-4, rtol=1e-5)
    # ESM-2 against fair-esm (biolm_expected.json): TEM-1 mean embedding and log_prob
    exp2 = json.loads(shared_path("fixtures", "esm2", "biolm_expected.json").read_text())["encode"][0]
    assert exp2["sequence"] == tem1
    np.testing.assert_allclose(got["esm2-8m"]["one"]["embeddings"][0]["embedding"],
                               exp2["mean_representations"][0]["embedding"], atol=1e-4, rtol=1e-5)
    assert got["esm2-8m"]["lp_one"][0]["log_prob"] == pytest.approx(exp2["log_prob"], abs=2e-3)
