"""The dashboard in a real browser: Debian's Chromium driven by Playwright (no browser download)
against a real uvicorn server with the PoET fixture checkpoint.

alice logs in, uploads the BLAT_ECOLX MSA and submits a single-site scan of the wild type (its
first row, 286 residues), watches the job finish on the jobs list (htmx polling, no reload) and
on the job page, sees the heatmap (19 x 286 substitution cells + 286 wild-type cells, checked in
the DOM, screenshot saved), downloads the CSV and compares it with the API's results; bob does not
see the job (404 on its URL, absent from his list).

``PLMSERVE_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the screenshot there (the README's
picture). CI installs ``chromium`` and the ``playwright`` Python package (``.ci/run``); without
them the test is skipped with the reason.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import httpx
import pytest

from plmserve.bio.msa import read_msa
from plmserve.settings import Settings
from tests.client.support import LiveServer, make_app
from tests.conftest import shared_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CHROMIUM = os.environ.get("PLMSERVE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PW = {"alice": "alice-password", "bob": "bob-password"}
JOB_TIMEOUT_MS = 900_000


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("dashboard")
    model_dir = data_dir / "models"
    model_dir.mkdir()
    (model_dir / "poet.ckpt").symlink_to(shared_path("fixtures", "poet", "model.ckpt"))
    settings = Settings(data_dir=data_dir, api_keys=["admin-key"], model_dir=model_dir, device="cpu",
                        dtype="float32", workers=1)
    with LiveServer(make_app(settings, users=PW)) as srv:
        yield srv


def log_in(page, base: str, user: str) -> None:
    page.goto(f"{base}/")
    assert "/ui/login" in page.url  # sent to the login form first
    page.fill("#username", user)
    page.fill("#password", PW[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert page.inner_text("#whoami") == user


def test_single_site_in_the_browser(browser, server, tmp_path):
    base = server.url
    msa_path = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")
    wild_type = read_msa(msa_path).query
    assert len(wild_type) == 286

    alice = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    problems: list[str] = []  # console errors and uncaught exceptions (CSP violations among them)

    def watch(p):
        p.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        p.on("pageerror", lambda e: problems.append(str(e)))
        return p

    page = watch(alice.new_page())
    log_in(page, base, "alice")
    cookie = next(c for c in alice.cookies() if c["name"] == "plmserve_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # submit: the MSA upload, a small prompt (3 sequences, 1 replicate) for speed
    page.click("text=Submit")
    page.select_option("#kind", "single_site")
    page.set_input_files("#msa_file", str(msa_path))
    page.fill("#num_sequences", "3")
    page.fill("#replicates", "1")
    page.fill("#seed", "42")
    page.click("#submit")
    page.wait_for_url(f"{base}/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    first_status = page.get_attribute("#job-status", "data-status")
    assert first_status in ("PENDING", "RUNNING")

    # the jobs list in a second tab updates itself (htmx polling) until the job is done
    jobs_tab = watch(alice.new_page())
    jobs_tab.goto(f"{base}/")
    row = f"tr[data-job-id='{job_id}']"
    assert jobs_tab.get_attribute(row, "data-status") in ("PENDING", "RUNNING")
    jobs_tab.wait_for_selector(f"{row}[data-status='SUCCESS']", timeout=JOB_TIMEOUT_MS)
    assert jobs_tab.get_attribute(f"{row} progress", "value") == "100"
    assert jobs_tab.inner_text(f"{row} td:nth-child(2)") == "single-site"

    # the job page polls its status and reloads itself with the results when the job is done
    page.wait_for_selector("#job-status[data-status='SUCCESS']", timeout=60_000)
    page.wait_for_selector("svg#heatmap")
    assert page.locator("svg#heatmap rect.cell").count() == 19 * 286
    assert page.locator("svg#heatmap rect.wt").count() == 286
    assert page.get_attribute("svg#heatmap rect.wt >> nth=0", "data-mutant") == f"{wild_type[0]}1{wild_type[0]}"
    fills = set(page.eval_on_selector_all("svg#heatmap rect.cell", "els => els.map(e => e.getAttribute('fill'))"))
    assert len(fills) > 50  # a real colour scale, not one colour
    box = page.locator("svg#heatmap").bounding_box()
    assert box["width"] > 286 * 8 and box["height"] > 20 * 12  # rendered at its size
    lineage = page.inner_text("#lineage")
    assert "MSA" in lineage and "prompt" in lineage and "single-site" in lineage

    shot = tmp_path / "dashboard.png"
    page.evaluate("window.scrollTo(0, 0)")  # the job's status, then the heatmap and the results
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("PLMSERVE_DASHBOARD_SCREENSHOT"):
        target = Path(os.environ["PLMSERVE_DASHBOARD_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    # the CSV download equals the API's results
    with page.expect_download() as info:
        page.click("#csv-link")
    download = info.value
    assert download.suggested_filename == f"single_site_{job_id}.csv"
    with open(download.path(), newline="") as fh:
        rows = list(csv.DictReader(fh))
    token = httpx.post(f"{base}/api/v1/login/user-access-token",
                       params={"username": "alice", "password": PW["alice"]}).json()["access_token"]
    api = httpx.get(f"{base}/api/v1/poet/single_site", params={"job_id": job_id, "page_size": 100000},
                    headers={"authorization": f"Bearer {token}"}).json()
    assert api["status"] == "SUCCESS" and api["args"]["variant"] == wild_type
    assert len(rows) == len(api["result"]) == 1 + 19 * 286
    assert rows[0]["mutant"] == "WT" and api["result"][0]["sequence"] == "X0X"
    assert [r["mutant"] for r in rows[1:]] == [r["sequence"] for r in api["result"][1:]]
    assert [float(r["score_1"]) for r in rows] == [r["score"][0] for r in api["result"]]
    wt_score = api["result"][0]["score"][0]
    deltas = [float(r["delta_vs_wt"]) for r in rows[1:]]
    assert deltas == pytest.approx([r["score"][0] - wt_score for r in api["result"][1:]], abs=1e-9)
    # the heatmap shows those numbers
    k = 1000
    shown = float(page.get_attribute(f"svg#heatmap rect[data-mutant='{rows[k]['mutant']}']", "data-delta"))
    assert shown == pytest.approx(float(rows[k]["delta_vs_wt"]), rel=1e-5, abs=1e-6)

    assert problems == []

    # bob sees none of it
    bob = browser.new_context()
    bob_page = bob.new_page()
    log_in(bob_page, base, "bob")
    assert bob_page.locator(f"tr[data-job-id='{job_id}']").count() == 0
    assert bob_page.locator("tr[data-job-id]").count() == 0
    response = bob_page.goto(f"{base}/ui/jobs/{job_id}")
    assert response.status == 404 and "Not found" in bob_page.inner_text("h1")
    assert bob_page.locator("svg#heatmap").count() == 0
    assert bob_page.request.get(f"{base}/ui/jobs/{job_id}/results.csv").status == 404
    bob.close()
    alice.close()
