"""Shared by the RPC and CLI tests: a NodeApi backed by a REAL storage Ledger on a tmp dir, served by
node.rpc on 127.0.0.1 (port 0) in a background thread running its own trio loop.

`FakeNode.submit` checks an entry as the daemon does and, with wait, commits it in a block
certified with the test's real validator keys (tests/support/storage_helpers.py), so the
RPC server and the client are tested end to end without the consensus daemon.
"""

from __future__ import annotations

import socket
import threading

import msgpack
import nacl.signing
import trio

from tests.support.storage_helpers import World, make_world, next_block

from node.api import ApiError
from node.client import build_match_query
from node.rpc import RpcLimits, RpcServer
from node.rpc_access import Session, sign_authentication
from storage.entries import check_entry, entry_id
from storage.ledger import Ledger


# Small limits so every edge is cheap to reach in a test.
TEST_LIMITS = RpcLimits(message_bytes_max=8192, connections_max=8, requests_in_flight_max=4,
                        idle_timeout_ms=60_000, send_timeout_ms=5_000, submit_wait_ms_max=20_000,
                        query_window_ms=300_000, query_ids_max=1000, query_ids_per_participant_max=20)


NODE_ID = "hk-1"             # FakeNode's node id (status()["node_id"]): the `node` a match query names
VALIDATOR = "hk-1"           # who tests about something other than access authenticate as


def key_of(world: World, identity: str) -> nacl.signing.SigningKey:
    """The signing key of a validator, a governance key (regulator) or a participant of the test world."""
    for keys in (world.validator_keys, world.governance_keys, world.participant_keys):
        if identity in keys:
            return keys[identity]
    raise KeyError(f"no key for {identity!r} in the test world")


def query(world: World, participant: str, commitment: bytes, *, key: nacl.signing.SigningKey | None = None,
          node: str = NODE_ID, chain_id: str | None = None, nonce: int | None = None,
          time_ms: int | None = None) -> bytes:
    """A signed match query of `participant` (by its own key unless `key`) for FakeNode's node."""
    return build_match_query(key_of(world, participant) if key is None else key, participant,
                             world.chain_id if chain_id is None else chain_id, commitment, node=node, nonce=nonce,
                             time_ms=time_ms)


async def authenticated_session(server: RpcServer, world: World, identity: str = VALIDATOR) -> Session:
    """A Session authenticated by the real exchange (challenge, then authenticate), in-process."""
    session = Session()
    error, answer = await server.call("challenge", [], session)
    assert error is None, error
    error, result = await server.call("authenticate", sign_authentication(key_of(world, identity), identity, answer),
                                      session)
    assert error is None and result["identity"] == identity, (error, result)
    return session


class Connection:
    """A raw msgpack-RPC connection over a real socket (no project client code on the wire)."""

    def __init__(self, port: int | None, sock: socket.socket | None = None) -> None:
        """A new connection to 127.0.0.1:port, or (port None) over the connected `sock`."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10) if sock is None else sock
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method, params, msgid=None) -> None:
        if msgid is None:
            self.msgid += 1
            msgid = self.msgid
        self.send_raw(msgpack.packb([0, msgid, method, params], use_bin_type=True))

    def receive(self):
        """The next message, or None once the server has closed the connection."""
        while True:
            for message in self.unpacker:
                return message
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.unpacker.feed(data)

    def call(self, method, *params):
        """(error, result) of one call."""
        self.request(method, list(params))
        message = self.receive()
        assert message is not None and message[0] == 1 and message[1] == self.msgid, message
        return message[2], message[3]

    def authenticate(self, identity: str, key: nacl.signing.SigningKey) -> dict:
        """challenge, then authenticate as `identity` with `key`; the authenticate result (asserted ok)."""
        error, answer = self.call("challenge")
        assert error is None, error
        error, result = self.call("authenticate", *sign_authentication(key, identity, answer))
        assert error is None, error
        return result

    def close(self) -> None:
        self.sock.close()


def connect(port: int, world: World | None = None, identity: str | None = None) -> Connection:
    """A raw connection to 127.0.0.1:port, authenticated as `identity` (a key of `world`) unless None."""
    connection = Connection(port)
    if identity is not None:
        assert world is not None, "authenticating needs the world's keys"
        result = connection.authenticate(identity, key_of(world, identity))
        assert result["identity"] == identity
    return connection


class FakeNode:
    """NodeApi over a real Ledger: submit applies one certified block per entry (or holds it)."""

    def __init__(self, world: World, ledger: Ledger, clock_ms=None) -> None:
        """`clock_ms`: block times from this clock (the CLI tests: proofs fresh by the wall clock);
        None: genesis time + 1 s per height, so the doc examples are the same bytes every run."""
        self.world = world
        self.ledger = ledger
        self.clock_ms = clock_ms
        self.hold = False                 # submit(wait) blocks until release() while set
        self.released: trio.Event | None = None
        self.submitted: list[bytes] = []

    def status(self) -> dict:
        head = self.ledger.head()
        return {"chain_id": self.world.chain_id, "node_id": NODE_ID, "jurisdiction": "HK",
                "height": self.ledger.height(), "view": 0, "primary": "hk-1",
                "tree_size": self.ledger.tree_size(), "tree_root": head.tree_root if head else bytes(32),
                "peers": ["hk-2", "cn-1", "cn-2"], "mempool_size": 0, "version": "test"}

    def commit_now(self, entries: list[bytes]) -> list:
        time_ms = None
        if self.clock_ms is not None:
            head = self.ledger.head()
            time_ms = max(self.clock_ms(), head.time_ms + 1 if head is not None else 0)
        return self.ledger.apply_block(next_block(self.world, self.ledger, entries, time_ms=time_ms))

    async def submit(self, entry: bytes, wait: bool, timeout_s: float) -> dict:
        reason = self.ledger.check_entry(entry)     # the regulator keys of the ledger's epoch
        if reason is not None:
            raise ApiError("bad-entry", f"entry refused: {reason}")
        self.submitted.append(entry)
        if not wait:
            return {"status": "pending", "id": entry_id(entry)}
        if self.hold:
            if self.released is None:
                self.released = trio.Event()
            with trio.move_on_after(timeout_s):
                await self.released.wait()
            if not self.released.is_set():
                raise ApiError("timeout", "not committed yet; the entry stays in the mempool")
        outcome = self.commit_now([entry])[0]
        height = self.ledger.height()
        if not outcome.ok:
            return {"status": "rejected", "height": height, "reason": outcome.reason, "id": entry_id(entry)}
        return {"status": "committed", "height": height, "leaf_index": outcome.leaf_index, "id": entry_id(entry)}


class ServerThread:
    """node.rpc.RpcServer on 127.0.0.1:0 in its own thread and trio loop; `stop()` cancels and joins."""

    def __init__(self, api, limits: RpcLimits = RpcLimits(), clock_ms=None) -> None:
        self.api = api
        self.server = RpcServer(api, limits) if clock_ms is None else RpcServer(api, limits, clock_ms=clock_ms)
        self.port: int | None = None
        self._ready = threading.Event()
        self._token = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        assert self.port is not None, "RPC server did not start"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the test through stop()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self.server.handle, listeners)
                self._ready.set()

    def run_in_loop(self, fn) -> None:
        """Run a sync function inside the server's trio loop (e.g. to set an Event)."""
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()
        self._token.run_sync_soon(call)
        done.wait(30)

    def release(self) -> None:
        def set_event() -> None:
            if self.api.released is None:
                self.api.released = trio.Event()
            self.api.released.set()
        self.run_in_loop(set_event)

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            try:
                self._token.run_sync_soon(self._scope.cancel)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)
        assert not self._thread.is_alive(), "RPC server thread did not stop"
        if self._error is not None:
            raise self._error


def populate(world: World, ledger: Ledger) -> dict:
    """A few blocks: commits by both bureaus, one revoked, cn-bureau suspended by both regulators."""
    from tests.support.storage_helpers import Author, commitment
    from storage.entries import build_suspend

    hk, cn = Author(world, "hk-bureau"), Author(world, "cn-bureau")
    node = FakeNode(world, ledger)
    node.commit_now([hk.commit(commitment(1)), cn.commit(commitment(2), jurisdiction="CN")])
    node.commit_now([hk.commit(commitment(3))])
    node.commit_now([hk.revoke(commitment(3))])
    regulators = [(gid, key) for gid, key in world.governance_keys.items()]
    outcomes = node.commit_now([build_suspend(regulators, world.chain_id, "cn-bureau", 1, 1_700_000_000_000)])
    assert all(o.ok for o in outcomes), outcomes
    return {"active": commitment(1), "by_suspended": commitment(2), "revoked": commitment(3),
            "unknown": commitment(99)}


__all__ = ["TEST_LIMITS", "NODE_ID", "VALIDATOR", "Connection", "FakeNode", "ServerThread", "authenticated_session",
           "connect", "key_of", "make_world", "populate", "query"]

