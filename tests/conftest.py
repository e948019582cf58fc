"""Fixtures shared by every test: the real data folder.

Tests read the shared data (``../shared/data`` beside the repository, or wherever
``SLIMGRAPH_DATA`` points). It is always there in CI, so a missing folder is a failure, not
a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data_dir() -> Path:
    return Path(os.environ.get("SLIMGRAPH_DATA", DEFAULT_DATA_DIR)).resolve()


@pytest.fixture(scope="session", autouse=True)
def _data_variable() -> None:
    """Specs in tests write ``${SLIMGRAPH_DATA}``: make sure it is set for the whole run."""
    os.environ.setdefault("SLIMGRAPH_DATA", str(_data_dir()))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    folder = _data_dir()
    if not (folder / "MANIFEST.md").is_file():
        pytest.fail(f"data folder {folder} not found: set SLIMGRAPH_DATA to the shared data")
    return folder
