"""Fixtures shared by tests/storage, tests/rpc and tests/cli: the deterministic test world
(tests/support/storage_helpers.py) and a real Ledger over it in the test's tmp dir.

Helpers are in the tests/support package; `assert` there is rewritten as in test modules, so a
helper's failed check shows its values too.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.support")

from storage.ledger import Ledger  # noqa: E402
from tests.support.storage_helpers import World, make_world  # noqa: E402


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def ledger(world: World, tmp_path):
    store = Ledger.open(tmp_path / "ledger", world.genesis)
    yield store
    store.close()
