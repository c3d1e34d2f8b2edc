"""``plmserve esm3 generate`` through typer's CliRunner, with the tiny fixture weights found through
the registry's model directory (``--model-dir <dir>/esm3-open-2024-03/{model.pth,config.json}``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from plmserve.cli import app
from plmserve.models.esm3 import constants as C
from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens, generate_tensor
from tests.conftest import shared_path
from tests.models.esm3.test_generate_fixtures import load_fixture_model

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    target = root / "esm3-open-2024-03"
    target.mkdir()
    for name in ("model.pth", "config.json"):
        shutil.copy(shared_path("fixtures", "esm3", name), target / name)
    return root


def _run(*args):
    return runner.invoke(app, ["esm3", "generate", *args])


def test_generate_from_length_to_fasta(model_dir, tmp_path):
    out = tmp_path / "out.fasta"
    res = _run("--track", "sequence", "--length", "40", "--num-steps", "8", "--temperature", "1.0",
               "--seed", "7", "-o", str(out), "--model-dir", str(model_dir))
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith(">esm3-sample-1 track=sequence seed=7 steps=8")
    seq = lines[1]
    assert len(seq) == 40 and set(seq) <= set("LAGVSERTIDPKQNFYMHWC")
    # the same tokens as the library call with the same seed (canonical ids only)
    expected = generate_tensor(
        load_fixture_model(),
        ProteinTokens(sequence=torch.tensor([0] + [32] * 40 + [2])),
        GenerationConfig(track="sequence", num_steps=8, temperature=1.0, invalid_ids=list(range(24, 31))),
        seed=7,
    )
    assert seq == "".join(C.SEQUENCE_VOCAB[t] for t in expected.tokens.sequence[1:-1].tolist())
    again = _run("--length", "40", "--num-steps", "8", "--temperature", "1.0", "--seed", "7",
                 "--model-dir", str(model_dir))
    assert again.exit_code == 0 and again.stdout.splitlines()[1] == seq


def test_generate_from_partially_masked_sequence(model_dir):
    prompt = "MKT___LLIAG____QR"
    res = _run("--sequence", prompt, "--num-steps", "20", "--seed", "1", "-n", "3", "--model-dir", str(model_dir),
               "--model", "esm3-sm-open-v1")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 6
    assert "steps=7" in lines[0]  # 7 masked residues: num_steps lowered to 7
    for seq in lines[1::2]:
        assert len(seq) == len(prompt) and "_" not in seq
        assert all(a == b for a, b in zip(prompt, seq) if a != "_")


def test_generate_other_tracks(model_dir, tmp_path):
    res = _run("--sequence", "MSIQHFRVALIPFF", "--track", "secondary_structure", "--num-steps", "4",
               "--model-dir", str(model_dir))
    assert res.exit_code == 0, res.output
    ss = res.stdout.splitlines()[1]
    assert len(ss) == 14 and set(ss) <= set("GHITEBSC")
    out = tmp_path / "structure.json"
    res = _run("--length", "12", "--track", "structure", "--num-steps", "4", "--seed", "3", "-o", str(out),
               "--model-dir", str(model_dir))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert len(data) == 1 and data[0]["seed"] == 3 and data[0]["track"] == "structure"
    structure = data[0]["outputs"]["structure"]
    assert structure[0] == 4098 and structure[-1] == 4097 and all(0 <= t < 4096 for t in structure[1:-1])
    assert data[0]["outputs"]["sequence"] == [0] + [32] * 12 + [2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--length", "10", "--sequence", "MK"], "exactly one of --length"),
        ([], "exactly one of --length"),
        (["--sequence", "MKT1"], "invalid character '1' at position 4"),
        (["--length", "10", "--num-steps", "0"], "num_steps must be in [1, 100]"),
        (["--length", "10", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["--length", "10", "--track", "sasa"], "use -o FILE.json"),
        (["--length", "10", "--model", "esm3-huge"], "unknown model 'esm3-huge'"),
        (["--length", "10", "--load-format", "fast"], "--load-format must be"),
        (["--sequence", "MKTAYQR"], "Cannot sample sequence when input has no masks."),
    ],
)
def test_errors_are_one_line_exit_2(model_dir, args, message):
    res = _run(*args, "--model-dir", str(model_dir))
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_missing_weights_message(tmp_path):
    res = _run("--length", "10", "--model-dir", str(tmp_path))
    assert res.exit_code == 2
    assert "weights of model 'esm3-open-2024-03' not found" in res.output
