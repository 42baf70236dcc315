"""Fixtures for the RPC and client tests: a real Ledger with a few certified blocks, served on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.support.rpc_helpers import TEST_LIMITS, FakeNode, ServerThread, connect as connect_to, populate


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


@pytest.fixture
def connect(server, world):
    """connect(identity=None): a raw connection to `server`, authenticated as `identity` (a validator,
    governance key or participant of the test world) unless None; closed after the test."""
    opened = []

    def open_connection(identity: str | None = None):
        connection = connect_to(server.port, world, identity)
        opened.append(connection)
        return connection
    yield open_connection
    for connection in opened:
        connection.close()
