"""Fixtures for the RPC and client tests: a real Ledger with a few certified blocks, served on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rpc_helpers import FakeNode, ServerThread, make_world, populate  # noqa: E402

from node.rpc import RpcLimits  # noqa: E402
from storage.ledger import Ledger  # noqa: E402

# Small limits so every edge is cheap to reach in a test.
TEST_LIMITS = RpcLimits(message_bytes_max=8192, connections_max=8, requests_in_flight_max=4,
                        idle_timeout_ms=60_000, send_timeout_ms=5_000, submit_wait_ms_max=20_000,
                        query_window_ms=300_000, query_ids_max=1000)


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
