"""Nothing inside one RPC connection can stop the server (issue 14): an exception injected into a
connection's own handling closes that connection only, is logged with the client's address and the
exception, leaves no call counted as waiting, and every other client is served on.

The server runs in the test's trio loop on 127.0.0.1:0 over a small in-memory NodeApi (with the
test world's genesis, so a client can authenticate); clients are real TCP streams.
"""

from __future__ import annotations

import msgpack
import trio
import trio.testing
from structlog.testing import capture_logs

from node import rpc
from node.rpc_access import sign_authentication
from storage.reconfiguration import LedgerEpochs
from tests.support.rpc_helpers import VALIDATOR, key_of, make_world

WORLD = make_world()
PUBLIC_STATUS = {"chain_id": WORLD.chain_id, "node_id": "tiny", "height": 7, "version": "test"}


class TinyLedger:
    """Just what authentication reads: the genesis, the epochs (genesis's: who is a validator), the height
    and a registry (empty)."""

    genesis = WORLD.genesis
    epochs = LedgerEpochs.genesis(WORLD.genesis)

    def height(self) -> int:
        return PUBLIC_STATUS["height"]

    def participant(self, participant_id: str):
        return None


class TinyApi:
    """Just the NodeApi methods these tests call."""

    ledger = TinyLedger()

    def status(self) -> dict:
        return {**PUBLIC_STATUS, "peers": [], "mempool_size": 0}

    async def submit(self, entry: bytes, wait: bool, timeout_s: float) -> dict:
        return {"status": "pending", "id": b"\x00" * 32}


async def call(stream: trio.SocketStream, unpacker: msgpack.Unpacker, msgid: int, method: str, params: list):
    """The response to one request, or None if the server closed the connection."""
    await stream.send_all(msgpack.packb([0, msgid, method, params], use_bin_type=True))
    while True:
        for message in unpacker:
            return message
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return None
        if not data:
            return None
        unpacker.feed(data)


async def authenticate(stream: trio.SocketStream, unpacker: msgpack.Unpacker, identity: str = VALIDATOR) -> None:
    """challenge, then authenticate as `identity` (msgids 1001 and 1002)."""
    answer = await call(stream, unpacker, 1001, "challenge", [])
    assert answer[2] is None, answer
    params = sign_authentication(key_of(WORLD, identity), identity, answer[3])
    answer = await call(stream, unpacker, 1002, "authenticate", params)
    assert answer == [1, 1002, None, {"identity": identity, "role": "validator"}], answer


async def served(port: int) -> bool:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        answer = await call(stream, msgpack.Unpacker(raw=False), 1, "status", [])
        return answer == [1, 1, None, PUBLIC_STATUS]
    finally:
        await stream.aclose()


def _raise_once(real, counter: list):
    async def wrapper(*args, **kwargs):
        if not counter:
            counter.append(1)
            raise RuntimeError("injected")
        return await real(*args, **kwargs)
    return wrapper


async def test_an_exception_in_a_connection_closes_it_and_the_server_serves_on(monkeypatch):
    """A RuntimeError injected into the dispatch of one connection's request: that connection is closed,
    the failure is logged with the client's address and the traceback, and other clients (one already
    connected, one new) are served."""
    server = rpc.RpcServer(TinyApi())
    with trio.fail_after(20), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: rpc.serve_rpc(
                server.methods.api, "127.0.0.1", 0, server=server, task_status=task_status))
            neighbour = await trio.open_tcp_stream("127.0.0.1", port)
            neighbour_unpacker = msgpack.Unpacker(raw=False)
            assert (await call(neighbour, neighbour_unpacker, 1, "status", []))[3] == PUBLIC_STATUS
            monkeypatch.setattr(rpc._Connection, "_dispatch", _raise_once(rpc._Connection._dispatch, []))
            victim = await trio.open_tcp_stream("127.0.0.1", port)
            assert await call(victim, msgpack.Unpacker(raw=False), 1, "status", []) is None
            await victim.aclose()
            assert (await call(neighbour, neighbour_unpacker, 2, "status", []))[3] == PUBLIC_STATUS
            assert await served(port)
            await trio.testing.wait_all_tasks_blocked()
            assert server.connections == 1 and server.counters[rpc.ERROR_INTERNAL] == 1
            await neighbour.aclose()
            nursery.cancel_scope.cancel()
    failed = [line for line in logs if line["event"] == "rpc connection failed"]
    assert len(failed) == 1 and failed[0]["peer"].startswith("127.0.0.1:") and failed[0].get("exc_info")


async def test_an_exception_while_answering_a_waiting_call_leaves_nothing_counted_as_waiting(monkeypatch):
    """A RuntimeError injected while a waiting method's (submit's) answer is encoded: the connection closes,
    the call is no longer counted as waiting (a draining daemon would otherwise wait for it), and the
    server serves on."""
    server = rpc.RpcServer(TinyApi())
    real_encode = rpc._encode_answer
    failures = []

    def encode_once(msgid, method, error, result):
        if method == "submit" and not failures:
            failures.append(1)
            raise RuntimeError("injected")
        return real_encode(msgid, method, error, result)

    monkeypatch.setattr(rpc, "_encode_answer", encode_once)
    with trio.fail_after(20), capture_logs():
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: rpc.serve_rpc(
                server.methods.api, "127.0.0.1", 0, server=server, task_status=task_status))
            victim = await trio.open_tcp_stream("127.0.0.1", port)
            victim_unpacker = msgpack.Unpacker(raw=False)
            await authenticate(victim, victim_unpacker)     # so that submit reaches the node (and its answer)
            assert await call(victim, victim_unpacker, 1, "submit", [b"entry"]) is None
            await victim.aclose()
            with trio.fail_after(2):
                await server.waiting_calls_answered()
            assert server.waiting_calls == 0
            assert await served(port)
            nursery.cancel_scope.cancel()
