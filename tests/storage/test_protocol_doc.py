"""docs/PROTOCOL.md's worked example is byte-exact: every value rebuilt from the code appears in it."""

from __future__ import annotations

from pathlib import Path

from tests.support.protocol_example import build, wrapped

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def test_every_example_value_is_in_the_document():
    text = DOC.read_text()
    missing = [name for name, value in build().items() if wrapped(value) not in text]
    assert not missing, f"docs/PROTOCOL.md is out of date for: {missing} (run python -m tests.support.protocol_example)"
