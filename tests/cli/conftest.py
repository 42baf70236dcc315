"""Fixtures for the CLI tests: key files, a genesis file and a node.rpc server over a real Ledger."""

from __future__ import annotations

import time

import pytest

from tests.support.rpc_helpers import FakeNode, ServerThread, populate

from node.keys import KeyPair, write_key_file


@pytest.fixture
def node(world, ledger):
    populate(world, ledger)
    # Blocks at the wall clock's time from here on, and one now: a proof's status section is then
    # fresh by the CLI's default --max-status-age.
    fake = FakeNode(world, ledger, clock_ms=lambda: int(time.time() * 1000))
    fake.commit_now([])
    return fake


@pytest.fixture(autouse=True)
def plaintext_rpc(monkeypatch):
    """The in-process servers here are plaintext (node.rpc without an ssl_context): the CLI is told so
    through the environment; a --ca option still wins (the real-process tests). TLS through the CLI
    is tested against real TLS servers in tests/node/test_rpc_tls.py."""
    monkeypatch.delenv("BAYLEDGER_CA", raising=False)
    monkeypatch.setenv("BAYLEDGER_PLAINTEXT", "1")


@pytest.fixture
def server(node):
    running = ServerThread(node)
    yield running
    running.stop()


@pytest.fixture
def files(world, tmp_path, monkeypatch):
    """Key files for every participant and regulator, the genesis file; no BAYLEDGER_* from outside."""
    for name in ("BAYLEDGER_RPC", "BAYLEDGER_KEY", "BAYLEDGER_GENESIS"):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "keys"
    keys.mkdir()
    paths = {}
    for key_id, key in {**world.participant_keys, **world.governance_keys}.items():
        paths[key_id] = keys / f"{key_id}.json"
        write_key_file(paths[key_id], KeyPair(signing_key=key, id=key_id))
    newcomer = KeyPair.generate("hk-newbank")
    paths["hk-newbank"] = keys / "hk-newbank.json"
    write_key_file(paths["hk-newbank"], newcomer)
    genesis = tmp_path / "genesis.json"
    genesis.write_text(world.genesis.to_json())
    paths["genesis"] = genesis
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def network(tmp_path):
    """A real 4-validator cluster of daemon processes (tests/support/node_cluster.py), torn down after."""
    from tests.support.node_cluster import Cluster

    (tmp_path / "net").mkdir()
    cluster = Cluster(tmp_path / "net")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.teardown()
