"""The OpenProtein-compatible HTTP API: wire format, quirks, errors, ownership.

The PoET engine here is :class:`tests.client.support.FakePoetEngine` (a deterministic double
whose scores are a known function of the prompt and the sequence), so these tests check what the
API layer does with prompts, replicates, names, paging and errors. The real engine runs in
``tests/e2e``.
"""

from __future__ import annotations

import csv
import io
import time

import pytest
from fastapi.testclient import TestClient

from plmserve.settings import Settings
from tests.client.support import FakePoetEngine, make_app, wait_job

MSA_FASTA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"
PROMPT_FILE = b">a\nMKTAYIAKQR\n>b\nMKTAYAKQR\n<END_PROMPT>\nMRTAYIAKQK\n"


def fake_score(prompt_len: int, seq: str) -> float:
    return -(len(seq) + 0.5 * prompt_len + 0.01 * (seq.find("W") + 1))


@pytest.fixture
def server(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=["admin-key", "admin-key-2"])
    app = make_app(settings, {"poet": FakePoetEngine()})
    with TestClient(app) as client:
        yield client


def login(client, user):
    r = client.post("/api/v1/login/user-access-token", params={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    return {"authorization": f"Bearer {body['access_token']}"}


@pytest.fixture
def alice(server):
    return login(server, "alice")


@pytest.fixture
def bob(server):
    return login(server, "bob")


def rows(text):
    return [r for r in csv.reader(io.StringIO(text))]


def upload_prompt(client, headers, content=PROMPT_FILE):
    r = client.post("/api/v1/poet/align/upload_prompt", files={"prompt_file": content}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------ auth
def test_login_variants_and_errors(server):
    r = server.post("/api/v1/login/user-access-token", data={"username": "alice", "password": "alice-password"})
    assert r.status_code == 200 and r.json()["access_token"]
    r = server.post("/api/v1/login/user-access-token", params={"username": "alice", "password": "wrong-pass"})
    assert r.status_code == 401 and r.json() == {"detail": "invalid username or password"}
    assert server.get("/api/v1/jobs").status_code == 401
    assert server.get("/api/v1/jobs", headers={"authorization": "Bearer nonsense"}).status_code == 401
    assert server.get("/api/v1/jobs", headers=login(server, "alice")).json() == []


# ------------------------------------------------------------------ MSA and prompt
def test_upload_msa_and_read_it_back(server, alice):
    r = server.post("/api/v1/poet/align/msa", params={"is_seed": "False"}, files={"msa_file": MSA_FASTA},
                    headers=alice)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/align/align" and job["status"] == "SUCCESS"
    assert job["msa_id"] == job["job_id"] and job["num_records"] == 4
    r = server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "GENERATED"},
                   headers=alice)
    assert r.headers["content-type"].startswith("text/csv")
    assert rows(r.text) == [["query", "MKTAYIAKQR"], ["hom1", "MKTAY-AKQR"], ["hom2", "MRTAYIAKQK"],
                            ["hom3", "MKSAYLAKQR"]]
    # the v1/align alias and the GET .../msa spelling serve the same
    r2 = server.get("/api/v1/align/msa", params={"job_id": job["job_id"]}, headers=alice)
    assert r2.text == r.text


def test_bad_msa_uploads_are_400_with_location(server, alice):
    r = server.post("/api/v1/align/msa", params={"is_seed": "false"},
                    files={"msa_file": b">q\nMKTAYIAKQR\n>h\nMKTAY\n"}, headers=alice)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("Invalid MSA (not aligned, etc)")
    r = server.post("/api/v1/align/msa", params={"is_seed": "True"}, files={"msa_file": b">seed\nMKT1AY\n"},
                    headers=alice)
    assert r.status_code == 400
    assert "'1' at position 4" in r.json()["detail"]
    r = server.post("/api/v1/align/msa", params={"is_seed": "True"}, headers=alice)
    assert r.status_code == 400 and "msa_file" in r.json()["detail"]


def test_seed_msa_without_database_fails_with_a_useful_message(server, alice):
    r = server.post("/api/v1/poet/align/msa", params={"is_seed": "True"}, files={"msa_file": b">seed\nMKTAYIAKQR"},
                    headers=alice)
    assert r.status_code == 200
    job = r.json()
    seed_rows = rows(server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "RAW"},
                                headers=alice).text)
    assert seed_rows == [["seed", "MKTAYIAKQR"]]
    done = wait_job(server, alice, job["job_id"])
    assert done["status"] == "FAILURE"
    assert "PLMSERVE_MSA_DATABASE" in done["failure_message"]
    r = server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "GENERATED"},
                   headers=alice)
    assert r.status_code == 409


def test_sample_prompt_replicates_and_inputs(server, alice):
    msa = server.post("/api/v1/poet/align/msa", params={"is_seed": "False"}, files={"msa_file": MSA_FASTA},
                      headers=alice).json()
    r = server.post("/api/v1/poet/align/prompt",
                    params={"msa_id": msa["msa_id"], "replicates": 3, "seed": 11, "max_msa_sequences": 2,
                            "force_include_first": "True", "msa_method": "RANDOM"}, headers=alice)
    assert r.status_code == 200, r.text
    prompt = r.json()
    assert prompt["job_type"] == "/align/prompt" and prompt["prompt_id"] == prompt["job_id"]
    done = wait_job(server, alice, prompt["job_id"])
    assert done["status"] == "SUCCESS", done
    assert done["num_records"] == 3
    args = server.get(f"/api/v1/jobs/{prompt['job_id']}/args", headers=alice).json()
    assert args["root_msa"] == msa["msa_id"] and args["force_include_first"] is True and args["seed"] == 11
    reps = []
    for k in (1, 2, 3):
        r = server.get("/api/v1/poet/align/inputs", params={"job_id": prompt["job_id"], "msa_type": "PROMPT",
                                                            "replicate": k}, headers=alice)
        rep = rows(r.text)
        assert len(rep) == 2 and ["query", "MKTAYIAKQR"] in rep  # seed forced in, ungapped
        assert all("-" not in s for _, s in rep)
        reps.append(rep)
    assert rows(server.get("/api/v1/poet/align/inputs", params={"job_id": prompt["job_id"], "msa_type": "PROMPT",
                                                                "replicate": 0}, headers=alice).text) == []
    everything = server.get("/api/v1/poet/align/inputs", params={"job_id": prompt["job_id"], "msa_type": "PROMPT"},
                            headers=alice).text
    assert rows(everything) == reps[0] + [["<END_PROMPT>"]] + reps[1] + [["<END_PROMPT>"]] + reps[2]
    # the MSA can be read through the prompt's id (lineage)
    msa_rows = rows(server.get("/api/v1/poet/align/inputs", params={"job_id": prompt["job_id"],
                                                                    "msa_type": "GENERATED"}, headers=alice).text)
    assert msa_rows[0] == ["query", "MKTAYIAKQR"] and len(msa_rows) == 4


@pytest.mark.parametrize("params, status, text", [
    ({"replicates": 16}, 422, None),
    ({"max_msa_sequences": 100}, 422, None),
    ({"seed": -1}, 422, None),
    ({"max_msa_sequences": 5, "max_msa_tokens": 500}, 400, "but not both"),
    ({"min_similarity": 0.9, "max_similarity": 0.5}, 400, "must not exceed"),
    ({"msa_method": "BEST"}, 400, "unknown msa_method"),
])
def test_prompt_parameter_errors(server, alice, params, status, text):
    msa = server.post("/api/v1/poet/align/msa", params={"is_seed": "False"}, files={"msa_file": MSA_FASTA},
                      headers=alice).json()
    r = server.post("/api/v1/poet/align/prompt", params={"msa_id": msa["msa_id"], **params}, headers=alice)
    assert r.status_code == status, r.text
    if text:
        assert text in r.json()["detail"]


def test_upload_prompt_without_filename_is_sniffed(server, alice):
    # a multipart part with no filename at all (as some clients send it)
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt_file\"\r\n\r\n"
            "MKTAYIAKQR\nMKTAYAKQR\n<END_PROMPT>\nother,MRTAYIAKQK\n"
            f"\r\n--{boundary}--\r\n").encode()
    r = server.post("/api/v1/poet/align/upload_prompt", content=body,
                    headers={**alice, "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/align/prompt" and job["status"] == "SUCCESS" and job["num_records"] == 2
    rep2 = rows(server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "PROMPT",
                                                                "replicate": 2}, headers=alice).text)
    assert rep2 == [["other", "MRTAYIAKQK"]]
    r = server.post("/api/v1/poet/align/upload_prompt", files={"prompt_file": b">a\nMK-TA\n"}, headers=alice)
    assert r.status_code == 400 and "position 3" in r.json()["detail"]


# ------------------------------------------------------------------ PoET
def test_score_names_replicates_order_and_paging(server, alice):
    prompt = upload_prompt(server, alice)
    seqs = ["MKTAYIAKQR", "MKTAYIAKQW", "MW", "ACDEFGHIKLMNPQRSTVWY"] + ["MKTAYIAKQR"[: 3 + i] for i in range(8)]
    r = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                    files={"variant_file": "\n".join(seqs).encode()}, headers=alice)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/poet" and job["num_records"] == 12
    assert wait_job(server, alice, job["job_id"])["status"] == "SUCCESS"
    body = server.get("/api/v1/poet/score", params={"job_id": job["job_id"]}, headers=alice).json()
    assert body["job_id"] == job["job_id"] and body["status"] == "SUCCESS" and body["job_type"] == "/poet"
    assert body["num_rows"] == 12
    result = body["result"]
    assert [x["name"] for x in result] == [f"sequence-{i:02d}" for i in range(1, 13)]
    assert [x["sequence"] for x in result] == seqs
    for x in result:  # one score per replicate: prompt 1 has 2 sequences, prompt 2 has 1
        assert x["score"] == pytest.approx([fake_score(2, x["sequence"]), fake_score(1, x["sequence"])])
    page = server.get("/api/v1/poet/score", params={"job_id": job["job_id"], "page_size": 5, "page_offset": 10},
                      headers=alice).json()
    assert [x["sequence"] for x in page["result"]] == seqs[10:]
    assert page["page_size"] == 5 and page["page_offset"] == 10


def test_score_keeps_given_names_and_rejects_bad_residues(server, alice):
    prompt = upload_prompt(server, alice)
    r = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                    files={"variant_file": b">wt\nMKTAYIAKQR\n>m1\nMKTAYIAKQW\n"}, headers=alice)
    wait_job(server, alice, r.json()["job_id"])
    res = server.get("/api/v1/poet/score", params={"job_id": r.json()["job_id"]}, headers=alice).json()["result"]
    assert [x["name"] for x in res] == ["wt", "m1"]
    r = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                    files={"variant_file": b"MKTAYIAKQR\nMKTAZ#\n"}, headers=alice)
    assert r.status_code == 400
    assert r.json()["detail"] == ("variant_file: row 2: invalid character '#' at position 6; "
                                  "allowed: ARNDCQEGHILKMFPSTWYVXOUBZ")
    r = server.post("/api/v1/poet/score", params={"prompt_id": "no-such-prompt"},
                    files={"variant_file": b"MKT\n"}, headers=alice)
    assert r.status_code == 400 and "invalid prompt" in r.json()["detail"]


def test_results_before_the_job_is_done_are_409_and_progress_is_reported(server, alice):
    app = server.app
    app.state.models.put("poet", FakePoetEngine(delay=0.15))
    prompt = upload_prompt(server, alice)
    job = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                      files={"variant_file": b"MKTAYIAKQR\n" * 10}, headers=alice).json()
    r = server.get("/api/v1/poet/score", params={"job_id": job["job_id"]}, headers=alice)
    assert r.status_code == 409 and "has not produced results yet" in r.json()["detail"]
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        j = server.get(f"/api/v1/jobs/{job['job_id']}", headers=alice).json()
        if j["status"] == "RUNNING":
            seen.add(j["progress_counter"])
        if j["status"] == "SUCCESS":
            break
        time.sleep(0.03)
    assert j["status"] == "SUCCESS" and j["progress_counter"] == 100
    assert any(0 < p < 100 for p in seen), seen  # partial progress was visible while running


def test_single_site_rows_and_parent_id(server, alice):
    prompt = upload_prompt(server, alice)
    wt = "MKTA"
    r = server.post("/api/v1/poet/single_site", params={"variant": wt, "prompt_id": prompt["prompt_id"]},
                    headers=alice)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["job_type"] == "/poet/single_site" and job["num_records"] == 1 + 19 * 4
    wait_job(server, alice, job["job_id"])
    res = server.get("/api/v1/poet/single_site", params={"job_id": job["job_id"]}, headers=alice).json()["result"]
    codes = [x["sequence"] for x in res]
    assert codes[0] == "X0X" and codes[1:4] == ["M1A", "M1R", "M1N"] and "M1M" not in codes
    assert len(codes) == 77 and len(set(codes)) == 77 and codes[-1] == "A4V"
    assert all(x["name"] is None and len(x["score"]) == 2 for x in res)
    # the WT row and a mutant row carry the scores of the corresponding sequences
    assert res[0]["score"] == pytest.approx([fake_score(2, wt), fake_score(1, wt)])
    w = next(x for x in res if x["sequence"] == "K2W")
    assert w["score"] == pytest.approx([fake_score(2, "MWTA"), fake_score(1, "MWTA")])
    # parent_id: inherit the prompt of an existing PoET job
    r = server.post("/api/v1/poet/single_site", params={"variant": "MK", "parent_id": job["job_id"]}, headers=alice)
    assert r.status_code == 200 and r.json()["prompt_id"] == prompt["prompt_id"]
    r = server.post("/api/v1/poet/single_site", params={"variant": "MK"}, headers=alice)
    assert r.status_code == 400 and r.json()["detail"] == "Either parent_id or prompt_id must be set."


def test_generate_csv_and_seed_repeatability(server, alice):
    prompt = upload_prompt(server, alice)

    def generate(seed):
        job = server.post("/api/v1/poet/generate", params={"prompt_id": prompt["prompt_id"], "generate_n": 4,
                                                           "seed": seed, "temperature": 0.8, "topk": 15,
                                                           "topp": 0.9, "maxlen": 100}, headers=alice).json()
        assert job["job_type"] == "/poet/generate"
        wait_job(server, alice, job["job_id"])
        r = server.get("/api/v1/poet/generate", params={"job_id": job["job_id"]}, headers=alice)
        assert r.headers["content-type"].startswith("text/csv")
        return rows(r.text)

    a, b, c = generate(5), generate(5), generate(6)
    assert [r[0] for r in a] == [f"generated-sequence-{i}" for i in range(1, 5)]
    assert all(len(r) == 4 for r in a)  # name, sequence, one score per replicate
    assert [float(x) for x in a[0][2:]] == pytest.approx([fake_score(2, a[0][1]), fake_score(1, a[0][1])])
    assert [r[1] for r in a] == [r[1] for r in b]
    assert [r[1] for r in a] != [r[1] for r in c]
    r = server.post("/api/v1/poet/generate", params={"prompt_id": prompt["prompt_id"], "topk": 21}, headers=alice)
    assert r.status_code == 422
    r = server.post("/api/v1/poet/generate", params={"prompt_id": prompt["prompt_id"], "temperature": 0.05},
                    headers=alice)
    assert r.status_code == 422


def test_lineage_inputs_from_a_poet_job(server, alice):
    msa = server.post("/api/v1/poet/align/msa", params={"is_seed": "False"}, files={"msa_file": MSA_FASTA},
                      headers=alice).json()
    prompt = server.post("/api/v1/poet/align/prompt", params={"msa_id": msa["msa_id"], "seed": 3,
                                                              "max_msa_sequences": 3}, headers=alice).json()
    # submitted while the prompt may still be pending: the score job waits for it
    job = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                      files={"variant_file": b"MKTAYIAKQR\n"}, headers=alice).json()
    assert wait_job(server, alice, job["job_id"])["status"] == "SUCCESS"
    via_job = server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "PROMPT",
                                                              "replicate": 1}, headers=alice).text
    via_prompt = server.get("/api/v1/poet/align/inputs", params={"job_id": prompt["job_id"], "msa_type": "PROMPT",
                                                                 "replicate": 1}, headers=alice).text
    assert via_job == via_prompt and via_job
    raw = server.get("/api/v1/poet/align/inputs", params={"job_id": job["job_id"], "msa_type": "RAW"}, headers=alice)
    assert rows(raw.text)[0] == ["query", "MKTAYIAKQR"]


# ------------------------------------------------------------------ jobs and users
def test_jobs_list_filters_and_cancel(server, alice):
    prompt = upload_prompt(server, alice)
    job = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                      files={"variant_file": b"MKT\n"}, headers=alice).json()
    wait_job(server, alice, job["job_id"])
    jobs = server.get("/api/v1/jobs", headers=alice).json()
    assert [j["job_id"] for j in jobs] == [job["job_id"], prompt["job_id"]]
    assert [j["job_id"] for j in server.get("/api/v1/jobs", params={"job_type": "/poet"}, headers=alice).json()] \
        == [job["job_id"]]
    assert server.get("/api/v1/jobs", params={"status": "FAILURE"}, headers=alice).json() == []
    assert len(server.get("/api/v1/jobs", params={"page_size": 1, "page_offset": 1}, headers=alice).json()) == 1
    r = server.post(f"/api/v1/jobs/{job['job_id']}/cancel", headers=alice)
    assert r.status_code == 409 and "already SUCCESS" in r.json()["detail"]


def test_users_cannot_see_each_others_jobs(server, alice, bob):
    prompt = upload_prompt(server, alice)
    job = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                      files={"variant_file": b"MKT\n"}, headers=alice).json()
    wait_job(server, alice, job["job_id"])
    assert server.get("/api/v1/jobs", headers=bob).json() == []
    for path, params in [(f"/api/v1/jobs/{job['job_id']}", {}), (f"/api/v1/jobs/{job['job_id']}/args", {}),
                         ("/api/v1/poet/score", {"job_id": job["job_id"]}),
                         ("/api/v1/poet/align/inputs", {"job_id": prompt["job_id"], "msa_type": "PROMPT"})]:
        r = server.get(path, params=params, headers=bob)
        assert r.status_code == 404, path
        assert r.json() == {"detail": f"job {params.get('job_id', job['job_id'])} not found"}
    assert server.post(f"/api/v1/jobs/{job['job_id']}/cancel", headers=bob).status_code == 404
    # bob cannot use alice's prompt either
    r = server.post("/api/v1/poet/score", params={"prompt_id": prompt["prompt_id"]},
                    files={"variant_file": b"MKT\n"}, headers=bob)
    assert r.status_code == 400 and "invalid prompt" in r.json()["detail"]
    # API-key callers own their jobs separately too, even keys with a common prefix
    key1, key2 = {"authorization": "Token admin-key"}, {"authorization": "Bearer admin-key-2"}
    assert server.get("/api/v1/jobs", headers=key1).json() == []
    keyed = upload_prompt(server, key1)
    assert [j["job_id"] for j in server.get("/api/v1/jobs", headers=key1).json()] == [keyed["job_id"]]
    assert server.get("/api/v1/jobs", headers=key2).json() == []
    assert server.get(f"/api/v1/jobs/{keyed['job_id']}", headers=key2).status_code == 404
