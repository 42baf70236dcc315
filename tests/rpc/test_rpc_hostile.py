"""Hostile input on the RPC port gets its clear error or a closed connection, and a well-behaved
client on another connection is served throughout (checked after every hostile step).

Real TCP on 127.0.0.1 against node.rpc with the small TEST_LIMITS of conftest.py, so each limit
is probed exactly at its edge. Where a test is about framing or limits rather than access, its
connection is authenticated as a validator (who may call every method); anonymous and role checks
are in test_rpc_access.py.
"""

from __future__ import annotations

import random
import socket
import time

import msgpack
import nacl.signing
import pytest

from tests.support.rpc_helpers import TEST_LIMITS, VALIDATOR, Connection, connect, key_of, query
from node.rpc import QueryGuard
from node.api import ApiError


@pytest.fixture
def neighbour(server):
    """A well-behaved client on its own connection; `check()` asserts it is still served."""
    connection = Connection(server.port)

    class Neighbour:
        calls = 0

        def check(self) -> None:
            error, status = connection.call("status")
            assert error is None and status["height"] >= 4
            Neighbour.calls += 1

    neighbour = Neighbour()
    neighbour.check()
    yield neighbour
    connection.close()


def test_random_bytes_get_an_error_or_a_closed_connection(server, neighbour):
    """Random byte strings (seeded): every answer is an error response; the server never crashes."""
    for seed in range(40):
        rng = random.Random(seed)
        connection = Connection(server.port)
        connection.send_raw(rng.randbytes(rng.randrange(1, 3000)))
        connection.sock.shutdown(socket.SHUT_WR)
        while (message := connection.receive()) is not None:
            assert message[0] == 1 and message[2] is not None and message[3] is None
            assert message[2]["code"] in ("parse-error", "invalid-request", "message-too-large"), message
        connection.close()
        neighbour.check()


def test_unparseable_bytes_get_parse_error_and_close(server, neighbour):
    """0xc1 is never valid msgpack: the stream is out of step, so error (msgid nil) then close."""
    connection = Connection(server.port)
    connection.send_raw(b"\xc1\x00\x00")
    message = connection.receive()
    assert message[0] == 1 and message[1] is None and message[2]["code"] == "parse-error"
    assert connection.receive() is None
    neighbour.check()


def test_truncated_message_does_not_stall_anyone(server, neighbour):
    """Half a request and then silence: the neighbour is served; the half request is never answered."""
    whole = msgpack.packb([0, 1, "status", []])
    stalled = Connection(server.port)
    stalled.send_raw(whole[: len(whole) // 2])
    neighbour.check()
    stalled.send_raw(whole[len(whole) // 2:])      # completing it later gets the answer
    message = stalled.receive()
    assert message[1] == 1 and message[2] is None
    stalled.send_raw(whole[:3])
    stalled.close()                                 # and closing mid-message is harmless
    neighbour.check()


def test_message_size_limit_edge(server, neighbour, world):
    """A message of exactly message_bytes_max is read and answered; one byte more: error and close."""
    limit = TEST_LIMITS.message_bytes_max

    def submit_of_size(size: int) -> bytes:
        for padding in range(size, 0, -1):
            data = msgpack.packb([0, 7, "submit", [b"x" * padding]], use_bin_type=True)
            if len(data) == size:
                return data
        raise AssertionError("no padding gives that size")

    at_limit = connect(server.port, world, VALIDATOR)
    at_limit.send_raw(submit_of_size(limit))
    message = at_limit.receive()
    assert message[1] == 7 and message[2]["code"] == "bad-entry"   # read whole, refused as an entry
    error, _ = at_limit.call("status")
    assert error is None                                           # and the connection stays open

    over = Connection(server.port)
    over.send_raw(submit_of_size(limit + 1))
    message = over.receive()
    assert message[1] is None and message[2]["code"] == "message-too-large"
    assert over.receive() is None
    neighbour.check()


@pytest.mark.parametrize("message", [
    {}, 5, "status", [], [0], [0, 1, "status"], [0, -1, "status", []], [0, 2**32, "status", []],
    [0, "1", "status", []], [0, 1, 5, []], [0, 1, "status", {}], [1, 1, None, None], [3, 1, "status", []],
    [0.0, 1, "status", []], [True, 1, "status", []],
])
def test_valid_msgpack_of_the_wrong_shape(server, neighbour, message):
    """Not a request: invalid-request (with the msgid when one is readable); the connection stays open."""
    connection = Connection(server.port)
    connection.send_raw(msgpack.packb(message, use_bin_type=True))
    answer = connection.receive()
    assert answer[0] == 1 and answer[2]["code"] == "invalid-request" and answer[3] is None
    error, _ = connection.call("status")
    assert error is None
    neighbour.check()


def test_notifications_are_accepted_and_not_answered(server, neighbour):
    connection = Connection(server.port)
    connection.send_raw(msgpack.packb([2, "status", []]))
    error, status = connection.call("status")
    assert error is None and connection.msgid == 1       # the first answer is to the request, not the notification
    neighbour.check()


@pytest.mark.parametrize("method, params, code", [
    ("no-such-method", [], "method-not-found"),
    ("", [], "method-not-found"),
    ("status", [1], "invalid-params"),
    ("header", [], "invalid-params"),
    ("header", ["1"], "invalid-params"),
    ("header", [True], "invalid-params"),
    ("header", [-1], "invalid-params"),
    ("header", [1.5], "invalid-params"),
    ("header", [0], "not-found"),
    ("header", [2**64 - 1], "invalid-params"),
    ("block", [None], "invalid-params"),
    ("block", [5], "not-found"),
    ("submit", [], "invalid-params"),
    ("submit", [5], "invalid-params"),
    ("submit", ["text"], "invalid-params"),
    ("submit", [b"\x80", {"wait": "yes"}], "invalid-params"),
    ("submit", [b"\x80", {"wait": True, "timeout_ms": -5}], "invalid-params"),
    ("submit", [b"\x80", {"unknown": 1}], "invalid-params"),
    ("submit", [b"\x80", []], "invalid-params"),
    ("submit", [b"not an entry"], "bad-entry"),
    ("match", [], "invalid-params"),
    ("match", [5], "invalid-params"),
    ("match", [b"\xc1"], "invalid-params"),
    ("match", [msgpack.packb({"body": b"", "sig": b""})], "invalid-params"),
    ("match", [b"x" * 2000], "invalid-params"),
    ("consistency", [1], "invalid-params"),
    ("consistency", [3, 2], "invalid-params"),
    ("consistency", [0, 2], "invalid-params"),
    ("consistency", [1, 6], "invalid-params"),
    ("consistency", ["1", 2], "invalid-params"),
    ("participant", [5], "invalid-params"),
    ("participant", [""], "invalid-params"),
    ("participant", ["nobody"], "not-found"),
])
def test_unknown_methods_and_wrong_parameters(connect, neighbour, method, params, code):
    connection = connect(VALIDATOR)
    error, result = connection.call(method, *params)
    assert error["code"] == code and isinstance(error["message"], str) and error["message"] and result is None
    neighbour.check()


def test_signed_query_checks(connect, neighbour, world, commitments):
    """Forged signature, other chain, other node, unadmitted key, suspended participant, replay, stale clock
    (asked by a validator, who may send anyone's query: the query's own checks are what is tested)."""
    connection = connect(VALIDATOR)
    active = commitments["active"]

    def code_of(signed: bytes, on=connection) -> str | None:
        error, _ = on.call("match", signed)
        return None if error is None else error["code"]

    genuine = query(world, "hk-bank", active)
    forged = bytearray(genuine)
    forged[-1] ^= 1                                          # last byte of the signature
    assert code_of(bytes(forged)) == "bad-signature"
    assert code_of(query(world, "hk-bank", active, chain_id="other-chain")) == "invalid-params"
    assert code_of(query(world, "hk-bank", active, node="hk-2")) == "invalid-params"     # signed for another node
    stranger = nacl.signing.SigningKey.generate()
    assert code_of(query(world, "hk-bank", active, key=stranger)) == "unauthorized"   # wrong key for the id
    assert code_of(query(world, "stranger", active, key=stranger)) == "unauthorized"  # never admitted
    assert code_of(query(world, "cn-bureau", active)) == "unauthorized"              # suspended
    assert code_of(genuine) is None                          # the genuine query, once
    assert code_of(genuine) == "replayed"                    # and never twice
    assert code_of(genuine, connect(VALIDATOR)) == "replayed"       # not even on another connection
    window = TEST_LIMITS.query_window_ms
    now = int(time.time() * 1000)
    assert code_of(query(world, "hk-bank", active, time_ms=now + window + 60_000)) == "stale-query"
    neighbour.check()


def test_a_query_older_than_the_window_is_stale(node, world, commitments):
    """time_ms more than query_window_ms before the node's clock: stale-query; exactly at the window's
    edge: answered. The node started long before (its clock moves on after the start), so neither query
    is refused merely for predating the start."""
    from tests.support.rpc_helpers import ServerThread

    window = TEST_LIMITS.query_window_ms
    now = int(time.time() * 1000)
    clock = [now - 10 * window]                               # the node's clock when it starts
    server = ServerThread(node, TEST_LIMITS, clock_ms=lambda: clock[0])
    clock[0] = now                                            # ... and later
    try:
        connection = connect(server.port, world, VALIDATOR)
        error, _ = connection.call("match", query(world, "hk-bank", commitments["active"], time_ms=now - window - 1))
        assert error["code"] == "stale-query" and f"more than {window} ms" in error["message"]
        error, proof = connection.call("match", query(world, "hk-bank", commitments["active"], time_ms=now - window))
        assert error is None and isinstance(proof, bytes)
        connection.close()
    finally:
        server.stop()


def test_query_guard_edges():
    """Window edge (exactly window_ms away is fresh, one more is stale), memory full, expiry frees memory."""
    guard = QueryGuard(window_ms=1000, ids_max=3)
    guard.admit(b"a", 0, 1000)
    guard.admit(b"b", 2000, 1000)
    with pytest.raises(ApiError) as stale:
        guard.admit(b"c", -1, 1000)
    assert stale.value.code == "stale-query"
    with pytest.raises(ApiError) as stale:
        guard.admit(b"c", 2001, 1000)
    assert stale.value.code == "stale-query"
    guard.admit(b"c", 1000, 1000)
    with pytest.raises(ApiError) as busy:
        guard.admit(b"d", 1000, 1000)
    assert busy.value.code == "busy" and len(guard) == 3
    with pytest.raises(ApiError) as replayed:
        guard.admit(b"a", 0, 1000)
    assert replayed.value.code == "replayed"
    guard.admit(b"d", 1500, 2001)          # "a" (expires at 1000 + 1000) has left the window: forgotten
    assert len(guard) == 3


def test_a_participant_at_its_query_share_is_refused_while_others_are_answered(connect, neighbour, world, commitments):
    """Over the wire, each participant on its own authenticated connection: hk-bank's genuine queries are
    answered until its share of the replay memory is full, then refused busy; hk-bureau, asking
    meanwhile, still gets its proof."""
    bank, bureau = connect("hk-bank"), connect("hk-bureau")
    active = commitments["active"]
    codes = []
    for _ in range(TEST_LIMITS.query_ids_per_participant_max + 1):
        error, _ = bank.call("match", query(world, "hk-bank", active))
        codes.append(None if error is None else error["code"])
        if error is not None:
            break
    assert codes[-1] == "busy" and set(codes[:-1]) == {None}
    error, proof = bureau.call("match", query(world, "hk-bureau", active))
    assert error is None and isinstance(proof, bytes)
    neighbour.check()


def test_query_guard_shares_its_memory_fairly():
    """A participant at its share is refused (busy) while others are still answered, up to the total;
    as its ids leave the window, its share frees again."""
    guard = QueryGuard(window_ms=1000, ids_max=5, ids_per_participant_max=2)
    guard.admit(b"f1", 0, 0, "flooder")
    guard.admit(b"f2", 10, 0, "flooder")
    with pytest.raises(ApiError) as busy:
        guard.admit(b"f3", 0, 0, "flooder")
    assert busy.value.code == "busy" and "this participant" in busy.value.message
    assert guard.held_by("flooder") == 2
    guard.admit(b"b1", 0, 0, "bank")          # unaffected by the flooder
    guard.admit(b"b2", 0, 0, "bank")
    guard.admit(b"c1", 0, 0, "bureau")
    with pytest.raises(ApiError) as full:      # the total (5) is reached, whoever asks
        guard.admit(b"c2", 0, 0, "bureau")
    assert full.value.code == "busy" and "too many recent queries" in full.value.message
    with pytest.raises(ApiError) as replayed:  # a replay is named as such, even at the share
        guard.admit(b"f1", 0, 0, "flooder")
    assert replayed.value.code == "replayed"
    guard.admit(b"f3", 1000, 1001, "flooder")  # f1 (expiry 1000) left the window: the flooder has room again
    assert guard.held_by("flooder") == 2 and len(guard) == 5


def test_connection_limit_edge(server, neighbour):
    """With the neighbour, connections_max - 1 more are served; the next is told busy and closed;
    after one closes, a new connection is served again."""
    opened = [Connection(server.port) for _ in range(TEST_LIMITS.connections_max - 1)]
    for connection in opened:
        assert connection.call("status")[0] is None
    refused = Connection(server.port)
    message = refused.receive()
    assert message[1] is None and message[2]["code"] == "busy"
    assert refused.receive() is None
    opened.pop().close()
    neighbour.check()
    deadline_attempts = 200
    for _ in range(deadline_attempts):    # the server notices the close asynchronously
        again = Connection(server.port)
        again.request("status", [])
        answer = again.receive()
        again.close()
        if answer is not None and answer[1] is not None:
            break
    else:
        raise AssertionError("a connection freed by a close is never reused")
    for connection in opened:
        connection.close()


def test_one_client_address_cannot_hold_every_connection(node):
    """At connections_per_source_max connections from 127.0.0.1, the next from there is told busy
    (naming the per-address limit) and closed, while a client on 127.0.0.2 is still served."""
    import dataclasses

    from tests.support.rpc_helpers import ServerThread

    limits = dataclasses.replace(TEST_LIMITS, connections_per_source_max=3)
    server = ServerThread(node, limits)
    opened = []
    try:
        opened = [Connection(server.port) for _ in range(3)]
        for connection in opened:
            assert connection.call("status")[0] is None
        refused = Connection(server.port)
        message = refused.receive()
        assert message[1] is None and message[2]["code"] == "busy"
        text = message[2]["message"]
        assert "3 connections from 127.0.0.1" in text and "per client address" in text
        assert refused.receive() is None
        elsewhere = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0))
        other = Connection(None, elsewhere)
        assert other.call("status")[0] is None
        opened.append(other)
        opened.pop(0).close()             # a slot of 127.0.0.1 freed: served again (the close is noticed soon)
        for _ in range(200):
            again = Connection(server.port)
            again.request("status", [])
            answer = again.receive()
            again.close()
            if answer is not None and answer[1] is not None:
                break
        else:
            raise AssertionError("a connection freed by a close is never reused")
    finally:
        for connection in opened:
            connection.close()
        server.stop()


def test_many_requests_in_flight_are_answered_as_they_complete(server, node, world, neighbour):
    """A held submit(wait) does not block later requests on the same connection: they are answered
    first (out of order); more than requests_in_flight_max pipelined requests are all answered."""
    from tests.support.storage_helpers import Author, commitment

    node.hold = True
    author = Author(world, "hk-bank")
    author.nonce = 1000
    connection = connect(server.port, world, VALIDATOR)
    connection.request("submit", [author.commit(commitment(500)), {"wait": True}], msgid=100)
    connection.request("status", [], msgid=101)
    first = connection.receive()
    assert first[1] == 101 and first[2] is None
    server.release()
    second = connection.receive()
    assert second[1] == 100 and second[2] is None and second[3]["status"] == "committed"

    count = TEST_LIMITS.requests_in_flight_max * 10
    connection.send_raw(b"".join(msgpack.packb([0, i, "header", [1]]) for i in range(count)))
    answers = [connection.receive() for _ in range(count)]
    assert sorted(a[1] for a in answers) == list(range(count)) and all(a[2] is None for a in answers)
    neighbour.check()


def test_submit_wait_timeout_is_an_error(server, node, world):
    """submit with wait and a short timeout_ms on an entry that does not commit: error "timeout"."""
    from tests.support.storage_helpers import Author, commitment

    node.hold = True
    author = Author(world, "hk-bank")
    author.nonce = 2000
    connection = connect(server.port, world, VALIDATOR)
    error, result = connection.call("submit", author.commit(commitment(600)), {"wait": True, "timeout_ms": 1})
    assert error["code"] == "timeout" and result is None


def test_requests_before_a_half_close_are_all_answered(server, world):
    """A client that sends its requests and shuts down its sending side still gets every answer."""
    connection = connect(server.port, world, VALIDATOR)
    connection.send_raw(b"".join(msgpack.packb([0, i, "header", [1 + i % 4]]) for i in range(20)))
    connection.sock.shutdown(socket.SHUT_WR)
    answers = []
    while (message := connection.receive()) is not None:
        answers.append(message)
    assert sorted(a[1] for a in answers) == list(range(20)) and all(a[2] is None for a in answers)


@pytest.mark.parametrize("payload", [
    b"\x91" * 5000 + b"\xc0",              # 5000 nested arrays: msgpack's depth limit, not a crash
    b"\xdd\xff\xff\xff\xff",               # an array claiming 2**32-1 elements
    b"\xc6\xff\xff\xff\xff" + b"x" * 9000,  # a bin claiming 4 GiB: refused once the limit is reached
    b"\xa5\xff\xfe\xfd\xfc\xfb",           # a str that is not UTF-8
])
def test_hostile_msgpack_headers(server, neighbour, payload):
    connection = Connection(server.port)
    connection.send_raw(payload)
    message = connection.receive()
    assert message[1] is None and message[2]["code"] in ("parse-error", "message-too-large"), message
    assert connection.receive() is None
    neighbour.check()


def test_idle_connections_are_closed(node):
    """With nothing in flight and no bytes for idle_timeout_ms, the server closes the connection."""
    from dataclasses import replace

    from tests.support.rpc_helpers import ServerThread

    server = ServerThread(node, replace(TEST_LIMITS, idle_timeout_ms=50))
    try:
        connection = Connection(server.port)
        assert connection.call("status")[0] is None
        assert connection.receive() is None            # closed by the server after the idle time
    finally:
        server.stop()


def test_a_client_that_never_reads_is_dropped_and_others_are_served(node, world):
    """Pipelined requests whose answers are never read: once the server's send has been blocked for
    send_timeout_ms it drops that connection; a neighbour is served meanwhile and afterwards."""
    from dataclasses import replace

    from tests.support.rpc_helpers import ServerThread

    server = ServerThread(node, replace(TEST_LIMITS, send_timeout_ms=100))
    try:
        reader = Connection(server.port)
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", server.port))
        hog.settimeout(10)
        Connection(None, sock=hog).authenticate(VALIDATOR, key_of(world, VALIDATOR))   # so block() is answered
        hog.settimeout(2)
        # 20,000 answers of ~1.5 KB: far more than the socket buffers between us hold.
        try:
            hog.sendall(msgpack.packb([0, 1, "block", [1]]) * 20_000)
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            pass                                      # the server stopped reading us, or dropped us
        assert reader.call("status")[0] is None
        deadline = time.monotonic() + 30              # a liveness bound, not a timing
        while server.server.connections > 1:
            assert time.monotonic() < deadline, "the connection that never reads is never dropped"
            time.sleep(0.01)
        assert server.server.counters["send-timeout"] == 1
        assert reader.call("status")[0] is None
        hog.close()
    finally:
        server.stop()


def test_a_failing_method_answers_internal_and_the_server_keeps_serving(server, node, world, neighbour, monkeypatch):
    """A bug behind a method (here: the ledger's participant lookup raises) is an "internal" error for that
    call only."""
    def broken(participant_id):
        raise RuntimeError("simulated bug")
    connection = connect(server.port, world, VALIDATOR)     # authenticate looks participants up too
    monkeypatch.setattr(node.ledger, "participant", broken)
    error, result = connection.call("participant", "hk-bank")
    assert error["code"] == "internal" and "simulated" not in error["message"] and result is None
    assert connection.call("status")[0] is None
    neighbour.check()


def test_block_pages_and_the_page_size_edge(node, world):
    """block(height, first, count): count up to block_entries_per_response_max is served, one more is
    invalid-params; pages cover the block exactly once."""
    from dataclasses import replace

    from tests.support.rpc_helpers import ServerThread
    from tests.support.storage_helpers import Author, commitment

    author = Author(world, "hk-bank")
    author.nonce = 3000
    node.commit_now([author.commit(commitment(700 + i)) for i in range(5)])   # block 5: five entries
    server = ServerThread(node, replace(TEST_LIMITS, block_entries_per_response_max=2))
    try:
        connection = connect(server.port, world, VALIDATOR)
        error, whole = connection.call("block", 5)
        assert error is None and whole["header"]["entry_count"] == 5 and len(whole["entries"]) == 2
        pages = [connection.call("block", 5, first, 2)[1] for first in (0, 2, 4)]
        assert [len(p["entries"]) for p in pages] == [2, 2, 1] and [p["first"] for p in pages] == [0, 2, 4]
        assert [r for p in pages for r in p["results"]] == [5, 6, 7, 8, 9]
        assert connection.call("block", 5, 5, 2)[1]["entries"] == []
        assert connection.call("block", 5, 0, 3)[0]["code"] == "invalid-params"
        assert connection.call("block", 5, 6)[0]["code"] == "invalid-params"
    finally:
        server.stop()
