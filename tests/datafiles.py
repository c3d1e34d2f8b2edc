"""Where the tests and benchmarks find their reference fixtures and real data.

Everything they use is copied into ``tests/data/`` (``fixtures/`` and ``data/``, each with the README that
gives its provenance), so a fresh clone needs nothing beside it. ``$PLMSERVE_SHARED_DIR`` points the lookup
at another folder of the same layout (e.g. the project's ``../shared``) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = REPO_ROOT / "tests" / "data"


def shared_dir() -> Path:
    """The data folder: ``$PLMSERVE_SHARED_DIR`` when set, else ``tests/data`` in this repository.

    Raises ``RuntimeError`` naming the path when the folder does not exist."""
    env = os.environ.get("PLMSERVE_SHARED_DIR")
    path = Path(env) if env else TEST_DATA
    if not path.is_dir():
        raise RuntimeError(f"test data folder not found at {path} (unset PLMSERVE_SHARED_DIR to use tests/data)")
    return path


def shared_path(*parts: str) -> Path:
    """Path of a file under the data folder, e.g. ``shared_path("fixtures", "esm2", "esm2_tiny.pt")``."""
    return shared_dir().joinpath(*parts)
