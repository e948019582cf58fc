"""Where the real evaluation data lives, and a way to write throwaway importable modules."""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

_REPOSITORY = Path(__file__).resolve().parents[2]
_COUNTER = itertools.count()


def data_root() -> Path:
    """``$SLIMGRAPH_DATA``, or ``../shared/data`` beside the repository."""
    configured = os.environ.get("SLIMGRAPH_DATA")
    return Path(configured) if configured else (_REPOSITORY / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "MANIFEST.md").is_file():
        pytest.skip(f"the real data is not at {root}; set SLIMGRAPH_DATA to its folder")
    return root


@pytest.fixture
def data_env(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real data folder, also exported as ``$SLIMGRAPH_DATA`` for specs that name it."""
    monkeypatch.setenv("SLIMGRAPH_DATA", str(shared_data))
    return shared_data


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write ``source`` as a fresh importable module; returns the module's name."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def make(source: str) -> str:
        name = f"slimgraph_test_module_{next(_COUNTER)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return make
