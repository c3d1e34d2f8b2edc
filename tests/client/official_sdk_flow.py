"""Run the official ``openprotein-python`` 0.2.x SDK against a plmserve server (not a test module).

Usage: ``<python with openprotein-python 0.2.x> official_sdk_flow.py URL USERNAME PASSWORD``.
Prints one JSON object with what the SDK returned; ``test_official_sdk.py`` checks it.
Only the SDK's base URL is changed (``backend=URL/api/``).
"""

import io
import json
import sys

import openprotein

MSA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"

url, username, password = sys.argv[1:4]
session = openprotein.connect(username, password, backend=url.rstrip("/") + "/api/")
poet = session.poet
out = {"version": getattr(openprotein, "__version__", "?")}

msa = poet.upload_msa(MSA)
out["msa_rows"] = [list(r) for r in msa.wait()]
prompt = msa.sample_prompt(num_sequences=3, num_ensemble_prompts=2, random_seed=5)
out["prompt_rows"] = [list(r) for r in prompt.wait()]
out["prompt_1"] = [list(r) for r in prompt.get_prompt(1)]
score = poet.score(prompt, [b"MKTAYIAKQR", b"MKTAYIAKQW"])
out["score"] = [[r.name, r.sequence.decode(), r.score] for r in score.wait()]
ssp = poet.single_site(prompt, b"MKT")
out["single_site"] = [[r.sequence.decode(), r.score] for r in ssp.wait()]
gen = poet.generate(prompt, num_samples=3, seed=4)
out["generate"] = [[r.name, r.sequence.decode(), r.score] for r in gen.wait()]
up = poet.upload_prompt(io.BytesIO(b"MKTAYIAKQR\nMKSAY\n<END_PROMPT>\nMRTAYIAKQK\n"))
out["uploaded_prompt_id"] = up.prompt_id
out["uploaded_prompt_2"] = [list(r) for r in poet.get_prompt(up.job, prompt_index=2)]
out["reloaded_msa_id"] = poet.load_prompt_job(prompt.prompt_id).msa_id
out["reloaded_type"] = type(poet.load_poet_job(score.id)).__name__
out["jobs"] = sorted(j.job_type for j in session.jobs.list())
print(json.dumps(out))
