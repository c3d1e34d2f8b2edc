"""SDK client of the ESM C routes (``session.esmc``) against a live server with the official ESM C
fixture; results must equal the HTTP route's JSON and the fixture."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.models.esmc.alphabet import CANONICAL_IDS
from plmserve.settings import Settings
from tests.client.support import LiveServer
from tests.models.esmc._fixture import close, engine, expected, inputs


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("esmc")
    app = create_app(Settings(data_dir=root / "data", api_keys=["k1"], device="cpu"))
    app.state.models.put("esmc-300m", engine("official"))
    with LiveServer(app) as srv:
        yield srv


def test_esmc_encode_predict_log_prob(live):
    s = pc.connect(live.url, api_key="k1")
    seq = inputs()["sequences"][3]
    raw = httpx.post(f"{live.url}/api/v3/esmc-300m/encode/", headers={"authorization": "Token k1"},
                     json={"params": {"include": ["mean", "logits"]}, "items": [{"sequence": seq}]}).json()["results"][0]
    enc = s.esmc("esmc-300m").encode([seq, "MKV"], include=["mean", "logits"])
    assert [type(r) for r in enc] == [pc.ESMCEncodeResult] * 2
    assert enc[0].embeddings[0].embedding == raw["embeddings"][0]["embedding"] and enc[0].embeddings[0].layer == 1
    assert close(enc[0].logits, expected()["sequence_logits_3"][1:-1][:, CANONICAL_IDS])
    assert enc[0].vocab_tokens == list("ACDEFGHIKLMNPQRSTVWY")
    same = s.encode("esmc-300m", [seq], include=["mean"])  # Session.encode routes ESM C to v3
    assert same[0].embeddings[0].embedding == raw["embeddings"][0]["embedding"]
    pred = s.predict("esmc-300m", ["MKT<mask>YIAK"])
    assert isinstance(pred[0], pc.ESMCPredictResult) and pred[0].sequence_tokens[3] == "_"
    lp = s.esmc().log_prob([seq])[0].log_prob
    pll = s.esmc().log_prob([seq], method="pll")[0].log_prob
    assert lp < 0 and pll < 0 and abs(lp - pll) > 1e-3
    assert np.isclose(lp, engine("official").log_prob([seq], method="biolm")[0], atol=1e-4)
    with pytest.raises(pc.APIError) as exc:
        s.esmc().log_prob(["MKXA"])
    assert exc.value.status_code == 400 and "position 3" in str(exc.value.detail)
