"""The official ``openprotein-python`` 0.2.x SDK works against plmserve by changing only its base URL.

The SDK lives in its own virtual environment (it pins old dependencies); point
``PLMSERVE_OPENPROTEIN_SDK_PYTHON`` at that environment's python, e.g.::

    python -m venv /tmp/opvenv && /tmp/opvenv/bin/pip install openprotein-python==0.2.2
    PLMSERVE_OPENPROTEIN_SDK_PYTHON=/tmp/opvenv/bin/python pytest tests/client/test_official_sdk.py

Without it the test is skipped; CI installs the SDK with ``.ci/sdk_venvs.sh`` and sets the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, LiveServer, make_app, run_sdk_script

SDK_PYTHON = os.environ.get("PLMSERVE_OPENPROTEIN_SDK_PYTHON")


@pytest.mark.skipif(not SDK_PYTHON, reason="PLMSERVE_OPENPROTEIN_SDK_PYTHON (a python with openprotein-python 0.2.x) not set")
def test_official_sdk_0_2_workflow(tmp_path):
    app = make_app(Settings(data_dir=tmp_path, api_keys=["k"]), {"poet": FakePoetEngine()},
                   users={"alice": "alice-password"})
    script = Path(__file__).with_name("official_sdk_flow.py")
    with LiveServer(app) as srv:
        out = run_sdk_script(SDK_PYTHON, script, srv.url, "alice", "alice-password")
    assert out["version"].startswith("0.2")
    assert out["msa_rows"][0] == ["query", "MKTAYIAKQR"] and len(out["msa_rows"]) == 4
    assert out["prompt_rows"].count(["<END_PROMPT>"]) == 1
    assert out["prompt_1"] and all("-" not in s for _, s in out["prompt_1"])
    assert [r[0] for r in out["score"]] == ["sequence-1", "sequence-2"]
    assert all(len(r[2]) == 2 for r in out["score"])
    codes = [r[0] for r in out["single_site"]]
    assert codes[0] == "input" and codes[1] == "M1A" and len(codes) == 1 + 19 * 3
    assert [r[0] for r in out["generate"]] == ["generated-sequence-1", "generated-sequence-2",
                                                "generated-sequence-3"]
    assert all(len(r[2]) == 2 for r in out["generate"])
    assert out["uploaded_prompt_id"] and [s for _, s in out["uploaded_prompt_2"]] == ["MRTAYIAKQK"]
    assert out["reloaded_type"] == "PoetScoreFuture"
    assert out["jobs"].count("/align/prompt") == 2
