"""Fixtures for the storage tests (helpers live in storage_helpers.py)."""

from __future__ import annotations

import pytest

from storage.ledger import Ledger
from tests.support.storage_helpers import World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def ledger(world: World, tmp_path):
    store = Ledger.open(tmp_path / "ledger", world.genesis)
    yield store
    store.close()
