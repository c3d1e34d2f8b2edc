"""The current OpenProtein API (openprotein-python 0.17 surface) over HTTP: model registry, PoET
via ``v1/embeddings``, results (CSV with header, ``.npy``, framed stream), prompt service,
align v1 and the jobs routes (spec ``openprotein-v1-api.md``).

The PoET engine is the real one with the fixture checkpoint (tiny), so numbers are checked
against the engine called directly with the same prompt.
"""

from __future__ import annotations

import csv
import io
import struct
import uuid
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.settings import Settings
from tests.client.support import make_app, poet_fixture_engine, wait_job

MSA_FASTA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"
API = "/api/v1"


engine = poet_fixture_engine  # the real engine of the fixture checkpoint, loaded once


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def server(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=["admin-key"])
    app = make_app(settings, {"poet": engine()})
    with TestClient(app) as client:
        yield client


def login(client, user):
    r = client.post(f"{API}/auth/login", data={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def alice(server):
    return login(server, "alice")


@pytest.fixture
def bob(server):
    return login(server, "bob")


def csv_rows(text):
    return list(csv.reader(io.StringIO(text)))


def make_prompt(client, headers, replicates=2):
    msa = client.post(f"{API}/align/msa", params={"is_seed": "False"}, files={"msa_file": ("msa.fa", MSA_FASTA)},
                      headers=headers)
    assert msa.status_code == 200, msa.text
    assert msa.json()["job_type"] == "/align/align"
    r = client.post(f"{API}/align/prompt", headers=headers, params={
        "msa_id": msa.json()["job_id"], "msa_method": "NEIGHBORS_NONGAP_NORM_NO_LIMIT", "homology_level": 0.8,
        "max_similarity": 1.0, "min_similarity": 0.0, "force_include_first": "False", "replicates": replicates,
        "seed": 0, "max_msa_tokens": 12288})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/align/prompt"
    assert wait_job(client, headers, job["job_id"])["status"] == "SUCCESS"
    return job["job_id"]


def prompt_replicates(client, headers, prompt_id):
    r = client.get(f"{API}/prompt/{prompt_id}/content", headers=headers)
    assert r.status_code == 200, r.text
    outer = zipfile.ZipFile(io.BytesIO(r.content))
    reps = []
    for name in outer.namelist():
        assert name.startswith("context-")
        inner = zipfile.ZipFile(io.BytesIO(outer.read(name)))
        seqs = []
        for entry in inner.namelist():
            assert entry.endswith(".fasta")
            text = inner.read(entry).decode()
            seqs += [ln for ln in text.splitlines() if ln and not ln.startswith(">")]
        reps.append(seqs)
    return reps


# ------------------------------------------------------------------ model registry
def test_models_list_and_detail(server, alice):
    r = server.get(f"{API}/embeddings/models", params={"verbose": "true"}, headers=alice)
    assert r.status_code == 200
    models = {m["model_id"]: m for m in r.json()}
    poet = models["poet"]
    assert poet["description"]["summary"] and poet["dimension"] == engine().config.hidden_dim  # the loaded one
    assert {"score", "generate", "embed", "logits"} <= set(poet["output_types"])
    assert poet["output_tokens"] == list("ARNDCQEGHILKMFPSTWYV")
    assert all(isinstance(t[0]["id"], int) for t in poet["token_descriptions"])
    assert "poet-2" not in models
    assert server.get(f"{API}/embeddings/models", headers=alice).json()[0] == "poet"
    assert server.get(f"{API}/embeddings/models/poet", headers=alice).json() == poet
    r = server.get(f"{API}/embeddings/models/poet-2", headers=alice)
    assert r.status_code == 404 and "no public weights" in r.json()["detail"]
    r = server.post(f"{API}/embeddings/models/poet-2/score", json={"sequences": ["MKT"], "prompt_id": "x"},
                    headers=alice)
    assert r.status_code == 404 and "no public weights" in r.json()["detail"]
    assert server.get(f"{API}/embeddings/models").status_code == 401


# ------------------------------------------------------------------ PoET actions and results
def test_score_csv_with_header_matches_the_engine(server, alice):
    prompt_id = make_prompt(server, alice)
    seqs = ["MKTAYIAKQR", "MKTAYIAKQW", "MRTAYIAKQK"]
    r = server.post(f"{API}/embeddings/models/poet/score", json={"sequences": seqs, "prompt_id": prompt_id},
                    headers=alice)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/poet/score"
    assert wait_job(server, alice, job["job_id"])["status"] == "SUCCESS"
    rows = csv_rows(server.get(f"{API}/embeddings/{job['job_id']}/scores", headers=alice).text)
    assert rows[0] == ["name", "sequence", "score_1", "score_2"]
    assert [r[:2] for r in rows[1:]] == [[f"sequence-{i}", s] for i, s in enumerate(seqs, start=1)]
    got = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
    expected = engine().score(prompt_replicates(server, alice, prompt_id), seqs)  # [2, 3]
    np.testing.assert_allclose(got, expected.T, rtol=1e-6, atol=1e-6)
    assert server.get(f"{API}/embeddings/embed/{job['job_id']}/sequences", headers=alice).json() == seqs
    args = server.get(f"{API}/jobs/{job['job_id']}/args", headers=alice).json()
    assert args["prompt_id"] == prompt_id


def test_single_site_wt_row_and_codes(server, alice):
    prompt_id = make_prompt(server, alice, replicates=1)
    r = server.post(f"{API}/embeddings/models/poet/score_single_site",
                    json={"base_sequence": "MKTA", "prompt_id": prompt_id}, headers=alice)
    job = r.json()
    assert r.status_code == 200 and job["job_type"] == "/poet/single_site"
    wait_job(server, alice, job["job_id"])
    rows = csv_rows(server.get(f"{API}/embeddings/{job['job_id']}/scores", headers=alice).text)
    assert rows[0] == ["mut_code", "score_1"]
    assert rows[1][0] == "WT" and rows[2][0] == "M1A" and len(rows) == 2 + 19 * 4
    prompt = prompt_replicates(server, alice, prompt_id)[0]
    assert float(rows[1][1]) == pytest.approx(float(engine().score(prompt, ["MKTA"])[0]), abs=1e-5)
    # the legacy route still says X0X for the same job
    legacy = server.get(f"{API}/poet/single_site", params={"job_id": job["job_id"]}, headers=alice).json()
    assert legacy["result"][0]["sequence"] == "X0X"


def test_indel_variants_scored(server, alice):
    prompt_id = make_prompt(server, alice, replicates=1)
    r = server.post(f"{API}/embeddings/models/poet/score/indel",
                    json={"base_sequence": "MKTAY", "insert": "G", "delete": [1, 2], "prompt_id": prompt_id},
                    headers=alice)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/poet/score/indel"
    wait_job(server, alice, job["job_id"])
    rows = csv_rows(server.get(f"{API}/embeddings/{job['job_id']}/scores", headers=alice).text)[1:]
    names = [r[0] for r in rows]
    assert names[:3] == ["WT", "1insG", "2insG"] and "6insG" in names and "1del" in names and "4_5del" in names
    assert dict((r[0], r[1]) for r in rows)["4_5del"] == "MKT"
    assert len(rows) == 1 + 6 + 5 + 4
    r = server.post(f"{API}/embeddings/models/poet/score/indel", json={"base_sequence": "MKTAY", "prompt_id": prompt_id},
                    headers=alice)
    assert r.status_code == 400


def test_generate_same_seed_same_output(server, alice):
    prompt_id = make_prompt(server, alice)
    body = {"n_sequences": 3, "temperature": 1.0, "maxlen": 40, "topk": 15.0, "topp": 0.9, "seed": 7,
            "prompt_id": prompt_id}
    outs = []
    for _ in range(2):
        r = server.post(f"{API}/embeddings/models/poet/generate", json=body, headers=alice)
        job = r.json()
        assert r.status_code == 200 and job["job_type"] == "/poet/generate", r.text
        wait_job(server, alice, job["job_id"])
        outs.append(csv_rows(server.get(f"{API}/embeddings/{job['job_id']}/generate", headers=alice).text))
    assert outs[0] == outs[1]
    assert outs[0][0] == ["name", "sequence", "score_1", "score_2"]
    assert [r[0] for r in outs[0][1:]] == ["generated-sequence-1", "generated-sequence-2", "generated-sequence-3"]
    assert all(r[1].isalpha() and len(r[1]) <= 40 for r in outs[0][1:])
    bad = dict(body, temperature=5.0)
    assert server.post(f"{API}/embeddings/models/poet/generate", json=bad, headers=alice).status_code == 422


def test_embed_and_logits_arrays(server, alice):
    prompt_id = make_prompt(server, alice)
    seqs = ["MKTAYIAKQR", "MRTAY"]
    jobs = {}
    for kind, extra in (("embed", {}), ("embed_mean", {"reduction": "MEAN"}), ("logits", {})):
        route = "logits" if kind == "logits" else "embed"
        r = server.post(f"{API}/embeddings/models/poet/{route}", json={"sequences": seqs, "prompt_id": prompt_id, **extra},
                        headers=alice)
        assert r.status_code == 200, r.text
        jobs[kind] = r.json()
        assert jobs[kind]["job_type"] == f"/embeddings/{route}"
        assert wait_job(server, alice, jobs[kind]["job_id"])["status"] == "SUCCESS"

    def arr(kind, seq):
        job = jobs[kind]
        r = server.get(f"{API}{job['job_type']}/{job['job_id']}/{seq}", headers=alice)
        assert r.status_code == 200, r.text
        return np.load(io.BytesIO(r.content), allow_pickle=False)

    d = engine().config.hidden_dim
    per_res = arr("embed", "MRTAY")
    assert per_res.shape == (2, 5, d) and per_res.dtype == np.float32
    np.testing.assert_allclose(arr("embed_mean", "MRTAY"), per_res.mean(axis=1), rtol=1e-5, atol=1e-6)
    logits = arr("logits", "MKTAYIAKQR")
    assert logits.shape == (2, 10, 24)
    # logits agree with the engine's score: sum of log p(residue) + log p(stop) == forward score
    import torch

    from plmserve.models.poet import alphabet as A

    reps = prompt_replicates(server, alice, prompt_id)
    lp = torch.log_softmax(torch.as_tensor(logits[0], dtype=torch.float64), dim=-1)
    ids = A.encode_sequence("MKTAYIAKQR")[1:-1]
    partial = float(lp[np.arange(10), ids].sum())
    fwd = float(engine().score(reps[0], ["MKTAYIAKQR"], reverse=False)[0])
    assert partial > fwd  # the stop token's log-probability is the (negative) remainder
    # stream: framed, submission order
    body = server.get(f"{API}/embeddings/{jobs['embed']['job_id']}/stream", headers=alice).content
    frames, pos = [], 0
    while pos < len(body):
        (n,) = struct.unpack(">Q", body[pos:pos + 8])
        frames.append(np.load(io.BytesIO(body[pos + 8:pos + 8 + n])))
        pos += 8 + n
    assert [f.shape for f in frames] == [(2, 10, d), (2, 5, d)]
    np.testing.assert_array_equal(frames[1], per_res)
    assert server.get(f"{API}/embeddings/embed/{jobs['embed']['job_id']}/sequences", headers=alice).json() == seqs
    assert server.get(f"{API}/embeddings/embed/{jobs['embed']['job_id']}/MKKKK", headers=alice).status_code == 404
    assert server.get(f"{API}/embeddings/logits/{jobs['embed']['job_id']}/MRTAY", headers=alice).status_code == 400


def test_poet_request_errors(server, alice, bob):
    prompt_id = make_prompt(server, alice, replicates=1)
    url = f"{API}/embeddings/models/poet/score"
    assert server.post(url, json={"sequences": ["MKT"]}, headers=alice).status_code == 400
    r = server.post(url, json={"sequences": ["MK1T"], "prompt_id": prompt_id}, headers=alice)
    assert r.status_code == 400 and "position 3" in r.json()["detail"]
    assert server.post(url, json={"sequences": [], "prompt_id": prompt_id}, headers=alice).status_code == 422
    r = server.post(url, json={"sequences": ["MKT"], "prompt_id": prompt_id, "query_id": str(uuid.uuid4())},
                    headers=alice)
    assert r.status_code == 400 and "PoET-2" in r.json()["detail"]
    # bob cannot use alice's prompt, nor read her results
    assert server.post(url, json={"sequences": ["MKT"], "prompt_id": prompt_id}, headers=bob).status_code == 400
    job = server.post(url, json={"sequences": ["MKT"], "prompt_id": prompt_id}, headers=alice).json()
    wait_job(server, alice, job["job_id"])
    assert server.get(f"{API}/embeddings/{job['job_id']}/scores", headers=bob).status_code == 404
    assert server.get(f"{API}/embeddings/{job['job_id']}/generate", headers=alice).status_code == 400


# ------------------------------------------------------------------ jobs
def test_jobs_filters_paging_and_bounds(server, alice, bob):
    prompt_id = make_prompt(server, alice, replicates=1)
    before = server.get(f"{API}/jobs/{prompt_id}", headers=alice).json()["created_date"]
    ids = []
    for seqs in (["MKT"], ["MKS"], ["MKW"]):
        job = server.post(f"{API}/embeddings/models/poet/score", json={"sequences": seqs, "prompt_id": prompt_id},
                          headers=alice).json()
        ids.append(job["job_id"])
        wait_job(server, alice, job["job_id"])
    jobs = server.get(f"{API}/jobs", params={"page_size": 100}, headers=alice).json()
    assert {j["job_type"] for j in jobs} == {"/align/align", "/align/prompt", "/poet/score"}
    assert all(j["status"] in ("PENDING", "RUNNING", "SUCCESS", "FAILURE", "RETRYING", "CANCELED") for j in jobs)
    assert all(0 <= j["progress_counter"] <= 100 for j in jobs)
    got = server.get(f"{API}/jobs", params={"job_type": "/poet/score", "status": "SUCCESS", "page_size": 100},
                     headers=alice).json()
    assert sorted(j["job_id"] for j in got) == sorted(ids)
    assert all(j["num_records"] == 1 and j["progress_counter"] == 100 for j in got)
    assert server.get(f"{API}/jobs", params={"status": "success", "job_type": "/poet/score"},
                      headers=alice).json() == got
    page = server.get(f"{API}/jobs", params={"job_type": "/poet/score", "page_size": 2, "page_offset": 2},
                      headers=alice).json()
    assert [j["job_id"] for j in page] == [got[2]["job_id"]]
    recent = server.get(f"{API}/jobs", params={"more_recent_than": before, "job_type": "/poet/score"},
                        headers=alice).json()
    assert len(recent) == 3
    # the same instant written with another UTC offset
    from datetime import datetime, timedelta, timezone

    later = (datetime.now(timezone.utc) + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=-5)))
    assert server.get(f"{API}/jobs", params={"more_recent_than": later.isoformat()}, headers=alice).json() == []
    for bad, status in (({"more_recent_than": "1700000000"}, 400), ({"more_recent_than": "yesterday"}, 400),
                        ({"status": "DONE"}, 400), ({"page_offset": 10**30}, 422), ({"page_offset": -1}, 422),
                        ({"page_size": 0}, 422), ({"page_size": 10**9}, 422)):
        r = server.get(f"{API}/jobs", params=bad, headers=alice)
        assert r.status_code == status, (bad, r.text)
    assert server.get(f"{API}/jobs", params={"page_offset": 10**9}, headers=alice).json() == []
    assert server.get(f"{API}/jobs", headers=bob).json() == []
    assert server.get(f"{API}/jobs/{ids[0]}/args", headers=alice).json()["prompt_id"] == prompt_id
    assert server.get(f"{API}/jobs/{ids[0]}/args", headers=bob).status_code == 404


def test_canceled_job_results_are_4xx(server, alice):
    prompt_id = make_prompt(server, alice, replicates=1)
    store = server.app.state.job_service.store
    # a job the executor never picks up (created directly in the store), then canceled over HTTP
    job = store.create_job("/poet/score", "user:alice", {"prompt_id": prompt_id})
    r = server.post(f"{API}/jobs/{job.job_id}/cancel", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "CANCELED"
    for url in (f"{API}/embeddings/{job.job_id}/scores", f"{API}/poet/score?job_id={job.job_id}"):
        r = server.get(url, headers=alice)
        assert r.status_code == 409 and "canceled" in r.json()["detail"], url
    gen = store.create_job("/poet/generate", "user:alice", {"prompt_id": prompt_id})
    server.post(f"{API}/jobs/{gen.job_id}/cancel", headers=alice)
    assert server.get(f"{API}/embeddings/{gen.job_id}/generate", headers=alice).status_code == 409


# ------------------------------------------------------------------ prompt service
def context_zip(records):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if records:
            zf.writestr("000000.fasta", "".join(f">{n}\n{s}\n" for n, s in records))
    return buf.getvalue()


def test_create_prompt_roundtrip_and_use(server, alice, bob):
    reps = [[("s1", "MKTAYIAKQR"), ("s2", "MKTAHIAKQR")], [("unnamed-000000", "MRTAYIAKQK")]]
    files = [("context", (f"context-{i}.zip", context_zip(r), "application/zip")) for i, r in enumerate(reps)]
    r = server.post(f"{API}/prompt/create_prompt", files=files, data={"name": "my prompt"}, headers=alice)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["name"] == "my prompt" and meta["description"] is None and meta["num_replicates"] == 2
    assert meta["job_id"] is None and meta["status"] == "SUCCESS"
    pid = meta["id"]
    assert server.get(f"{API}/prompt/{pid}", headers=alice).json() == meta
    assert prompt_replicates(server, alice, pid) == [["MKTAYIAKQR", "MKTAHIAKQR"], ["MRTAYIAKQK"]]
    # usable by PoET (v1) and by the 0.2.x routes
    job = server.post(f"{API}/embeddings/models/poet/score", json={"sequences": ["MKTAYIAKQR"], "prompt_id": pid},
                      headers=alice).json()
    assert wait_job(server, alice, job["job_id"])["status"] == "SUCCESS"
    legacy = server.get(f"{API}/poet/align/inputs", params={"job_id": pid, "msa_type": "PROMPT", "replicate": 2},
                        headers=alice)
    assert csv_rows(legacy.text) == [["unnamed-000000", "MRTAYIAKQK"]]
    # sampled prompts are listed too, under their job id
    sampled = make_prompt(server, alice, replicates=3)
    listed = {p["id"]: p for p in server.get(f"{API}/prompt", headers=alice).json()}
    assert set(listed) == {pid, sampled}
    assert listed[sampled]["job_id"] == sampled and listed[sampled]["num_replicates"] == 3
    assert len(prompt_replicates(server, alice, sampled)) == 3
    # ownership
    assert server.get(f"{API}/prompt", headers=bob).json() == []
    for url in (f"{API}/prompt/{pid}", f"{API}/prompt/{pid}/content", f"{API}/prompt/{sampled}/content"):
        assert server.get(url, headers=bob).status_code == 404
    # an MSA job id is not a prompt
    msa = server.post(f"{API}/align/msa", params={"is_seed": "False"}, files={"msa_file": MSA_FASTA}, headers=alice)
    assert server.get(f"{API}/prompt/{msa.json()['job_id']}", headers=alice).status_code == 404


@pytest.mark.parametrize("entries, text", [
    ({"000000.1abc.cif": "data_x\n"}, "PoET-2"),
    ({"000000.fasta": ">a\nMKT:AAA\n"}, "complex"),
    ({"000000.fasta": ">a\nMK1T\n"}, "position 3"),
    ({"notes.txt": "hello"}, "unsupported file type"),
])
def test_create_prompt_rejects_what_poet1_cannot_use(server, alice, entries, text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in entries.items():
            zf.writestr(name, body)
    r = server.post(f"{API}/prompt/create_prompt", files=[("context", ("context-0.zip", buf.getvalue()))],
                    headers=alice)
    assert r.status_code == 400 and text in r.json()["detail"], r.text


def test_create_prompt_errors(server, alice):
    r = server.post(f"{API}/prompt/create_prompt", files=[("context", ("context-0.zip", b"not a zip"))], headers=alice)
    assert r.status_code == 400 and "not a zip" in r.json()["detail"]
    r = server.post(f"{API}/prompt/create_prompt", data={"name": "x"}, files=[("other", ("a", b"b"))], headers=alice)
    assert r.status_code == 400 and "context" in r.json()["detail"]
    empty = server.post(f"{API}/prompt/create_prompt", files=[("context", ("context-0.zip", context_zip([])))],
                        headers=alice)
    assert empty.status_code == 200 and empty.json()["num_replicates"] == 1


def test_queries_ids_and_exact_content_type(server, alice, bob):
    r = server.post(f"{API}/prompt/query",
                    files={"query": ("query.fasta", b">query\nMKTXXAYIAK:GHIK\n", "text/x-fasta")}, headers=alice)
    assert r.status_code == 200, r.text
    qid = r.json()["id"]
    assert str(uuid.UUID(qid, version=4)) == qid  # canonical lowercase UUIDv4
    assert server.get(f"{API}/prompt/query/{qid}", headers=alice).json()["id"] == qid
    content = server.get(f"{API}/prompt/query/{qid}/content", headers=alice)
    assert content.status_code == 200 and content.headers["content-type"] == "text/x-fasta"
    assert content.headers["content-disposition"].endswith("query.fasta")
    assert content.content == b">query\nMKTXXAYIAK:GHIK\n"
    cif = server.post(f"{API}/prompt/query", files={"query": ("query.cif", b"data_q\n#\n", "chemical/x-mmcif")},
                      headers=alice).json()
    assert server.get(f"{API}/prompt/query/{cif['id']}/content", headers=alice).headers["content-type"] == \
        "chemical/x-mmcif"
    assert server.get(f"{API}/prompt/query/{qid}", headers=bob).status_code == 404
    assert server.get(f"{API}/prompt/query/{qid}/content", headers=bob).status_code == 404
    for body in (b">q\nMK1T\n", b">q\nMKT::AA\n", b""):
        r = server.post(f"{API}/prompt/query", files={"query": ("query.fasta", body, "text/x-fasta")}, headers=alice)
        assert r.status_code == 400, body


# ------------------------------------------------------------------ align v1
def test_align_v1_seed_upload_inputs_and_prompt(server, alice):
    # the SDK sends a seed as ">seed\nSEQ" (no trailing newline) with is_seed=True
    r = server.post(f"{API}/align/msa", params={"is_seed": "True"}, files={"msa_file": b">seed\nMKTAYIAKQR"},
                    headers=alice)
    assert r.status_code == 200 and r.json()["job_type"] == "/align/align"
    seed_job = r.json()["job_id"]
    raw = server.get(f"{API}/align/inputs", params={"job_id": seed_job, "msa_type": "RAW"}, headers=alice)
    assert csv_rows(raw.text)[0] == ["seed", "MKTAYIAKQR"]
    assert wait_job(server, alice, seed_job)["status"] == "FAILURE"  # no search database configured here
    up = server.post(f"{API}/align/msa", params={"is_seed": "False"}, files={"msa_file": ("msa.fa", MSA_FASTA)},
                     headers=alice).json()
    assert up["status"] == "SUCCESS" and up["job_type"] == "/align/align"
    gen = server.get(f"{API}/align/inputs", params={"job_id": up["job_id"], "msa_type": "GENERATED"}, headers=alice)
    assert gen.status_code == 200 and csv_rows(gen.text)[0] == ["query", "MKTAYIAKQR"] and len(csv_rows(gen.text)) == 4
    r = server.post(f"{API}/align/prompt", params={"msa_id": up["job_id"], "replicates": 2, "seed": 0,
                                                    "max_msa_sequences": 3}, headers=alice)
    assert r.status_code == 200 and r.json()["job_type"] == "/align/prompt"
    pid = r.json()["job_id"]
    wait_job(server, alice, pid)
    one = server.get(f"{API}/align/inputs", params={"job_id": pid, "msa_type": "PROMPT", "replicate": 1},
                     headers=alice)
    assert [s for _, s in csv_rows(one.text)] == prompt_replicates(server, alice, pid)[0]
    meta = server.get(f"{API}/prompt/{pid}", headers=alice).json()
    assert meta["job_id"] == pid and meta["status"] == "SUCCESS" and meta["num_replicates"] == 2


# ------------------------------------------------------------------ ESM-2 through v1/embeddings
def test_esm2_embed_and_logits_via_embeddings(tmp_path):
    from tests.api._esm2_tiny import EMBED_DIM, make_tiny_esm2_dir

    make_tiny_esm2_dir(tmp_path / "models", slug="esm2-8m")
    settings = Settings(data_dir=tmp_path / "data", api_keys=["admin-key"], model_dir=tmp_path / "models",
                        device="cpu", dtype="float32", offline=True)
    app = make_app(settings, users={"alice": "alice-password"})
    with TestClient(app) as client:
        alice = login(client, "alice")
        models = {m["model_id"]: m for m in client.get(f"{API}/embeddings/models", params={"verbose": True},
                                                       headers=alice).json()}
        assert models["esm2_t6_8M_UR50D"]["dimension"] == 320 and models["esm2_t33_650M_UR50D"]["output_types"] == \
            ["embed", "logits", "attn"]
        seqs = ["MKTAYIAKQR", "MRTAY"]
        jobs = {}
        for kind, body in (("mean", {"reduction": "MEAN"}), ("per_res", {}), ("logits", None)):
            route = "logits" if body is None else "embed"
            r = client.post(f"{API}/embeddings/models/esm2_t6_8M_UR50D/{route}", json={"sequences": seqs, **(body or {})},
                            headers=alice)
            assert r.status_code == 200, r.text
            jobs[kind] = r.json()
            assert wait_job(client, alice, r.json()["job_id"])["status"] == "SUCCESS"

        def arr(kind, seq):
            job = jobs[kind]
            return np.load(io.BytesIO(client.get(f"{API}{job['job_type']}/{job['job_id']}/{seq}", headers=alice).content))

        eng = app.state.models.get("esm2-8m", family="esm2")
        ref = eng.encode(seqs, include=["mean", "per_token", "logits"])
        (mean,) = ref[1]["mean_representations"].values()
        (per_res,) = ref[1]["representations"].values()
        assert arr("mean", "MRTAY").shape == (EMBED_DIM,)
        np.testing.assert_allclose(arr("mean", "MRTAY"), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(arr("per_res", "MRTAY"), per_res, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(arr("logits", "MKTAYIAKQR"), ref[0]["logits"], rtol=1e-5, atol=1e-5)
        # attention maps of the last layer, [H, L, L], equal to the engine's own maps
        r = client.post(f"{API}/embeddings/models/esm2_t6_8M_UR50D/attn", json={"sequences": ["MRTAY"]}, headers=alice)
        assert r.status_code == 200 and r.json()["job_type"] == "/embeddings/attn"
        jobs["attn"] = r.json()
        assert wait_job(client, alice, r.json()["job_id"])["status"] == "SUCCESS"
        from plmserve.models.esm2.engine import attention_maps

        with attention_maps() as maps:
            eng.encode(["MRTAY"], include=["attentions"])
        attn = arr("attn", "MRTAY")
        assert attn.shape == (4, 5, 5)
        np.testing.assert_allclose(attn, maps[-1][0, :, 1:-1, 1:-1].numpy(), rtol=1e-5, atol=1e-6)
        r = client.post(f"{API}/embeddings/models/poet/attn", json={"sequences": ["MKT"]}, headers=alice)
        assert r.status_code == 400 and "attention" in r.json()["detail"]
        r = client.post(f"{API}/embeddings/models/esm2_t6_8M_UR50D/embed", json={"sequences": ["MK1"]}, headers=alice)
        assert r.status_code == 400
        r = client.post(f"{API}/embeddings/models/esm2_t6_8M_UR50D/embed", json={"sequences": ["MKT"], "prompt_id": "p"},
                        headers=alice)
        assert r.status_code == 400 and "takes no prompt" in r.json()["detail"]
        # a model whose weights are absent (offline): the job fails with the loader's message (not a 5xx)
        r = client.post(f"{API}/embeddings/models/esm2_t12_35M_UR50D/embed", json={"sequences": ["MKT"]}, headers=alice)
        assert r.status_code == 200
        failed = wait_job(client, alice, r.json()["job_id"])
        assert failed["status"] == "FAILURE" and failed["failure_message"]
