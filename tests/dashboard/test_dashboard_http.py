"""The web dashboard over HTTP (no browser): login and session cookie, CSRF, ownership, the submit
form creating the same jobs as the OpenProtein API, results CSV, heatmap, models and MSA pages.

The PoET engine is :class:`tests.client.support.FakePoetEngine` (scores are a known function of
the prompt and the sequence); the real engine in a real browser is ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from fastapi.testclient import TestClient

from plmserve.api.dashboard import CSRF_COOKIE, SESSION_COOKIE
from plmserve.bio.msa import parse_msa
from plmserve.settings import Settings
from tests.client import support
from tests.client.support import FakePoetEngine, postgres_url  # noqa: F401 (fixture)

MSA = b">query\nMKTAYIAKQR\n>hom1\nMKTAY-AKQR\n>hom2\nMRTAYIAKQK\n>hom3\nMKSAYLAKQR\n"
WT = "MKTAYIAKQR"


def make_app(tmp_path, database_url=None):
    settings = Settings(data_dir=tmp_path, api_keys=["admin-key"], database_url=database_url)
    return support.make_app(settings, {"poet": FakePoetEngine()})


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


def new_client(app) -> TestClient:
    return TestClient(app, base_url="http://testserver")


def csrf_of(client: TestClient) -> str:
    page = client.get("/ui/login")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def log_in(client: TestClient, user: str) -> str:
    token = csrf_of(client)
    r = client.post("/ui/login", data={"username": user, "password": f"{user}-password", "csrf_token": token,
                                       "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return token


@pytest.fixture
def alice(app):
    with new_client(app) as c:
        c.csrf = log_in(c, "alice")
        yield c


def wait_done(client: TestClient, job_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"{job_url}/status")
        assert r.status_code == 200
        if r.headers.get("hx-refresh") == "true":
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_url} did not finish")


def submit(client: TestClient, data: dict, files: dict) -> str:
    r = client.post("/ui/submit", data={"csrf_token": client.csrf, **data}, files=files, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"]


def api_token(client: TestClient, user: str) -> dict:
    r = client.post("/api/v1/login/user-access-token", params={"username": user, "password": f"{user}-password"})
    return {"authorization": f"Bearer {r.json()['access_token']}"}


def test_login_required_and_cookie_flags(app):
    with new_client(app) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2F"
        r = c.get("/ui/jobs/rows", headers={"hx-request": "true"}, follow_redirects=False)
        assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/ui/login")
        page = c.get("/ui/login")
        assert "content-security-policy" in page.headers and page.headers["x-frame-options"] == "DENY"
        csrf_cookie = page.headers["set-cookie"].lower()
        assert f"{CSRF_COOKIE}=" in csrf_cookie and "httponly" in csrf_cookie and "samesite=strict" in csrf_cookie
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        bad = c.post("/ui/login", data={"username": "alice", "password": "wrong-password", "csrf_token": token})
        assert bad.status_code == 401 and "invalid user name or password" in bad.text
        assert SESSION_COOKIE not in c.cookies
        r = c.post("/ui/login", data={"username": "alice", "password": "alice-password", "csrf_token": token,
                                      "next": "//evil.example/x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie and "samesite=lax" in cookie
        assert "secure" not in cookie  # plain http here; https sets Secure
        home = c.get("/")
        assert home.status_code == 200 and 'id="whoami">alice<' in home.text
        # logout revokes the token server-side: replaying the old cookie no longer works
        session = c.cookies[SESSION_COOKIE]
        r = c.post("/ui/logout", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303
        c.cookies.set(SESSION_COOKIE, session)
        assert c.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_is_secure_over_https(app):
    with TestClient(app, base_url="https://testserver") as c:
        token = csrf_of(c)
        r = c.post("/ui/login", data={"username": "bob", "password": "bob-password", "csrf_token": token},
                   follow_redirects=False)
        cookie = r.headers["set-cookie"].lower()
        assert r.status_code == 303 and "secure" in cookie and "httponly" in cookie
        assert c.get("/").status_code == 200
        # logout without the CSRF token is refused and the session stays valid
        assert c.post("/ui/logout", data={}).status_code == 403
        assert c.get("/", follow_redirects=False).status_code == 200


def test_login_and_forms_refuse_cross_site_posts(app, alice):
    with new_client(app) as c:
        c.get("/ui/login")
        r = c.post("/ui/login", data={"username": "alice", "password": "alice-password"})
        assert r.status_code == 403 and "CSRF" in r.text
    r = alice.post("/ui/submit", data={"kind": "single_site", "csrf_token": "x" * 43}, files={"msa_file": ("m", MSA)})
    assert r.status_code == 403
    r = alice.post("/ui/submit", data={"kind": "single_site", "csrf_token": alice.csrf},
                   files={"msa_file": ("m", MSA)}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.text
    assert alice.get("/api/v1/jobs", headers=api_token(alice, "alice")).json() == []  # nothing was created


def test_single_site_from_msa_matches_api(app, alice):
    url = submit(alice, {"kind": "single_site", "num_sequences": "3", "replicates": "2", "seed": "7"},
                 {"msa_file": ("msa.a3m", MSA)})
    job_id = url.rsplit("/", 1)[1]
    page = alice.get(url)
    assert page.status_code == 200 and 'id="job-status"' in page.text
    wait_done(alice, url)
    page = alice.get(url).text
    assert page.count('class="cell"') == 19 * len(WT) and page.count('class="wt"') == len(WT)
    # lineage: MSA -> prompt -> single-site, with a link to the MSA page
    assert re.findall(r"<li>.*?(MSA|prompt|single-site)", page, re.S)[:3] == ["MSA", "prompt", "single-site"]
    api = alice.get("/api/v1/poet/single_site", params={"job_id": job_id}, headers=api_token(alice, "alice")).json()
    assert api["args"]["variant"] == WT and api["args"]["prompt_id"]
    prompt = alice.get(f"/api/v1/jobs/{api['args']['prompt_id']}/args", headers=api_token(alice, "alice")).json()
    assert prompt["max_msa_sequences"] == 3 and prompt["replicates"] == 2 and prompt["seed"] == 7
    r = alice.get(f"{url}/results.csv")
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == len(api["result"]) == 1 + 19 * len(WT)
    assert rows[0]["mutant"] == "WT" and api["result"][0]["sequence"] == "X0X"
    wt_mean = sum(api["result"][0]["score"]) / 2
    for row, ref in zip(rows[1:], api["result"][1:]):
        assert row["mutant"] == ref["sequence"]
        assert [float(row["score_1"]), float(row["score_2"])] == ref["score"]
        assert float(row["delta_vs_wt"]) == pytest.approx(sum(ref["score"]) / 2 - wt_mean)
    # the heatmap cell of a mutant carries that delta
    cell = re.search(r'data-mutant="K2W" data-delta="([^"]+)"', page)
    k2w = next(r for r in rows if r["mutant"] == "K2W")
    assert float(cell.group(1)) == pytest.approx(float(k2w["delta_vs_wt"]), rel=1e-5)


def test_other_users_and_keys_see_nothing(app, alice):
    url = submit(alice, {"kind": "single_site", "num_sequences": "2"}, {"msa_file": ("msa.a3m", MSA)})
    wait_done(alice, url)
    with new_client(app) as bob:
        log_in(bob, "bob")
        assert bob.get(url).status_code == 404
        assert bob.get(f"{url}/results.csv").status_code == 404
        assert bob.get(f"{url}/status").status_code == 404
        assert "data-job-id" not in bob.get("/").text
        # a script with an API key is another owner too, and a wrong key is refused
        assert bob.get(url, headers={"authorization": "Token admin-key"}).status_code == 404
    with new_client(app) as script:
        assert script.get(url, headers={"authorization": "Token nope"}).status_code == 401
        # alice's own bearer token works for scripts (no cookie, no CSRF needed)
        headers = api_token(script, "alice")
        assert script.get(f"{url}/results.csv", headers=headers).status_code == 200
        r = script.post("/ui/submit", headers=headers, data={"kind": "generate", "num_sequences": "2",
                                                             "generate_n": "3", "seed": "3"},
                        files={"msa_file": ("m", MSA)}, follow_redirects=False)
        assert r.status_code == 303


def test_score_and_generate_from_the_form(app, alice):
    variants = b">v1\nMKTAYIAKQA\n>v2\nMKTAWIAKQR\n"
    url = submit(alice, {"kind": "score", "num_sequences": "2", "replicates": "3"},
                 {"msa_file": ("msa.a3m", MSA), "variant_file": ("v.fasta", variants)})
    wait_done(alice, url)
    rows = list(csv.DictReader(io.StringIO(alice.get(f"{url}/results.csv").text)))
    assert [r["name"] for r in rows] == ["v1", "v2"]
    fake = FakePoetEngine.one
    assert float(rows[1]["score_1"]) == fake(2, "MKTAWIAKQR")  # 2 prompt sequences
    assert float(rows[1]["score"]) == pytest.approx(fake(2, "MKTAWIAKQR"))
    # generate, reusing the prompt just made (the select of earlier prompts)
    prompt_id = re.search(r'<option value="([0-9a-f-]{36})"', alice.get("/ui/submit").text).group(1)
    url = submit(alice, {"kind": "generate", "prompt_id": prompt_id, "generate_n": "4", "seed": "11"}, {})
    wait_done(alice, url)
    page = alice.get(url).text
    assert page.count("generated-sequence-") >= 4 and 'id="generated"' in page
    fasta = alice.get(f"{url}/sequences.fasta").text
    assert fasta.count(">generated-sequence-") == 4


def test_submit_errors_are_clear_and_create_nothing(app, alice):
    cases = [
        ({"kind": "single_site"}, {"msa_file": ("m", b"garbage!!\n")}, "invalid character '!'"),
        ({"kind": "score"}, {"msa_file": ("m", MSA)}, "choose a variants file"),
        ({"kind": "score"}, {"msa_file": ("m", MSA), "variant_file": ("v", b">v\nMK1\n")}, "invalid character '1'"),
        ({"kind": "single_site", "replicates": "99"}, {"msa_file": ("m", MSA)}, "prompt replicates: 99 is outside 1..15"),
        ({"kind": "single_site", "sequence": "MKT-X"}, {"msa_file": ("m", MSA)}, "wild-type sequence: invalid character '-'"),
        ({"kind": "single_site"}, {}, "choose an MSA"),
        ({"kind": "nope"}, {}, "job kind"),
    ]
    for data, files, message in cases:
        r = alice.post("/ui/submit", data={"csrf_token": alice.csrf, **data}, files=files)
        assert r.status_code == 400, (data, r.text)
        shown = re.search(r'id="submit-error">([^<]*)<', r.text).group(1).replace("&#39;", "'")
        assert message in shown, (message, shown)
    assert alice.get("/api/v1/jobs", headers=api_token(alice, "alice")).json() == []


def test_models_page_and_msa_page(app, alice):
    page = alice.get("/ui/models").text
    assert 'data-slug="poet" data-loaded="yes"' in page  # the engine put in the manager
    assert 'data-slug="esm2-650m" data-loaded="no"' in page and "CC BY-NC-SA 4.0" in page
    url = submit(alice, {"kind": "single_site", "num_sequences": "2"}, {"msa_file": ("msa.a3m", MSA)})
    wait_done(alice, url)
    msa_link = re.search(r'href="(/ui/msa/[0-9a-f-]{36})"', alice.get(url).text).group(1)
    page = alice.get(msa_link).text
    from plmserve.align.sampling import n_eff

    msa = parse_msa(MSA)
    assert re.search(r'id="msa-depth">(\d+)<', page).group(1) == "4"
    assert float(re.search(r'id="msa-neff">([^<]+)<', page).group(1)) == pytest.approx(n_eff(msa), abs=0.05)
    coverage = [float(x) for x in re.findall(r'data-coverage="([^"]+)"', page)]
    assert coverage == pytest.approx([1, 1, 1, 1, 1, 0.75, 1, 1, 1, 1])  # hom1 has a gap in column 6
    assert msa_link.split("/")[-1] in alice.get("/ui/msa").text


def test_cancel_from_the_page(app, alice):
    app.state.models.put("poet", FakePoetEngine(delay=0.05))
    url = submit(alice, {"kind": "single_site", "num_sequences": "2"}, {"msa_file": ("msa.a3m", MSA)})
    r = alice.post(f"{url}/cancel", data={"csrf_token": alice.csrf}, follow_redirects=False)
    assert r.status_code == 303
    wait_done(alice, url)
    assert 'data-status="CANCELED"' in alice.get(url).text


@pytest.mark.postgres
def test_dashboard_on_postgres(tmp_path, postgres_url):  # noqa: F811
    app = make_app(tmp_path, postgres_url)
    with new_client(app) as c:
        c.csrf = log_in(c, "alice")
        url = submit(c, {"kind": "single_site", "num_sequences": "2"}, {"msa_file": ("msa.a3m", MSA)})
        wait_done(c, url)
        rows = list(csv.DictReader(io.StringIO(c.get(f"{url}/results.csv").text)))
        assert len(rows) == 1 + 19 * len(WT) and rows[0]["mutant"] == "WT"
        assert c.get(url).text.count('class="cell"') == 19 * len(WT)
    with new_client(app) as bob:
        log_in(bob, "bob")
        assert bob.get(url).status_code == 404
    assert not (tmp_path / "plmserve.db").exists()
