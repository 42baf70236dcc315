"""docs/PROTOCOL.md §8's hex examples are exactly what the server answers today, and every method is documented."""

from __future__ import annotations

from pathlib import Path

from node.rpc import RpcLimits, RpcServer
from rpc_doc_examples import render
from rpc_helpers import FakeNode

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def test_examples_in_the_doc_are_current():
    assert render() in DOC.read_text(), "regenerate: python tests/rpc/rpc_doc_examples.py (see docs/PROTOCOL.md §8)"


def test_every_method_has_a_section_and_an_example(world, ledger):
    text = DOC.read_text()
    for method in RpcServer(FakeNode(world, ledger), RpcLimits()).methods.table:
        assert f"### `{method}(" in text and f"#### `{method}` → result" in text, method
