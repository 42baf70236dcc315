"""Fixtures for the RPC and client tests: a real Ledger with a few certified blocks, served on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rpc_helpers import TEST_LIMITS, FakeNode, ServerThread, make_world, populate  # noqa: E402

from storage.ledger import Ledger  # noqa: E402

@pytest.fixture
def world():
    return make_world()


@pytest.fixture
def ledger(world, tmp_path):
    store = Ledger.open(tmp_path / "ledger", world.genesis)
    yield store
    store.close()


@pytest.fixture
def commitments(world, ledger):
    return populate(world, ledger)


@pytest.fixture
def node(world, ledger, commitments):
    return FakeNode(world, ledger)


@pytest.fixture
def server(node):
    running = ServerThread(node, TEST_LIMITS)
    yield running
    running.stop()
