"""docs/PROTOCOL.md §8's hex examples are exactly what the server answers today, and every method is documented."""

from __future__ import annotations

from pathlib import Path

from node.rpc import RpcLimits, RpcServer
from tests.support.rpc_doc_examples import render, render_authentication
from tests.support.rpc_helpers import FakeNode

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def test_examples_in_the_doc_are_current():
    assert render() in DOC.read_text(), "regenerate: python -m tests.support.rpc_doc_examples (see docs/PROTOCOL.md §8)"


def test_the_authentication_example_in_the_doc_is_current():
    text = DOC.read_text()
    example = render_authentication()
    assert example in text, "regenerate: python -m tests.support.rpc_doc_examples (see docs/PROTOCOL.md §8)"
    assert text.index("### Authentication") < text.index(example) < text.index("### Methods")


def test_the_roles_table_in_the_doc_is_the_servers(world, ledger):
    """Every row of the Authentication roles table is METHOD_ROLES (or public) for that method."""
    from node.rpc_access import METHOD_ROLES, PUBLIC_METHODS, ROLES

    text = DOC.read_text()
    section = text[text.index("### Authentication"):text.index("### Methods")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 1 + len(ROLES):
            rows[cells[0].strip("`").split("(")[0]] = {role for role, cell in zip(ROLES, cells[1:])
                                                       if cell.startswith("yes")}
    served = RpcServer(FakeNode(world, ledger), RpcLimits()).methods.table
    assert set(rows) == set(served)
    for method, roles in rows.items():
        expected = set(ROLES) if method in PUBLIC_METHODS else set(METHOD_ROLES[method])
        assert roles == expected, method


def test_every_method_has_a_section_and_an_example(world, ledger):
    text = DOC.read_text()
    for method in RpcServer(FakeNode(world, ledger), RpcLimits()).methods.table:
        assert f"### `{method}(" in text and f"#### `{method}` → result" in text, method
