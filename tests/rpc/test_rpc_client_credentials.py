"""node.client with `credentials`: each new connection authenticates before its first call, in the
sync and the trio client, again after a reconnect; a refusal is a clear RpcError, not a node that is
down; `match` signs its query for the node the call reaches, also after failing over."""

from __future__ import annotations

import pytest
import trio

from node.client import AsyncClient, Client, Credentials, RpcError, match
from tests.support.rpc_helpers import NODE_ID, TEST_LIMITS, FakeNode, ServerThread, key_of


def test_sync_client_authenticates_each_new_connection(server, world):
    with Client(f"127.0.0.1:{server.port}", tls=False, credentials=Credentials("hk-1", key_of(world, "hk-1"))) as client:
        assert client.call("header", 1)["header"]["height"] == 1       # a reader method: authenticated
        assert (client.node_id, client.role) == (NODE_ID, "validator")
        client._sock.close()                                           # the node went away, say
        client._sock = None
        assert client.call("header", 2)["header"]["height"] == 2       # new connection, authenticated again


def test_an_anonymous_client_gets_the_reduced_status_and_unauthorized(server):
    with Client(f"127.0.0.1:{server.port}", tls=False) as client:
        assert set(client.call("status")) == {"chain_id", "node_id", "height", "version"}
        with pytest.raises(RpcError) as refused:
            client.call("block", 1)
        assert refused.value.code == "unauthorized" and "auditor" in refused.value.message
        assert client.connected_node_id() == NODE_ID


def test_a_refused_authentication_is_an_rpc_error_that_says_who(server, world):
    stranger = Credentials("mallory", key_of(world, "hk-1"))     # a validator's key under another name
    with Client(f"127.0.0.1:{server.port}", tls=False, credentials=stranger) as client:
        with pytest.raises(RpcError) as refused:
            client.call("status")
    assert refused.value.code == "unauthorized" and "authenticating as 'mallory'" in refused.value.message


def test_match_signs_for_the_node_it_reaches_after_a_failover(world, ledger, commitments, dead_endpoint):
    """The first endpoint is down: the query is signed for the second node, which answers it."""
    second = ServerThread(FakeNode(world, ledger), TEST_LIMITS)
    try:
        bank = Credentials("hk-bank", key_of(world, "hk-bank"))
        with Client(f"{dead_endpoint},127.0.0.1:{second.port}", tls=False, credentials=bank) as client:
            commitment = next(iter(commitments.values()))
            proof = match(client, bank.signing_key, "hk-bank", world.chain_id, commitment)
            assert isinstance(proof, bytes) and proof
            # Another participant's query is refused on this session, with the role named.
            with pytest.raises(RpcError) as refused:
                match(client, key_of(world, "hk-bureau"), "hk-bureau", world.chain_id, commitment)
            assert refused.value.code == "unauthorized"
    finally:
        second.stop()


@pytest.fixture
def dead_endpoint():
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{probe.getsockname()[1]}"


def test_async_client_authenticates_and_reports_a_refusal(server, world):
    async def main():
        auditor = Credentials("hk-1", key_of(world, "hk-1"))
        async with AsyncClient([f"127.0.0.1:{server.port}"], tls=False, credentials=auditor) as client:
            async with trio.open_nursery() as nursery:      # concurrent calls share the one authenticated stream
                for height in (1, 2, 3):
                    nursery.start_soon(client.call, "header", height)
            assert (client.node_id, client.role) == (NODE_ID, "validator")
        wrong = Credentials("hk-1", key_of(world, "hk-bank"))
        async with AsyncClient([f"127.0.0.1:{server.port}"], tls=False, credentials=wrong) as client:
            with pytest.raises(RpcError) as refused:
                await client.call("status")
            assert refused.value.code == "unauthorized"
    trio.run(main)
