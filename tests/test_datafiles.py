"""A fresh clone finds its test data inside the repository (issue 12 item 1)."""

from __future__ import annotations

import re

from tests.datafiles import REPO_ROOT, TEST_DATA, shared_dir, shared_path


def test_default_data_folder_is_inside_the_repository(monkeypatch):
    monkeypatch.delenv("PLMSERVE_SHARED_DIR", raising=False)
    assert shared_dir() == TEST_DATA and TEST_DATA.is_relative_to(REPO_ROOT)
    for parts in (("fixtures", "poet", "model.ckpt"), ("fixtures", "esm2", "esm2_tiny.pt"),
                  ("data", "BLAT_ECOLX_ColabFold_2202.a3m"), ("data", "BLAT_ECOLX_Jacquier_2013.csv"),
                  ("data", "decoy_proteome_938293.faa"), ("fixtures", "README.md")):
        assert shared_path(*parts).is_file(), parts


def test_no_code_reaches_for_a_folder_beside_the_clone():
    pattern = re.compile(r"""["']\.\./shared|parent\s*/\s*["']shared["']""")
    offenders = []
    for folder in ("src", "tests", "bench"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for lineno, line in enumerate(path.read_text().splitlines(), start=1):
                if pattern.search(line) and path.name != "test_datafiles.py":
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{lineno}")
    assert offenders == []
