"""Answers of immediate methods to one read go out together: one send per read, split at
reply_batch_bytes_max; a waiting method (submit) still runs in its own task.

The connection under test is authenticated as a validator beforehand (by the real challenge and
authenticate exchange, in-process), so these tests are about batching, not access."""

from __future__ import annotations

import msgpack
import trio
import trio.testing

from tests.support.rpc_helpers import TEST_LIMITS, authenticated_session
from node.rpc import RpcServer, _Connection, reply_batch_bytes_max


class RecordingStream:
    """A trio stream that hands out the given reads in turn, then end of stream, and records every send."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)
        self.sends: list[bytes] = []

    async def receive_some(self, max_bytes=None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.reads:
            return b""
        data = self.reads.pop(0)
        assert max_bytes is None or len(data) <= max_bytes, "the test's read is larger than the server asks for"
        return data

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()
        self.sends.append(bytes(data))

    async def aclose(self) -> None:
        pass


def _requests(count: int, first_msgid: int = 0) -> bytes:
    return b"".join(msgpack.packb([0, first_msgid + i, "header", [1]]) for i in range(count))


def _answers(sends: list[bytes]) -> list:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(b"".join(sends))
    return list(unpacker)


async def _validator_connection(server: RpcServer, node, stream) -> _Connection:
    connection = _Connection(server, stream)
    connection.session = await authenticated_session(server, node.world)
    return connection


def _serve(node, reads: list[bytes]) -> RecordingStream:
    stream = RecordingStream(reads)
    server = RpcServer(node, TEST_LIMITS)

    async def main():
        with trio.fail_after(10):
            await (await _validator_connection(server, node, stream)).run()
    trio.run(main)
    return stream


def test_answers_to_one_read_go_out_in_one_send_in_request_order(node):
    stream = _serve(node, [_requests(5), _requests(3, first_msgid=5)])
    assert len(stream.sends) == 2                              # one per read
    answers = _answers(stream.sends)
    assert [a[1] for a in answers] == list(range(8))           # immediate methods: request order
    assert all(a[0] == 1 and a[2] is None for a in answers)


def test_answers_beyond_the_batch_bound_are_split_at_it(node):
    answer_bytes = len(_answers_one(node))
    count = (reply_batch_bytes_max // answer_bytes) * 2 + 3     # a bit more than two batches' worth
    data = _requests(count)
    assert len(data) <= TEST_LIMITS.message_bytes_max          # still one read
    stream = _serve(node, [data])
    answers = _answers(stream.sends)
    assert [a[1] for a in answers] == list(range(count))
    assert len(stream.sends) == 3
    for sent in stream.sends[:-1]:
        # Flushed as soon as the gathered answers reach the bound, never one answer later.
        assert reply_batch_bytes_max <= len(sent) < reply_batch_bytes_max + answer_bytes
    assert len(stream.sends[-1]) < reply_batch_bytes_max


def _answers_one(node) -> bytes:
    stream = _serve(node, [_requests(1)])
    assert len(stream.sends) == 1
    return stream.sends[0]


def test_bad_bytes_after_good_requests_answer_those_first_then_close(node):
    stream = _serve(node, [_requests(2) + b"\xc1"])            # 0xc1 is never valid msgpack
    answers = _answers(stream.sends)
    assert [a[1] for a in answers[:2]] == [0, 1] and answers[0][2] is None
    assert answers[2][1] is None and answers[2][2]["code"] == "parse-error"


class GatedStream(RecordingStream):
    """RecordingStream that, after its reads, waits (no end of stream) until `close()`, and whose
    send_all waits while `send_gate` is closed: a client slow to read its answers."""

    def __init__(self, reads: list[bytes]) -> None:
        super().__init__(reads)
        self.closed = trio.Event()
        self.send_gate = trio.Event()
        self.send_gate.set()

    async def receive_some(self, max_bytes=None) -> bytes:
        if not self.reads:
            await self.closed.wait()
        return await super().receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.send_gate.wait()
        await super().send_all(data)

    def close(self) -> None:
        self.closed.set()


def _submits(world, count: int) -> bytes:
    from tests.support.storage_helpers import Author, commitment

    author = Author(world, "hk-bureau")
    author.nonce = 100                    # past the nonces the fixture's blocks used
    return b"".join(msgpack.packb([0, i, "submit", [author.commit(commitment(1000 + i)), {"wait": True}]])
                    for i in range(count))


def _release(node) -> None:
    if node.released is None:
        node.released = trio.Event()
    node.released.set()


def _serve_held_submits(node, stream: GatedStream, scenario) -> None:
    """Serve `stream` with the node holding every waiting submit; run `scenario(server)` once the
    connection has taken what it can, then end the stream."""
    node.hold = True
    server = RpcServer(node, TEST_LIMITS)

    async def main():
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon((await _validator_connection(server, node, stream)).run)
                await trio.testing.wait_all_tasks_blocked()
                await scenario(server)
                stream.close()
    trio.run(main)


def test_answers_of_waiting_calls_woken_together_go_out_in_one_send(world, node):
    """One commit wakes many submits of a connection: their answers leave in one write."""
    in_flight = TEST_LIMITS.requests_in_flight_max
    stream = GatedStream([_submits(world, in_flight)])

    async def scenario(server):
        assert len(node.submitted) == in_flight and server.waiting_calls == in_flight
        _release(node)
        await trio.testing.wait_all_tasks_blocked()
    _serve_held_submits(node, stream, scenario)
    assert len(stream.sends) == 1
    answers = _answers(stream.sends)
    assert sorted(a[1] for a in answers) == list(range(in_flight))
    assert all(a[2] is None and a[3]["status"] == "committed" for a in answers)


def test_a_waiting_call_holds_its_slot_until_its_answer_is_written(world, node):
    """With every in-flight slot answered but the answers not yet written (the client does not
    read), no further request is taken: a client cannot pile up answers by not reading them."""
    in_flight = TEST_LIMITS.requests_in_flight_max
    stream = GatedStream([_submits(world, in_flight + 1)])

    async def scenario(server):
        assert len(node.submitted) == in_flight
        stream.send_gate = trio.Event()      # the client stops reading
        _release(node)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == [] and server.waiting_calls == in_flight
        assert len(node.submitted) == in_flight   # the next request waits for a slot
        stream.send_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(node.submitted) == in_flight + 1 and server.waiting_calls == 0
    _serve_held_submits(node, stream, scenario)
    answers = _answers(stream.sends)
    assert sorted(a[1] for a in answers) == list(range(in_flight + 1))
