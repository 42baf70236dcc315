"""docs/CONSENSUS.md, "Where each message is decided": every handler, module and test it names exists,
so the table cannot drift from the code."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Where each message is decided"


def table() -> str:
    text = (ROOT / "docs" / "CONSENSUS.md").read_text()
    start = text.index(SECTION)
    return text[start:text.index("\n## ", start + len(SECTION))]


def test_every_handler_and_rule_named_is_a_function_of_the_replica():
    # The replica (consensus/replica.py) and its handler modules (consensus/handlers/).
    source = "".join(p.read_text() for p in [ROOT / "consensus" / "replica.py", *(ROOT / "consensus" / "handlers").glob("*.py")])
    names = set(re.findall(r"`(_[a-z_]+|on_[a-z_]+)`", table()))
    assert len(names) >= 20
    assert not {name for name in names if f"def {name}(" not in source}


def test_every_module_named_exists():
    modules = set(re.findall(r"\b([a-z_]+\.py)\b", table())) - {"test_host.py"}
    test_files = {m for m in modules if m.startswith("test_")}
    places = (ROOT / "consensus", ROOT / "consensus" / "handlers")
    assert not {m for m in modules - test_files if not any((place / m).exists() for place in places)}


def test_each_handler_is_in_the_module_its_row_names():
    """A row's "handler" cell names the module: one hop from the message to the code that decides it."""
    placed = re.findall(r"`([a-z_]+)` \(((?:handlers/)?[a-z_]+\.py)\)", table())
    assert len(placed) >= 14
    wrong = [(name, path) for name, path in placed
             if f"def {name}(" not in (ROOT / "consensus" / path).read_text()]
    assert not wrong


def test_every_test_named_exists():
    named = re.findall(r"`(test_[a-z_]+\.py)::(test_[a-z_0-9]+)`", table())
    assert len(named) >= 15
    missing = [(path, test) for path, test in named
               if f"def {test}(" not in (ROOT / "tests" / "consensus" / path).read_text()]
    assert not missing
