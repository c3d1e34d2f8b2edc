"""The ESM-2 modules import each other one way only (issue 12 item 9): architecture <- weights <- engine."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.datafiles import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "plmserve" / "models" / "esm2"


def _imported_modules(path) -> set[str]:
    """Sibling modules named by ``from .x import`` / ``from plmserve.models.esm2.x import`` anywhere
    in the file (also inside functions: a lazy import still closes a cycle)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                names.add(module.split(".")[0])
            elif module.startswith("plmserve.models.esm2."):
                names.add(module.split(".")[3])
    return names


def test_no_import_cycle_between_engine_weights_and_architecture():
    assert "engine" not in _imported_modules(PACKAGE / "weights.py")
    assert not _imported_modules(PACKAGE / "architecture.py") & {"engine", "weights"}
    assert {"architecture"} <= _imported_modules(PACKAGE / "engine.py")


def test_weights_import_loads_neither_engine_nor_torch():
    code = ("import sys, plmserve.models.esm2.weights as w; "
            "print(sorted(m for m in ('plmserve.models.esm2.engine', 'torch', 'transformers') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
