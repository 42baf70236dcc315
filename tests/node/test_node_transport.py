"""Secret-connection handshake and framing over real 127.0.0.1 TCP sockets, plus hostile input.

Each test runs a PeerNetwork (or the bare handshake) on port 0 and speaks to it
with real sockets: honest peers, and peers that send garbage, truncated,
oversized or replayed bytes. Refusals are checked through the metrics counters.
"""

from __future__ import annotations

import struct

import nacl.signing
import pytest
import trio
import trio.testing

from consensus import codec
from node.config import Address
from node.transport import (
    AEAD_TAG_BYTES, FRAME_KIND_CONSENSUS, FrameError, decode_frame,
    encode_frame, handshake,
)
from tests.support.transport_helpers import (
    CHAIN, FRAME_BYTES_MAX, handshaken_pair, make_network, make_validators, socket_pair as _socket_pair, wait_for,
)


async def test_handshake_authenticates_both_sides_and_frames_round_trip():
    """Two ends of a real socket pair complete the handshake and exchange encrypted frames both ways."""
    keys, validators = make_validators()
    results = await handshaken_pair(keys, validators)
    assert results["a"][0] == "v1" and results["b"][0] == "v0"
    a, b = results["a"][1], results["b"][1]
    await a.send_frame(b"hello")
    await b.send_frame(b"world")
    assert await b.receive_frame() == b"hello"
    assert await a.receive_frame() == b"world"


async def test_handshake_refuses_key_not_in_validator_set():
    """A peer signing with a key the validator set does not hold for its claimed id is refused."""
    keys, validators = make_validators()
    impostor = nacl.signing.SigningKey.generate()
    left, right = await _socket_pair()
    errors = {}

    async def side(name, stream, node_id, key):
        try:
            await handshake(stream, chain_id=CHAIN, node_id=node_id, signing_key=key, validators=validators,
                            frame_bytes_max=FRAME_BYTES_MAX)
        except FrameError as exc:
            errors[name] = exc.reason
            await stream.aclose()
        except trio.BrokenResourceError:
            errors[name] = "broken"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "honest", left, "v0", keys["v0"])
        nursery.start_soon(side, "impostor", right, "v1", impostor)
    assert errors["honest"] == "unknown-key"


def test_frame_shape_is_checked():
    """Only [kind, bytes] frames with a known kind decode; everything else is a bad-shape FrameError."""
    assert decode_frame(encode_frame(FRAME_KIND_CONSENSUS, b"x")) == ("c", b"x")
    for bad in (codec.pack(["c"]), codec.pack(["z", b"x"]), codec.pack(["r", b"x"]), codec.pack(["c", "text"]),
                codec.pack({"c": 1}), b"\xc1"):
        with pytest.raises(FrameError) as info:
            decode_frame(bad)
        assert info.value.reason == "bad-shape"


async def test_two_networks_connect_and_deliver_frames():
    """Two PeerNetworks on real ports link up (lower id dials) and deliver queued frames in order."""
    keys, validators = make_validators()
    in0_send, in0_recv = trio.open_memory_channel(16)
    in1_send, in1_recv = trio.open_memory_channel(16)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net1 = make_network("v1", keys, validators, {"v0": None}, in1_send)
            port1 = await nursery.start(net1.run)
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, in0_send)
            await nursery.start(net0.run)
            net0.send("v1", FRAME_KIND_CONSENSUS, b"one")
            net0.send("v1", FRAME_KIND_CONSENSUS, b"two")
            first, second = await in1_recv.receive(), await in1_recv.receive()
            assert (first.peer_id, first.payload, second.payload) == ("v0", b"one", b"two")
            await wait_for(lambda: net1.connected_peers() == ["v0"])
            net1.send("v0", FRAME_KIND_CONSENSUS, b"back")
            back = await in0_recv.receive()
            assert (back.peer_id, back.kind, back.payload) == ("v1", "c", b"back")
            nursery.cancel_scope.cancel()


async def test_send_queue_keeps_newest_frames_at_its_limit():
    """A peer that is not connected keeps only send_queue_frames_max frames: the oldest are dropped and counted."""
    keys, validators = make_validators()
    send, _ = trio.open_memory_channel(1)
    net = make_network("v0", keys, validators, {"v1": None}, send, peer_send_queue_frames_max=3)
    for index in range(3):
        net.send("v1", FRAME_KIND_CONSENSUS, bytes([index]))
    assert net.metrics.dropped_frames.get() == 0
    net.send("v1", FRAME_KIND_CONSENSUS, b"\x03")
    assert net.metrics.dropped_frames.get() == 1
    assert [decode_frame(f)[1] for f in net.slots["v1"].queue] == [b"\x01", b"\x02", b"\x03"]


async def test_send_queue_is_bounded_in_bytes_too():
    """Frames beyond send_queue_bytes_max push out the oldest; the newest frame is always kept."""
    keys, validators = make_validators()
    send, _ = trio.open_memory_channel(1)
    net = make_network("v0", keys, validators, {"v1": None}, send, peer_send_queue_bytes_max=3000)
    frame_bytes = len(encode_frame(FRAME_KIND_CONSENSUS, b"x" * 1000))
    for index in range(3):
        net.send("v1", FRAME_KIND_CONSENSUS, bytes([index]) * 1000)
    # 3 frames of ~1003 bytes exceed 3000: the first is dropped.
    assert len(net.slots["v1"].queue) == 2 and net.slots["v1"].queued_bytes == 2 * frame_bytes
    assert net.metrics.dropped_frames.get() == 1
    net.send("v1", FRAME_KIND_CONSENSUS, b"y" * 5000)
    assert [decode_frame(f)[1] for f in net.slots["v1"].queue] == [b"y" * 5000]


async def _hostile_session(net_port, payload_fn):
    stream = await trio.open_tcp_stream("127.0.0.1", net_port)
    try:
        await payload_fn(stream)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    # The node closes on us: reading ends (EOF or reset) instead of hanging.
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def _honest_handshake_client(port, keys, validators, node_id="v0"):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _, connection = await handshake(stream, chain_id=CHAIN, node_id=node_id, signing_key=keys[node_id],
                                    validators=validators, frame_bytes_max=FRAME_BYTES_MAX)
    return stream, connection


async def test_hostile_peers_are_refused_and_counted_while_honest_links_keep_working():
    """Garbage, truncated, oversized, undecryptable, replayed and unknown-key sessions are each refused and
    counted by reason; malformed-but-authenticated frames are dropped; an honest peer still gets through."""
    keys, validators = make_validators()
    inbound_send, inbound_recv = trio.open_memory_channel(64)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None, "v1": None, "v2": None}, inbound_send)
            port = await nursery.start(net.run)
            counter = net.metrics.rejected_frames

            # Random bytes instead of a handshake: the garbage "ephemeral key" leads to a failed auth frame.
            async def garbage(stream):
                await stream.send_all(bytes(range(256)) * 4)
            await _hostile_session(port, garbage)

            # Truncated: half an ephemeral key, then close.
            async def truncated(stream):
                await stream.send_all(b"\x01" * 16)
            await _hostile_session(port, truncated)

            # A low-order X25519 point (all zeros) as the ephemeral key: no shared secret to derive.
            async def low_order(stream):
                await stream.send_all(bytes(32))
            await _hostile_session(port, low_order)
            await wait_for(lambda: counter.get("bad-ephemeral-key") == 1)

            # Unknown key: a full handshake signed by a key outside the validator set.
            stranger = dict(keys)
            stranger["v0"] = nacl.signing.SigningKey.generate()
            try:
                await _honest_handshake_client(port, stranger, validators)
            except (FrameError, trio.BrokenResourceError):
                pass

            # Replayed handshake: record an honest client's bytes, then send them again on a new connection.
            recorded = bytearray()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            recording = _RecordingStream(stream, recorded)
            _, good = await handshake(recording, chain_id=CHAIN, node_id="v1", signing_key=keys["v1"],
                                      validators=validators, frame_bytes_max=FRAME_BYTES_MAX)
            await good.aclose()

            async def replay(stream):
                await stream.send_all(bytes(recorded))
            await _hostile_session(port, replay)

            await wait_for(lambda: counter.get("truncated-handshake") >= 1
                           and counter.get("handshake-oversized-frame") >= 1
                           and counter.get("unknown-key") >= 1
                           and counter.get("handshake-undecryptable") >= 1)

            # Authenticated peer sending a frame of the wrong shape, then an oversized frame announcement.
            stream, connection = await _honest_handshake_client(port, keys, validators, "v2")
            await connection.send_frame(codec.pack({"not": "a frame"}))
            await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"after-bad-shape"))
            delivered = await inbound_recv.receive()
            assert (delivered.peer_id, delivered.payload) == ("v2", b"after-bad-shape")
            assert counter.get("bad-shape") == 1
            await stream.send_all(struct.pack(">I", FRAME_BYTES_MAX + 1))
            await wait_for(lambda: counter.get("oversized-frame") == 1)

            # Truncated frame from an authenticated peer: a length prefix, part of the body, then EOF.
            stream, connection = await _honest_handshake_client(port, keys, validators, "v2")
            await stream.send_all(struct.pack(">I", 100) + b"\x00" * 10)
            await stream.aclose()
            await wait_for(lambda: counter.get("truncated-frame") == 1)

            # Undecryptable frame: right length, wrong bytes.
            stream, connection = await _honest_handshake_client(port, keys, validators, "v2")
            await stream.send_all(struct.pack(">I", AEAD_TAG_BYTES + 4) + b"\x00" * (AEAD_TAG_BYTES + 4))
            await wait_for(lambda: counter.get("undecryptable-frame") == 1)

            # And the node still serves an honest peer.
            stream, connection = await _honest_handshake_client(port, keys, validators, "v1")
            await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"still-alive"))
            delivered = await inbound_recv.receive()
            assert (delivered.peer_id, delivered.kind, delivered.payload) == ("v1", "c", b"still-alive")
            nursery.cancel_scope.cancel()


async def test_frame_exactly_at_the_limit_passes_and_one_byte_over_is_refused():
    """frame_bytes_max is the ciphertext size: a frame of exactly that size is delivered, one more is refused."""
    keys, validators = make_validators()
    inbound_send, inbound_recv = trio.open_memory_channel(4)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None}, inbound_send)
            port = await nursery.start(net.run)
            stream, connection = await _honest_handshake_client(port, keys, validators, "v0")
            overhead = len(encode_frame(FRAME_KIND_CONSENSUS, b"")) + AEAD_TAG_BYTES
            # msgpack bin header grows with size: find the largest payload that still fits.
            size = FRAME_BYTES_MAX - overhead
            while len(encode_frame(FRAME_KIND_CONSENSUS, b"x" * size)) + AEAD_TAG_BYTES > FRAME_BYTES_MAX:
                size -= 1
            assert len(encode_frame(FRAME_KIND_CONSENSUS, b"x" * size)) + AEAD_TAG_BYTES == FRAME_BYTES_MAX
            await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"x" * size))
            assert len((await inbound_recv.receive()).payload) == size
            with pytest.raises(FrameError):
                await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"x" * (size + 1)))
            nursery.cancel_scope.cancel()


async def test_partition_cuts_links_and_heal_restores_them():
    """Fault injection: partitioning a peer closes its link and refuses redials; clearing it lets it reconnect."""
    keys, validators = make_validators()
    in0_send, _ = trio.open_memory_channel(16)
    in1_send, in1_recv = trio.open_memory_channel(16)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net1 = make_network("v1", keys, validators, {"v0": None}, in1_send)
            port1 = await nursery.start(net1.run)
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, in0_send)
            await nursery.start(net0.run)
            await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
            net1.set_partitioned(frozenset({"v0"}))
            await wait_for(lambda: net0.connected_peers() == [] and net1.connected_peers() == [])
            await wait_for(lambda: net1.metrics.rejected_frames.get("peer-not-accepted") >= 1)
            assert net1.connected_peers() == []
            net1.set_partitioned(frozenset())
            await wait_for(lambda: net1.connected_peers() == ["v0"])
            net0.send("v1", FRAME_KIND_CONSENSUS, b"healed")
            while (await in1_recv.receive()).payload != b"healed":
                pass
            nursery.cancel_scope.cancel()


class _RecordingStream(trio.abc.Stream):
    """Wraps a stream and keeps a copy of every byte sent (to replay a handshake later)."""

    def __init__(self, inner, sink):
        self.inner, self.sink = inner, sink

    async def send_all(self, data):
        self.sink.extend(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def aclose(self):
        await self.inner.aclose()


async def test_inbound_link_from_a_peer_we_dial_is_refused():
    """The lower id dials: v0, which dials v1, refuses a link v1 opens toward it (no duplicate links)."""
    keys, validators = make_validators()
    in_send, _ = trio.open_memory_channel(4)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            # v1's address is unreachable (port 1), so v0's own dialing never succeeds during the test.
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", 1)}, in_send)
            port0 = await nursery.start(net0.run)
            stream, connection = await _honest_handshake_client(port0, keys, validators, "v1")
            await wait_for(lambda: net0.metrics.rejected_frames.get("wrong-direction") == 1)
            assert net0.connected_peers() == []
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_handshakes_in_progress_are_bounded():
    """At most inbound_handshakes_max strangers may sit in the handshake at once; one more is closed and counted."""
    keys, validators = make_validators()
    in_send, _ = trio.open_memory_channel(4)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None}, in_send, handshake_timeout_ms=10_000,
                               inbound_handshakes_max=3)
            port = await nursery.start(net.run)
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
            await wait_for(lambda: net._inbound_handshakes == 3)
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: net.metrics.rejected_frames.get("too-many-handshakes") == 1)
            assert await extra.receive_some(100) == b""
            for stream in idle + [extra]:
                await stream.aclose()
            # Slots free up again: an honest peer still gets through.
            await wait_for(lambda: net._inbound_handshakes == 0)
            stream, connection = await _honest_handshake_client(port, keys, validators, "v0")
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_does_not_block_the_others():
    """v0 completes the handshake and then never reads. v3 keeps sending to it (its queue, bounded to 64 KiB
    here, drops the oldest frames, counted) while every frame for v1, which reads, arrives in order."""
    keys, validators = make_validators()
    in_send, _ = trio.open_memory_channel(4)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None, "v1": None}, in_send,
                               peer_send_queue_frames_max=100_000, peer_send_queue_bytes_max=64 * 1024)
            port = await nursery.start(net.run)
            stalled_stream, _ = await _honest_handshake_client(port, keys, validators, "v0")
            _, reader = await _honest_handshake_client(port, keys, validators, "v1")
            await wait_for(lambda: net.connected_peers() == ["v0", "v1"])
            received = []

            async def read_v1():
                while True:
                    received.append(decode_frame(await reader.receive_frame())[1])
            nursery.start_soon(read_v1)
            big = b"x" * 3000                                   # fits FRAME_BYTES_MAX
            sent = 0
            # Feed v0 until its socket buffers are full and its bounded queue starts dropping.
            while net.metrics.dropped_frames.get() == 0:
                net.send("v0", FRAME_KIND_CONSENSUS, big)
                net.send("v1", FRAME_KIND_CONSENSUS, sent.to_bytes(4, "big"))
                sent += 1
                await trio.sleep(0)
            for extra in range(100):
                net.send("v0", FRAME_KIND_CONSENSUS, big)
                net.send("v1", FRAME_KIND_CONSENSUS, sent.to_bytes(4, "big"))
                sent += 1
                await trio.sleep(0)
            await wait_for(lambda: len(received) == sent)
            assert received == [index.to_bytes(4, "big") for index in range(sent)]
            assert net.slots["v0"].queued_bytes <= 64 * 1024
            assert net.metrics.dropped_frames.get() >= 100
            await stalled_stream.aclose()
            nursery.cancel_scope.cancel()


async def test_refusal_log_lines_are_bounded_per_reason_but_all_are_counted(autojump_clock):
    """More refusals than REFUSAL_LOG_LINES_MAX in a window: all counted, only the bound logged; after the
    window one line reports how many were left out."""
    from structlog.testing import capture_logs

    import node.transport as transport

    keys, validators = make_validators()
    send, _ = trio.open_memory_channel(1)
    net = make_network("v0", keys, validators, {"v1": None}, send)
    with capture_logs() as logs:
        for _ in range(transport.REFUSAL_LOG_LINES_MAX + 5):
            net._refuse("garbage")
        await trio.sleep(transport.REFUSAL_LOG_WINDOW_MS / 1000)
        net._refuse("garbage")
    assert net.metrics.rejected_frames.get("garbage") == transport.REFUSAL_LOG_LINES_MAX + 6
    refused = [line for line in logs if line["event"] == "peer refused"]
    summaries = [line for line in logs if line["event"] == "peer refusals not logged"]
    assert len(refused) == transport.REFUSAL_LOG_LINES_MAX + 1
    assert [line["count"] for line in summaries] == [5]
