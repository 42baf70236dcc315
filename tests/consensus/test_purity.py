"""consensus/ stays a pure state machine: no I/O, no clock, no threads, no unseeded randomness, no upper layers.

Parses every consensus/**/*.py with ast (so a lazy import inside a function is
caught too) and fails on any import of a forbidden module. The simulator
(consensus/sim/) may use a seeded random.Random; nothing else may import random.
"""

import ast
from pathlib import Path

import pytest

CONSENSUS = Path(__file__).resolve().parents[2] / "consensus"
FORBIDDEN = {
    "trio", "plyvel", "socket", "asyncio", "threading", "multiprocessing", "subprocess", "time", "datetime",
    "random", "secrets", "os", "selectors", "signal", "node", "storage", "testnet",
}
# The seeded simulator draws every fault from random.Random(seed); only it may import random.
ALLOWED_IN_SIM = {"random"}


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")
    return roots


def sources():
    return sorted(CONSENSUS.rglob("*.py"))


def test_there_is_something_to_check():
    names = {p.name for p in sources()}
    assert {"replica.py", "messages.py", "codec.py", "validators.py", "block.py"} <= names


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(CONSENSUS)))
def test_module_imports_nothing_impure(path):
    roots = imported_roots(ast.parse(path.read_text(), filename=str(path)))
    forbidden = FORBIDDEN | {"__import__"}
    if "sim" in path.relative_to(CONSENSUS).parts:
        forbidden = forbidden - ALLOWED_IN_SIM
    assert not roots & forbidden, f"{path} imports {sorted(roots & forbidden)}"


def test_the_checker_catches_a_forbidden_import():
    """The check itself can fail: a lazy `import time` inside a function is found."""
    tree = ast.parse("def f():\n    import time\n    from os import path\n    return time\n")
    assert imported_roots(tree) >= {"time", "os"}


REPOSITORY = CONSENSUS.parent
# The one module that acknowledges a persist, and the replica's own guard in the simulator.
ACKNOWLEDGERS = {"consensus/host.py", "consensus/sim/adapter.py"}


def on_persisted_calls(tree: ast.AST) -> int:
    return sum(
        1 for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "on_persisted"
    )


def test_only_the_host_carries_out_readies():
    """Every host (daemon, simulator, testnet validator) goes through consensus/host.py: no other
    production code calls on_persisted, which only the one that performed the write may call."""
    callers = set()
    for folder in ("consensus", "node", "storage", "testnet"):
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            name = str(path.relative_to(REPOSITORY))
            if on_persisted_calls(ast.parse(path.read_text(), filename=name)):
                callers.add(name)
    assert callers == ACKNOWLEDGERS


def test_the_host_check_finds_a_call():
    assert on_persisted_calls(ast.parse("def carry(replica):\n    return replica.on_persisted()\n")) == 1
