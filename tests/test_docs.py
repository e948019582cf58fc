"""The generated spec reference matches the declarations it is generated from."""

from __future__ import annotations

from pathlib import Path

from slimgraph.docs import spec_reference

REPO = Path(__file__).resolve().parent.parent


def test_spec_reference_is_current() -> None:
    written = (REPO / "docs" / "spec.md").read_text()
    assert written == spec_reference(), "regenerate: python -m slimgraph.docs > docs/spec.md"


def test_every_option_has_a_meaning() -> None:
    rows = [line for line in spec_reference().splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows)
