"""The official ``openprotein-python`` 0.17.0 SDK (what ``pip install openprotein-python`` gives
today) works against plmserve by changing only ``backend=``.

A real uvicorn server with the PoET fixture checkpoint and a FASTA search database (BLAT homologs
planted among decoys). The SDK runs in its own virtual environment with ``HOME`` pointed at a
scratch directory (it stores tokens under ``~/.openprotein``)::

    python -m venv /tmp/plmserve-sdk/openprotein017
    /tmp/plmserve-sdk/openprotein017/bin/pip install openprotein-python==0.17.0
    PLMSERVE_OPENPROTEIN017_SDK_PYTHON=/tmp/plmserve-sdk/openprotein017/bin/python \
        pytest tests/client/test_official_sdk017.py

Without the variable the test is skipped; CI installs the SDK with ``.ci/sdk_venvs.sh``.

Flow: connect -> create_msa(BLAT wild type) -> upload_msa(300 real BLAT rows) ->
sample_prompt(3 replicates) -> create_prompt / create_query -> session.embedding poet.score(6 Jacquier variants) ->
single_site over 40 positions -> indel -> generate with a seed twice -> PoET embed/logits, a (tiny)
ESM-2 embed/attn and a (tiny fixture) ESM C embed/logits -> load_job by id -> a bad id.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from plmserve.bio.msa import read_msa
from plmserve.settings import Settings
from tests.client.support import LiveServer, make_app, poet_fixture_engine, run_sdk_script
from tests.conftest import shared_path

SDK_PYTHON = os.environ.get("PLMSERVE_OPENPROTEIN017_SDK_PYTHON")
N_PLANTED = 60
N_UPLOAD = 300


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _inputs(tmp_path: Path):
    blat = read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))
    rng = np.random.default_rng(2026)
    planted = sorted(int(i) for i in rng.choice(np.arange(1, len(blat)), N_PLANTED, replace=False))
    db = tmp_path / "search_db.fasta"
    decoys = shared_path("data", "decoy_proteome_938293.faa").read_text().split(">")[1:301]
    with db.open("w") as fh:
        for i in planted:
            fh.write(f">planted_{i}\n{blat.sequences[i]}\n")
        fh.write("".join(">" + rec for rec in decoys))
    # the first 300 rows of the real BLAT MSA, as a3m (query first)
    a3m = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m").read_text().split(">")[1:N_UPLOAD + 1]
    msa_path = tmp_path / "blat_300.a3m"
    msa_path.write_text("".join(">" + rec for rec in a3m))
    with shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv").open() as fh:
        variants = [(r["mutant"], r["mutated_sequence"]) for r in list(csv.DictReader(fh))[:6]]
    given = {"wild_type": blat.query, "msa_fasta": str(msa_path), "variants": variants}
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(given))
    return path, given, {f"planted_{i}" for i in planted}


@pytest.mark.skipif(not SDK_PYTHON,
                    reason="PLMSERVE_OPENPROTEIN017_SDK_PYTHON (a python with openprotein-python 0.17.0) not set")
def test_official_sdk_0_17_workflow(tmp_path):
    inputs, given, planted = _inputs(tmp_path)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    from tests.api._esm2_tiny import EMBED_DIM, HEADS, make_tiny_esm2_dir

    make_tiny_esm2_dir(model_dir, slug="esm2-8m")  # a tiny random ESM-2 served as esm2_t6_8M_UR50D
    (model_dir / "esmc-300m").symlink_to(shared_path("fixtures", "esmc", "hf"), target_is_directory=True)
    settings = Settings(data_dir=tmp_path / "data", api_keys=["k"], msa_database=tmp_path / "search_db.fasta",
                        model_dir=model_dir, device="cpu", dtype="float32", workers=1, offline=True)
    app = make_app(settings, users={"alice": "alice-password"})
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPROTEIN_")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    script = Path(__file__).with_name("official_sdk017_flow.py")
    with LiveServer(app) as srv:
        out = run_sdk_script(SDK_PYTHON, script, srv.url, "alice", "alice-password", inputs, env=env, timeout=600)
    wt = given["wild_type"]

    assert out["version"] == "0.17.0"
    assert out["legacy_auth"] is False  # v1/auth/login with a refresh token, not the fallback
    assert (home / ".openprotein" / "token.json").exists()

    # MSA search: the seed first, then planted homologs only
    assert out["created_msa_type"] == "/align/align"
    assert out["created_msa"]["first"] == ["seed", wt] and out["created_seed"] == wt
    hits = set(out["created_msa"]["names"])
    assert hits and hits <= planted and len(hits) >= 0.9 * N_PLANTED
    assert out["uploaded_msa"]["n"] == N_UPLOAD and out["uploaded_msa"]["first"][1] == wt

    # prompt: 3 replicates, ungapped real BLAT homologs, readable through the prompt service
    assert out["prompt_type"] == "/align/prompt"
    assert len(out["prompt"]) == 3 and all(len(rep) == 8 for rep in out["prompt"])
    assert all(seq.isalpha() and seq.isupper() for rep in out["prompt"] for _, seq in rep)
    assert out["prompt_meta"] == {"id": out["prompt_id"], "num_replicates": 3, "job_id": out["prompt_id"]}
    assert "poet" in out["models"]
    up = out["uploaded_prompt"]
    assert up["name"] == "blat-upload" and up["num_replicates"] == 2
    assert up["content"] == [up["homologs"][:3], up["homologs"][3:]]
    assert len(out["listed_prompts"]) == 2 and out["prompt_id"] in out["listed_prompts"]
    assert out["query"]["seq"] == wt[:30] + "XXX"
    assert str(uuid.UUID(out["query"]["id"], version=4)) == out["query"]["id"]

    # scores equal the engine's under the same 3 replicates
    engine = poet_fixture_engine()
    reps = [[seq for _, seq in rep] for rep in out["prompt"]]
    assert out["score_type"] == "/poet/score"
    assert [r[1] for r in out["score"]] == [seq for _, seq in given["variants"]]
    got = np.array([r[2] for r in out["score"]])
    np.testing.assert_allclose(got, engine.score(reps, [s for _, s in given["variants"]]).T, rtol=1e-5, atol=1e-4)

    up_reps = [up["homologs"][:3], up["homologs"][3:]]
    np.testing.assert_allclose(out["uploaded_prompt_score"], engine.score(up_reps, [wt])[:, 0], rtol=1e-5, atol=1e-4)

    assert out["single_site_type"] == "/poet/single_site"
    codes = [r[0] for r in out["single_site"]]
    assert codes[0] == "WT" and codes[1] == f"{wt[0]}1A" and len(codes) == 1 + 19 * 40
    assert codes[-1] == f"{wt[39]}40V" or codes[-1] == f"{wt[39]}40Y"
    np.testing.assert_allclose(out["single_site"][0][1], engine.score(reps, [wt[:40]])[:, 0], rtol=1e-5, atol=1e-4)

    assert out["indel_type"] == "/poet/score/indel"
    names = [r[0] for r in out["indel"]]
    assert names[:2] == ["WT", "1insG"] and "13insG" in names and "11_12del" in names and len(names) == 1 + 13 + 11
    assert dict(out["indel"])["1_2del"] == wt[2:12]
    assert out["score_args_prompt"] == out["prompt_id"]

    assert out["generate_type"] == "/poet/generate"
    first, second = out["generate"]
    assert first == second  # same seed, same sequences and scores
    assert [r[0] for r in first] == ["generated-sequence-1", "generated-sequence-2", "generated-sequence-3"]
    assert all(0 < len(r[1]) <= 80 and len(r[2]) == 3 for r in first)

    d = engine.config.hidden_dim
    assert out["poet_embed"] == [[wt[:30], [3, d]], [wt[:20], [3, d]]]
    assert out["poet_logits"] == [[3, 20, 24]]
    assert out["esm_embed"] == [[EMBED_DIM]]
    assert out["esm_attn"] == [[HEADS, 12, 12]]
    # ESM C (the tiny fixture served as esmc-300m): MEAN embeddings and logits equal the engine's
    from tests.models.esmc._fixture import engine as esmc_engine

    assert out["esmc_class"] == "ESMModel"
    assert out["esmc_meta"] == {"dimension": 960, "output_types": ["embed", "logits"]}
    assert [s for s, _ in out["esmc_embed"]] == [wt[:15], wt[:9]]
    from plmserve.jobs.poet_v1 import esm_arrays

    ref = esm_arrays(esmc_engine(), [wt[:15], wt[:9]], "embed", "MEAN", family="esmc")
    for (_, got), want in zip(out["esmc_embed"], ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    (logits,) = esmc_engine().encode([wt[:7]], include=["logits"])
    np.testing.assert_allclose(out["esmc_logits"][0], logits["logits"], rtol=1e-5, atol=1e-5)

    assert out["reloaded_type"] == "EmbeddingsScoreFuture"
    assert out["reloaded_score"] == [[r[0], r[2]] for r in out["score"]]
    assert out["jobs_score"] == 2  # the sampled and the uploaded prompt's score jobs
    assert out["prompt_id"] in out["jobs_success_prompt"]
    assert out["bad_id"] == {"type": "HTTPError", "status": 404}
    assert out["adopted"] and out["refreshed"] and out["relogin"]
