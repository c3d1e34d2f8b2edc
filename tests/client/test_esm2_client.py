"""SDK clients of the ESM-2 routes (encode/predict/log_prob) against a live server with a tiny
random ESM-2 in Hugging Face format; results must equal the HTTP route's JSON."""

from __future__ import annotations

import httpx
import pytest

import plmserve.client as pc
from plmserve.api.app import create_app
from plmserve.settings import Settings
from tests.api._esm2_tiny import make_tiny_esm2_dir
from tests.client.support import LiveServer


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_esm2_dir(root)
    app = create_app(Settings(data_dir=root / "data", model_dir=root, api_keys=["k1"]))
    with LiveServer(app) as srv:
        yield srv


def test_encode_predict_log_prob(live):
    s = pc.connect(live.url, api_key="k1")
    raw = httpx.post(f"{live.url}/api/v2/esm2-8m/encode/", headers={"authorization": "Token k1"},
                     json={"params": {"include": ["mean", "logits"], "repr_layers": [-1]},
                           "items": [{"sequence": "MKTAYIAKQR"}]}).json()["results"][0]
    enc = s.encode("esm2-8m", ["MKTAYIAKQR", "MKV"], include=["mean", "logits"])
    assert [type(r) for r in enc] == [pc.EncodeResult] * 2
    assert enc[0].mean_representations == raw["mean_representations"]
    assert enc[0].logits == raw["logits"] and len(enc[0].logits) == 10
    pred = s.esm2("esm2-8m").predict(["MKTA<mask>IAKQR"])
    assert isinstance(pred[0], pc.PredictResult) and len(pred[0].alphabet_tokens) == 20
    assert "<mask>" in pred[0].sequence_tokens
    lp = s.log_prob("esm2-8m", ["MKTAYIAKQR"])
    assert isinstance(lp[0], pc.LogProbResult) and lp[0].log_prob < 0
    with pytest.raises(pc.APIError) as exc:
        s.encode("esm2-8m", ["MKT#"])
    assert exc.value.status_code in (400, 422) and exc.value.detail
    with pytest.raises(pc.APIError) as exc:
        s.encode("no-such-model", ["MKT"])
    assert exc.value.status_code == 404
