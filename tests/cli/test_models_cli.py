"""`plmserve models list|pull|convert` (no network: HF_HUB_OFFLINE=1 from tests/conftest.py)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from plmserve.cli import app
from tests.conftest import shared_path

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("PLMSERVE_MODEL_DIR", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃").split("│")]
        if len(cells) >= 4 and cells[0]:
            rows[cells[0]] = line
    return rows


def test_list_shows_every_model_and_where_weights_are(tmp_path):
    models = tmp_path / "models"
    fixture = shared_path("fixtures", "esm2")
    result = runner.invoke(app, ["models", "convert", str(fixture / "esm2_tiny.pt"), str(models / "esm2-8m")])
    assert result.exit_code == 0, result.output
    shutil.copy(fixture / "esm2_tiny.pt", models / "esm2_t12_35M_UR50D.pt")  # a fair-esm file for esm2-35m
    (models / "poet.ckpt").write_bytes(b"x")

    result = runner.invoke(app, ["models", "list", "--model-dir", str(models)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    from plmserve.models.registry import list_models

    for spec in list_models():
        assert spec.slug in rows, spec.slug
    assert "hf-dir" in rows["esm2-8m"]
    assert "fair-esm" in rows["esm2-35m"]
    assert "poet.ckpt" in rows["poet"]
    for slug in ("esm2-650m", "esm3-open-2024-03"):
        assert "not downloaded" in rows[slug]
    assert "facebook/esm2_t33_650M_UR50D" in rows["esm2-650m"]
    # licences are shown (ESM C 600M is non-commercial, 300M open)
    assert "NON-COMMERCIAL" in rows["esmc-600m"] and "Open" in rows["esmc-300m"]


def test_pull_offline_is_a_one_line_error():
    result = runner.invoke(app, ["models", "pull", "esm2-650m"])
    assert result.exit_code == 2
    assert "offline" in result.output and "PLMSERVE_MODEL_DIR" in result.output
    assert "Traceback" not in result.output


def test_pull_unknown_model():
    result = runner.invoke(app, ["models", "pull", "esm9-1t"])
    assert result.exit_code == 2
    assert "unknown model 'esm9-1t'" in result.output


def test_pull_gated_esm3_mentions_licence_and_token():
    result = runner.invoke(app, ["models", "pull", "esm3-open"])
    assert result.exit_code == 2
    assert "HF_TOKEN" in result.output and "gated" in result.output


def test_convert_errors(tmp_path):
    result = runner.invoke(app, ["models", "convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "missing.pt" in result.output
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"123")
    result = runner.invoke(app, ["models", "convert", str(odd), str(tmp_path / "out")])
    assert result.exit_code == 2 and "--family" in result.output
    result = runner.invoke(app, ["models", "convert", str(odd), str(tmp_path / "out"), "--family", "esm9"])
    assert result.exit_code == 2 and "unknown model family 'esm9'" in result.output
