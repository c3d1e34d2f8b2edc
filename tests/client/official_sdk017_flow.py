"""Run the official ``openprotein-python`` 0.17.0 SDK against a plmserve server (not a test module).

Usage: ``<python with openprotein-python 0.17.0> official_sdk017_flow.py URL USERNAME PASSWORD IN.json``
where IN.json holds ``{"wild_type", "msa_fasta" (path), "variants": [[name, seq], ...]}``.
Prints one JSON object with what the SDK returned; ``test_official_sdk017.py`` checks it.
Only the SDK's base URL is changed (``backend=URL/api/``); ``HOME`` must point at a scratch
directory (the SDK keeps tokens in ``~/.openprotein``).
"""

import json
import os
import sys
import time

import openprotein
from openprotein.errors import HTTPError

T0 = time.monotonic()
STEPS = {}


def step(name):
    STEPS[name] = round(time.monotonic() - T0, 2)

url, username, password, inputs = sys.argv[1:5]
with open(inputs) as fh:
    given = json.load(fh)
wt = given["wild_type"]
poll = {"interval": 0.2, "timeout": 600}

session = openprotein.connect(username, password, backend=url.rstrip("/") + "/api/")
out = {"version": openprotein.__version__, "legacy_auth": getattr(session, "_legacy_mode", None)}

# 1. MSA by homology search from the wild type (against the server's FASTA database)
msa = session.align.create_msa(wt)
out["created_msa_type"] = msa.job.job_type
created = list(msa.wait(**poll))
out["created_msa"] = {"n": len(created), "first": list(created[0]), "names": [n for n, _ in created[1:]]}
out["created_seed"] = msa.get_seed()

step("msa_created")
# 2. upload 300 real BLAT rows
with open(given["msa_fasta"], "rb") as fh:
    uploaded = session.align.upload_msa(fh)
up_rows = list(uploaded.wait(**poll))
out["uploaded_msa"] = {"n": len(up_rows), "first": list(up_rows[0])}

step("uploaded")
# 3. a prompt of 3 replicates sampled from the upload
prompt = uploaded.sample_prompt(num_sequences=8, num_ensemble_prompts=3, random_seed=42)
out["prompt_type"] = prompt.job.job_type if prompt.job is not None else None
replicates = prompt.wait(**poll)
out["prompt"] = [[[p.name, p.sequence.decode() if isinstance(p.sequence, bytes) else str(p.sequence)]
                  for p in rep] for rep in replicates]
out["prompt_id"] = prompt.id
meta = session.prompt.get_prompt(prompt.id)
out["prompt_meta"] = {"id": meta.id, "num_replicates": meta.metadata.num_replicates, "job_id": meta.metadata.job_id}

step("prompt")
# an uploaded prompt (2 replicates of real BLAT rows) and a query, through the prompt service
homologs = [seq.replace("-", "") for _, seq in up_rows[1:6]]
uploaded_prompt = session.prompt.create_prompt([homologs[:3], homologs[3:]], name="blat-upload")
out["uploaded_prompt"] = {
    "name": uploaded_prompt.name, "num_replicates": uploaded_prompt.num_replicates,
    "content": [[p.sequence.decode() for p in rep] for rep in uploaded_prompt.wait(**poll)],
    "homologs": homologs,
}
out["listed_prompts"] = sorted(p.id for p in session.prompt.list_prompts())
query = session.prompt.create_query(wt[:30] + "XXX")
out["query"] = {"id": str(query.id), "seq": query.get().sequence.decode()}

# 4. PoET through session.embedding
poet = session.embedding.get_model("poet")
out["models"] = [m.id for m in session.embedding.list_models()]
score = poet.score([seq.encode() for _, seq in given["variants"]], prompt=prompt)
out["score_type"] = score.job.job_type
out["score"] = [[r.name, r.sequence.decode() if isinstance(r.sequence, bytes) else r.sequence,
                 [float(x) for x in r.score]] for r in score.wait(**poll)]

step("score")
up_score = poet.score([wt.encode()], prompt=uploaded_prompt.id).wait(**poll)
out["uploaded_prompt_score"] = [float(x) for x in up_score[0].score]
ssp = poet.single_site(wt[:40].encode(), prompt=prompt)
out["single_site_type"] = ssp.job.job_type
out["single_site"] = [[r.mut_code, [float(x) for x in r.score]] for r in ssp.wait(**poll)]

indel = poet.indel(wt[:12].encode(), prompt=prompt, insert="G", delete=[2])
out["indel_type"] = indel.job.job_type
out["indel"] = [[r.name, r.sequence.decode() if isinstance(r.sequence, bytes) else r.sequence]
                for r in indel.wait(**poll)]
out["score_args_prompt"] = score.args.get("prompt_id")

step("single_site")
gens = []
for _ in range(2):
    gen = poet.generate(prompt, num_samples=3, seed=7, max_length=80, temperature=1.0, topk=15)
    gens.append([[r.name, r.sequence.decode() if isinstance(r.sequence, bytes) else r.sequence,
                  [float(x) for x in r.score]] for r in gen.wait(**poll)])
out["generate_type"] = gen.job.job_type
out["generate"] = gens

step("generate")
# embeddings: PoET (per-sequence .npy requests in parallel), logits via the framed stream, ESM-2
emb = poet.embed([wt[:30], wt[:20]], prompt=prompt)
out["poet_embed"] = [[s.decode() if isinstance(s, bytes) else s, list(a.shape)] for s, a in emb.wait(**poll)]
step("poet_embed")
lg = poet.logits([wt[:20]], prompt=prompt)
lg.max_workers = 0
out["poet_logits"] = [list(a.shape) for _, a in lg.wait(**poll)]
step("poet_logits")
esm = session.embedding.get_model("esm2_t6_8M_UR50D")
out["esm_embed"] = [list(a.shape) for _, a in esm.embed([wt[:50]]).wait(**poll)]
out["esm_attn"] = [list(a.shape) for _, a in esm.attn([wt[:12]]).wait(**poll)]
esmc = session.embedding.get_model("esmc-300m")
out["esmc_class"] = type(esmc).__name__
out["esmc_meta"] = {"dimension": esmc.metadata.dimension, "output_types": list(esmc.metadata.output_types)}
out["esmc_embed"] = [[s.decode() if isinstance(s, bytes) else s, a.tolist()]
                     for s, a in esmc.embed([wt[:15], wt[:9]], reduction="MEAN").wait(**poll)]
out["esmc_logits"] = [a.tolist() for _, a in esmc.logits([wt[:7]]).wait(**poll)]

step("esm")
# 5. reload by id; a bad id raises the SDK's error type
reloaded = session.load_job(score.id)
out["reloaded_type"] = type(reloaded).__name__
out["reloaded_score"] = [[r.name, [float(x) for x in r.score]] for r in reloaded.get()]
out["jobs_score"] = len(session.jobs.list(job_type="/poet/score"))
out["jobs_success_prompt"] = [j.job_id for j in session.jobs.list(status="SUCCESS", job_type="/align/prompt")]
try:
    session.load_job("00000000-0000-4000-8000-000000000000")
    out["bad_id"] = None
except HTTPError as exc:
    out["bad_id"] = {"type": type(exc).__name__, "status": exc.status_code}
# tokens: the SDK adopts its stored token on the next connect; an expired one is refreshed
# (v1/auth/refresh); a refresh token the server does not know (401) makes it log in again
def tokens():
    with open(os.path.expanduser("~/.openprotein/token.json")) as fh:
        return json.load(fh)


def rewrite(**fields):
    data = tokens()
    for rec in data.values():
        rec.update(fields)
    with open(os.path.expanduser("~/.openprotein/token.json"), "w") as fh:
        json.dump(data, fh)


backend = url.rstrip("/") + "/api/"
first = next(iter(tokens().values()))
s2 = openprotein.connect(username, password, backend=backend)
out["adopted"] = next(iter(tokens().values()))["access_token"] == first["access_token"] and len(s2.jobs.list()) > 0
rewrite(expires_at=0.0)
s3 = openprotein.connect(username, password, backend=backend)
n3 = len(s3.jobs.list())
after = next(iter(tokens().values()))
out["refreshed"] = (after["access_token"] != first["access_token"] and after["refresh_token"] != first["refresh_token"]
                    and n3 > 0)
rewrite(expires_at=0.0, refresh_token="forgotten-by-the-server")
s4 = openprotein.connect(username, password, backend=backend)
out["relogin"] = len(s4.jobs.list()) > 0 and next(iter(tokens().values()))["refresh_token"] != "forgotten-by-the-server"
step("end")
out["steps"] = STEPS
print(json.dumps(out))
