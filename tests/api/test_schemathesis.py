"""Property-based fuzzing of every operation of a live server with schemathesis (fixed seed, bounded
examples): no 5xx, and every answer conforms to the OpenAPI document (status codes, content types,
response schemas)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.serving._live import KEY, LiveServer

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis not installed (dev extra)")
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path):
    server = LiveServer(tmp_path, "--models", "esm2-8m,poet")
    try:
        proc = subprocess.run(
            ["schemathesis", "run", f"{server.base}/openapi.json", "-H", f"Authorization: Token {KEY}",
             "--checks", CHECKS, "--max-examples", "3", "--seed", "1", "--workers", "1",
             "--request-timeout", "120", "--no-shrink", "--max-time", "240", "--wait-for-schema", "60"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Tested: " in out and " passed" in out
