"""The layout of tests/ (issue 16): helpers shared between tests live in the tests/support package and
are imported as `tests.support.<module>`; nothing under tests/ edits sys.path; no module imports a
test module (`test_*`) or a conftest, so each test module is collected once, under one name.

The suite runs as `python -m pytest` from the repository root (`make test`), which puts the root on
sys.path: that is all `tests.support` needs. Scripts started as subprocesses run as
`python -m tests.support.<module>` with the root as working directory.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
# `make fuzz` runs the fuzz harness as `python -m tests.fuzz.run`; its targets are shared with
# test_hostile_decoders.py and imported as `tests.fuzz.targets`.
HELPER_DIRS = (SUPPORT, TESTS / "fuzz")


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def name(path: Path) -> str:
    return str(path.relative_to(TESTS.parent))


def imports(tree: ast.AST):
    """(line, module, imported names) of every import in `tree`; a relative import's module starts with dots."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, "." * node.level + (node.module or ""), tuple(alias.name for alias in node.names)


def is_helper(path: Path) -> bool:
    return any(directory in path.parents for directory in HELPER_DIRS)


def test_the_layout_test_sees_the_suite():
    files = python_files()
    assert TESTS / "conftest.py" in files and SUPPORT / "__init__.py" in files
    assert len([p for p in files if p.name.startswith("test_")]) > 50


def test_nothing_under_tests_edits_sys_path():
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                found.append(f"{name(path)}:{node.lineno}: sys.path")
            elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
                found.append(f"{name(path)}:{node.lineno}: site.addsitedir")
        for line, module, names in imports(tree):
            if (module == "sys" and "path" in names) or (module == "site" and "addsitedir" in names):
                found.append(f"{name(path)}:{line}: from {module} import {', '.join(names)}")
    assert not found, "import helpers as tests.support.<module> instead:\n" + "\n".join(found)


def test_no_module_imports_a_test_module_or_a_conftest():
    found = []
    for path in python_files():
        for line, module, names in imports(ast.parse(path.read_text(), str(path))):
            parts = [part for part in module.split(".") if part] + list(names)
            if any(part.startswith("test_") or part == "conftest" for part in parts):
                found.append(f"{name(path)}:{line}: {module} {', '.join(names)}".rstrip())
    assert not found, "move what is shared into tests/support:\n" + "\n".join(found)


def test_helper_modules_live_in_tests_support():
    stray = [name(path) for path in python_files()
             if not (path.name.startswith("test_") or path.name in ("conftest.py", "__init__.py") or is_helper(path))]
    assert not stray, f"shared helpers belong in tests/support/: {stray}"


def test_helpers_are_imported_by_their_package_path():
    """Not `from rpc_helpers import ...` nor `from support.x import ...` (pytest's prepend import mode puts
    tests/ and each test's folder on sys.path, so such an import may work, as a second copy of the module)."""
    bare = {path.stem for path in python_files() if is_helper(path) and path.name != "__init__.py"}
    bare |= {directory.name for directory in HELPER_DIRS}
    found = []
    for path in python_files():
        for line, module, names in imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in bare:
                found.append(f"{name(path)}:{line}: {module}")
    assert not found, "import as tests.support.<module>:\n" + "\n".join(found)


def test_the_testnet_package_is_imported_at_module_level_only_in_tests_testnet():
    """tests/testnet is a package named `testnet` at collection (prepend import mode); the project's
    `testnet` imported at module level by another test module would take that name first."""
    found = []
    for path in python_files():
        if TESTS / "testnet" in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for line, module, _ in imports(node):
                    if module.split(".")[0] == "testnet":
                        found.append(f"{name(path)}:{line}: {module}")
    assert not found, "import testnet inside the test function:\n" + "\n".join(found)
