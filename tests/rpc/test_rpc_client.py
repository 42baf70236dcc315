"""node.client against a node.rpc server on 127.0.0.1: connection reuse, pipelining, failover to the
next endpoint when one is down, typed errors, timeouts, and the document/query/proof helpers. The
servers here are plaintext, so every client is made with tls=False.

A call other than status needs an authenticated connection: `sign_in` does the challenge and
authenticate exchange over the client's (one, reused) connection."""

from __future__ import annotations

import hashlib
import socket

import pytest
import trio

from node import client as client_module
from node.client import (
    AsyncClient, CallTimeout, Client, ConnectionFailed, RpcError, build_commit, parse_endpoints, seal_document,
    verify_match_proof,
)
from node.rpc_access import sign_authentication
from tests.support.rpc_helpers import VALIDATOR, key_of, query
from storage.entries import COMMITMENT_DOMAIN


def sign_in(client: Client, world, identity: str = VALIDATOR) -> dict:
    """Authenticate the client's connection as `identity` (lost if the client reconnects)."""
    return client.call("authenticate", *sign_authentication(key_of(world, identity), identity, client.call("challenge")))


async def async_sign_in(client: AsyncClient, world, identity: str = VALIDATOR) -> dict:
    answer = await client.call("challenge")
    return await client.call("authenticate", *sign_authentication(key_of(world, identity), identity, answer))


@pytest.fixture
def dead_endpoint():
    """A port bound but not listening: connecting is refused (a node that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{probe.getsockname()[1]}"


def test_parse_endpoints():
    assert [str(e) for e in parse_endpoints("127.0.0.1:1, localhost:65535")] == ["127.0.0.1:1", "localhost:65535"]
    for bad in ("", "host", "host:", ":80", "host:0", "host:65536", "host:x"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_sync_client_reuses_one_connection_and_pipelines(server, world):
    with Client(f"127.0.0.1:{server.port}", tls=False) as client:
        assert client.call("status")["height"] == 4
        first_socket = client._sock
        assert sign_in(client, world) == {"identity": VALIDATOR, "role": "validator"}
        assert client.call("header", 1)["header"]["height"] == 1
        assert client._sock is first_socket                      # reused, not reconnected
        results = client.call_many([("header", [h]) for h in (1, 2, 3, 4)] + [("header", [9])], raise_errors=False)
        assert [r["header"]["height"] for r in results[:4]] == [1, 2, 3, 4]
        assert isinstance(results[4], RpcError) and results[4].code == "not-found"
        with pytest.raises(RpcError) as error:
            client.call("no-such-method")
        assert error.value.code == "method-not-found" and error.value.endpoint == str(client.endpoint)


def test_sync_client_fails_over_to_the_next_node(server, dead_endpoint):
    with Client(f"{dead_endpoint},127.0.0.1:{server.port}", tls=False) as client:
        assert client.call("status")["chain_id"] == "bayledger-test"
        assert str(client.endpoint) == f"127.0.0.1:{server.port}"


def test_sync_client_reports_every_node_down(dead_endpoint):
    with pytest.raises(ConnectionFailed) as error:
        Client(f"{dead_endpoint},{dead_endpoint}", tls=False).call("status")
    assert dead_endpoint in str(error.value)


def test_sync_client_reconnects_after_the_server_drops_it(server):
    with Client(f"127.0.0.1:{server.port}", tls=False) as client:
        client.call("status")
        client._sock.send(b"\xc1")   # the server answers parse-error and closes this connection
        # The next call sees the closed connection and retries on a fresh one (one endpoint: itself).
        assert client.call("status")["height"] == 4


async def test_async_client_concurrent_calls_share_a_connection(server, world):
    async with AsyncClient([f"127.0.0.1:{server.port}"], tls=False) as client:
        await async_sign_in(client, world)
        results = {}

        async def fetch(height: int) -> None:
            results[height] = await client.call("header", height)

        async with trio.open_nursery() as nursery:
            for height in range(1, 5):
                nursery.start_soon(fetch, height)
        assert {h: r["header"]["height"] for h, r in results.items()} == {1: 1, 2: 2, 3: 3, 4: 4}
        with pytest.raises(RpcError) as error:
            await client.call("participant", "nobody")
        assert error.value.code == "not-found"


async def test_async_client_fails_over(server, dead_endpoint):
    async with AsyncClient([dead_endpoint, f"127.0.0.1:{server.port}"], tls=False) as client:
        assert (await client.call("status"))["height"] == 4


async def test_async_client_all_down(dead_endpoint):
    async with AsyncClient([dead_endpoint], tls=False) as client:
        with pytest.raises(ConnectionFailed):
            await client.call("status")


async def test_async_client_times_out_a_call_the_node_holds(server, node, world):
    node.hold = True
    entry = build_commit(world.participant_keys["hk-bank"], "hk-bank", world.chain_id, bytes(32),
                         jurisdiction="HK", nonce=5000)
    async with AsyncClient([f"127.0.0.1:{server.port}"], timeout_s=5, tls=False) as client:
        assert (await async_sign_in(client, world, "hk-bank"))["role"] == "participant"   # submits its own entry
        client.timeout_s = 0.2
        with pytest.raises(CallTimeout):
            await client.call("submit", entry, {"wait": True, "timeout_ms": 10_000})
        assert (await client.call("status"))["height"] == 4    # the connection still serves
    server.release()


def test_seal_document_matches_the_documented_formula():
    document = b"credit report"
    salt = bytes(range(32))
    commitment, returned_salt = seal_document(document, salt)
    assert returned_salt == salt
    assert commitment == hashlib.sha256(COMMITMENT_DOMAIN + salt + hashlib.sha256(document).digest()).digest()
    fresh, fresh_salt = seal_document(document)
    assert len(fresh_salt) == 32 and fresh_salt != salt and fresh != commitment


def test_match_query_and_offline_verification(server, world, commitments):
    """A participant asks with its own queries (build_match_query, naming the node) and verifies offline."""
    with Client(f"127.0.0.1:{server.port}", tls=False) as client:
        node_id = client.call("status")["node_id"]
        assert sign_in(client, world, "hk-bank")["role"] == "participant"
        proof = client.call("match", query(world, "hk-bank", commitments["active"], node=node_id))
        assert verify_match_proof(proof, world.genesis, commitments["active"]).status == "match"
        assert verify_match_proof(proof, world.genesis, commitments["revoked"]).status == "invalid"
        with pytest.raises(RpcError) as error:
            client.call("match", query(world, "hk-bank", commitments["unknown"], node=node_id))
        assert error.value.code == "not-found"
    with Client(f"127.0.0.1:{server.port}", tls=False) as client:
        sign_in(client, world)       # a validator may send anyone's query: the registry refuses the suspended
        with pytest.raises(RpcError) as error:
            client.call("match", query(world, "cn-bureau", commitments["active"]))
        assert error.value.code == "unauthorized" and "suspended" in error.value.message


def test_fresh_nonces_increase():
    nonces = [client_module.fresh_nonce() for _ in range(100)]
    assert nonces == sorted(nonces)


async def test_serve_rpc_reports_its_port_and_counts(node):
    """serve_rpc as the daemon starts it: the bound port through task_status; counters per method/code."""
    from node.rpc import RpcServer, serve_rpc

    server = RpcServer(node)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_rpc(node, "127.0.0.1", 0, server=server,
                                                                 task_status=task_status))
        async with AsyncClient([f"127.0.0.1:{port}"], tls=False) as client:
            assert (await client.call("status"))["height"] == 4
            with pytest.raises(RpcError):
                await client.call("header", 1)            # anonymous
            await async_sign_in(client, node.world)
            with pytest.raises(RpcError):
                await client.call("header", 99)
        nursery.cancel_scope.cancel()
    assert server.counters["status"] == 1 and server.counters["not-found"] == 1
    assert server.counters["unauthorized"] == 1 and server.counters["authenticate"] == 1


async def test_async_client_moves_to_the_next_node_when_its_node_stops(node):
    """Two servers over one ledger; the first stops mid-session: the next call is answered by the second."""
    from tests.support.rpc_helpers import ServerThread

    first, second = ServerThread(node), ServerThread(node)
    try:
        async with AsyncClient([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], tls=False) as client:
            assert (await client.call("status"))["height"] == 4
            assert client.endpoint.port == first.port
            await trio.to_thread.run_sync(first.stop)
            assert (await client.call("status"))["height"] == 4
            assert client.endpoint.port == second.port
    finally:
        second.stop()


def test_sync_client_moves_to_the_next_node_when_its_node_stops(node):
    from tests.support.rpc_helpers import ServerThread

    first, second = ServerThread(node), ServerThread(node)
    try:
        with Client([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], tls=False) as client:
            assert client.call("status")["height"] == 4
            first.stop()
            assert client.call("status")["height"] == 4
            assert client.endpoint.port == second.port
    finally:
        second.stop()


@pytest.fixture
def draining_endpoint():
    """A real TCP msgpack-RPC peer that answers every call `shutting-down`, as a node in its drain does."""
    import threading

    import msgpack

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                unpacker = msgpack.Unpacker(raw=False)
                try:
                    data = conn.recv(65536)
                except OSError:
                    continue
                unpacker.feed(data)
                answers = [msgpack.packb([1, request[1], {"code": "shutting-down", "message": "draining"}, None])
                           for request in unpacker]
                conn.sendall(b"".join(answers))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_sync_client_leaves_a_draining_node_for_the_next(server, draining_endpoint):
    with Client(f"{draining_endpoint},127.0.0.1:{server.port}", tls=False) as client:
        assert client.call("status")["chain_id"] == "bayledger-test"
        assert str(client.endpoint) == f"127.0.0.1:{server.port}"
    with pytest.raises(RpcError) as error:          # alone, the draining node's answer is the answer
        Client(draining_endpoint, tls=False).call("status")
    assert error.value.code == "shutting-down"


async def test_async_client_leaves_a_draining_node_for_the_next(server, draining_endpoint):
    async with AsyncClient(f"{draining_endpoint},127.0.0.1:{server.port}", tls=False) as client:
        assert (await client.call("status"))["chain_id"] == "bayledger-test"
        assert str(client.endpoint) == f"127.0.0.1:{server.port}"


def test_credentials_authenticate_each_new_connection_and_the_match_helper_names_the_node(server, world, commitments):
    """Client(credentials=...) authenticates before its first call and again after a reconnect; the match
    helper signs its query for the node the call reaches; wrong credentials are an RpcError naming the id."""
    from node.client import Credentials, match

    validator = Credentials(VALIDATOR, key_of(world, VALIDATOR))
    with Client(f"127.0.0.1:{server.port}", tls=False, credentials=validator) as client:
        assert client.call("header", 1)["header"]["height"] == 1
        client._sock.send(b"\xc1")         # the server answers parse-error and closes this connection
        assert client.call("header", 2)["header"]["height"] == 2      # a new connection, authenticated again
    bank = Credentials("hk-bank", key_of(world, "hk-bank"))
    with Client(f"127.0.0.1:{server.port}", tls=False, credentials=bank) as client:
        proof = match(client, key_of(world, "hk-bank"), "hk-bank", world.chain_id, commitments["active"])
        assert verify_match_proof(proof, world.genesis, commitments["active"]).status == "match"
        assert match(client, key_of(world, "hk-bank"), "hk-bank", world.chain_id, commitments["unknown"]) is None
        with pytest.raises(RpcError) as error:
            client.call("header", 1)
        assert error.value.code == "unauthorized"
    wrong = Credentials("hk-bank", nacl_key())
    with pytest.raises(RpcError) as error:
        Client(f"127.0.0.1:{server.port}", tls=False, credentials=wrong).call("status")
    assert error.value.code == "unauthorized" and "'hk-bank'" in error.value.message


def nacl_key():
    import nacl.signing

    return nacl.signing.SigningKey.generate()
