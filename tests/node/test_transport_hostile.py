"""Hostile peers and strangers against the peer transport (issue 14): handshakes, floods, bad frames.

Each test runs PeerNetworks (or, for the last ones, four in-process daemons) on
127.0.0.1 and attacks them with real sockets: a stranger with no key who
completes the X25519 exchange and sends a nested or otherwise poisonous auth
frame, a flood of half-open connections, an authenticated peer that sends
undecodable or oversized frames or more than it is read, and exceptions
injected into the link tasks. Each checks that only the offending connection
closes, that it is counted, and that honest links keep working.
"""

from __future__ import annotations

import struct

import nacl.bindings
import nacl.public
import nacl.signing
import pytest
import trio
import trio.testing

from consensus import codec
from consensus.validators import Validator, ValidatorSet
from node import transport
from node.config import Address
from node.metrics import NodeMetrics
from node.transport import (
    EPHEMERAL_KEY_BYTES, FRAME_KIND_CONSENSUS, PeerLimits, PeerNetwork, SecretConnection, _Reader, derive_session,
    encode_frame, handshake,
)
from tests.support.node_cluster import free_ports

CHAIN = "test-chain"
FRAME_BYTES_MAX = 4096
NESTED_ARRAYS = b"\x91" * 1000 + b"\xc0"      # [[[...[nil]...]]], 1,000 deep: ~1 KB


def make_validators(count: int = 4):
    keys = {f"v{i}": nacl.signing.SigningKey.generate() for i in range(count)}
    validators = ValidatorSet(tuple(
        Validator(vid, bytes(key.verify_key), ("HK", "HK", "CN", "CN")[i % 4]) for i, (vid, key) in enumerate(keys.items())))
    return keys, validators


def make_network(node_id, keys, validators, peers, inbound, listen_port=0, **overrides):
    settings = dict(frame_bytes_max=FRAME_BYTES_MAX, handshake_timeout_ms=5000, peer_send_queue_frames_max=64,
                    peer_send_queue_bytes_max=1 << 20, reconnect_backoff_min_ms=50, reconnect_backoff_max_ms=500)
    settings.update(overrides)
    policy = {"inbound_allow_only_validators": settings.pop("inbound_allow_only_validators", False)}
    return PeerNetwork(node_id=node_id, chain_id=CHAIN, signing_key=keys[node_id], validators=validators,
                       peers=peers, listen=Address("127.0.0.1", listen_port), inbound=inbound,
                       metrics=NodeMetrics(), limits=PeerLimits(**settings), **policy)


async def wait_for(predicate, step_s=0.01):
    # Bounded by the test's own fail_after.
    while not predicate():
        await trio.sleep(step_s)


async def stranger_session(port: int, chain_id: str = CHAIN) -> tuple[trio.SocketStream, SecretConnection]:
    """Complete the anonymous X25519 exchange with the node at `port` (no validator key needed) and
    return an encrypted connection on which the next frame is read as the auth frame."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ephemeral = nacl.public.PrivateKey.generate()
    own = bytes(ephemeral.public_key)
    await stream.send_all(own)
    reader = _Reader(stream)
    peer = await reader.read_exactly(EPHEMERAL_KEY_BYTES)
    shared = nacl.bindings.crypto_scalarmult(bytes(ephemeral), peer)
    send_key, receive_key, _ = derive_session(own, peer, shared, chain_id)
    return stream, SecretConnection(stream, reader, send_key, receive_key, 1 << 20)


async def closed_by_node(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


def rejected_total(net: PeerNetwork) -> float:
    return sum(net.metrics.rejected_frames.values.values())


async def linked_pair(nursery, keys, validators, **overrides):
    """v0 dials v1; both up and linked."""
    in0_send, in0_recv = trio.open_memory_channel(64)
    in1_send, in1_recv = trio.open_memory_channel(64)
    net1 = make_network("v1", keys, validators, {"v0": None, "v2": None}, in1_send, **overrides)
    port1 = await nursery.start(net1.run)
    net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, in0_send, **overrides)
    await nursery.start(net0.run)
    await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
    return net0, net1, port1, in0_recv, in1_recv


# --- handshakes --------------------------------------------------------------------------------------


def _raiser(exc: BaseException):
    def unpack_canonical(*args, **kwargs):
        raise exc
    return unpack_canonical


@pytest.mark.parametrize("poison", ["nested", "ValueError", "TypeError", "KeyError", "RecursionError"])
async def test_a_poisonous_auth_frame_closes_only_that_connection(poison, monkeypatch):
    """A stranger with no key completes the X25519 exchange and sends, as its auth frame, 1,000-deep nested
    arrays (issue 14 point 1), or a frame whose decoding raises an exception the handshake does not expect
    (injected). The node closes that connection, counts it by reason, keeps its link to v0 and still
    accepts an honest handshake. Before the fix the exception reached the nursery and stopped the node."""
    keys, validators = make_validators()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net0, net1, port1, in0_recv, in1_recv = await linked_pair(nursery, keys, validators)
            if poison != "nested":
                monkeypatch.setattr(codec, "unpack_canonical", _raiser({
                    "ValueError": ValueError("hostile"), "TypeError": TypeError("hostile"),
                    "KeyError": KeyError("hostile"),
                    "RecursionError": RecursionError("maximum recursion depth exceeded")}[poison]))
            before = rejected_total(net1)
            for _ in range(4):      # four such frames stopped the whole testnet
                stream, connection = await stranger_session(port1)
                await connection.send_frame(NESTED_ARRAYS)
                await closed_by_node(stream)
            await wait_for(lambda: rejected_total(net1) >= before + 4)
            assert net1.connected_peers() == ["v0"] and net0.connected_peers() == ["v1"]
            net0.send("v1", FRAME_KIND_CONSENSUS, b"still linked")
            assert (await in1_recv.receive()).payload == b"still linked"
            monkeypatch.undo()
            stream = await trio.open_tcp_stream("127.0.0.1", port1)
            peer_id, honest = await handshake(stream, chain_id=CHAIN, node_id="v2", signing_key=keys["v2"],
                                              validators=validators, frame_bytes_max=FRAME_BYTES_MAX)
            assert peer_id == "v1"
            await wait_for(lambda: "v2" in net1.connected_peers())
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_an_unexpected_handshake_error_is_counted_and_logged_with_its_type(monkeypatch):
    """An exception the handshake does not expect is counted as handshake-internal-error and logged
    (with the exception) by the refusal log."""
    from structlog.testing import capture_logs

    keys, validators = make_validators()
    monkeypatch.setattr(codec, "unpack_canonical", _raiser(KeyError("hostile")))
    with trio.fail_after(20), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            net = make_network("v1", keys, validators, {"v0": None}, trio.open_memory_channel(4)[0])
            port = await nursery.start(net.run)
            stream, connection = await stranger_session(port)
            await connection.send_frame(b"\x80")
            await closed_by_node(stream)
            await wait_for(lambda: net.metrics.rejected_frames.get("handshake-internal-error") == 1)
            nursery.cancel_scope.cancel()
    refused = [line for line in logs if line["event"] == "peer refused"]
    assert refused and refused[0]["reason"] == "handshake-internal-error" and "KeyError" in refused[0]["detail"]


async def test_the_first_bytes_of_a_handshake_must_come_quickly():
    """A connection that sends nothing is closed after handshake_first_bytes_timeout_ms, well before the
    whole-handshake timeout, and counted; one that sends its ephemeral key in time gets the whole timeout."""
    keys, validators = make_validators()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v1", keys, validators, {"v0": None}, trio.open_memory_channel(4)[0],
                               handshake_timeout_ms=10_000, handshake_first_bytes_timeout_ms=200)
            port = await nursery.start(net.run)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            await closed_by_node(silent)
            assert trio.current_time() - started < 2
            assert net.metrics.rejected_frames.get("handshake-first-bytes-timeout") == 1
            # Sends its key, then stalls: held until the whole-handshake timeout, not the first-bytes one.
            slow = await trio.open_tcp_stream("127.0.0.1", port)
            await slow.send_all(bytes(nacl.public.PrivateKey.generate().public_key))
            await trio.sleep(0.6)
            assert net._inbound_handshakes == 1
            await slow.aclose()
            nursery.cancel_scope.cancel()


async def test_handshakes_per_source_address_are_capped():
    """With inbound_handshakes_per_source_max = 2, a third unauthenticated connection from the same IP is
    closed at once and counted; once those end, the source gets slots again."""
    keys, validators = make_validators()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v1", keys, validators, {"v0": None}, trio.open_memory_channel(4)[0],
                               inbound_handshakes_per_source_max=2, inbound_handshakes_max=10)
            port = await nursery.start(net.run)
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await wait_for(lambda: net._inbound_handshakes == 2)
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: net.metrics.rejected_frames.get("too-many-handshakes-from-source") == 1)
            assert await extra.receive_some(100) == b""     # refused before the node sends its key
            for stream in idle + [extra]:
                await stream.aclose()
            await wait_for(lambda: net._inbound_handshakes == 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await handshake(stream, chain_id=CHAIN, node_id="v0", signing_key=keys["v0"], validators=validators,
                            frame_bytes_max=FRAME_BYTES_MAX)
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_inbound_only_from_validator_addresses():
    """inbound_allow_only_validators: a connection from an IP that is no validator's p2p host is closed
    before the node sends a byte; with the peers on 127.0.0.1 the same connection is served."""
    keys, validators = make_validators()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            strict = make_network("v1", keys, validators, {"v0": Address("10.255.255.1", 9), "v2": None},
                                  trio.open_memory_channel(4)[0], inbound_allow_only_validators=True,
                                  reverse_dial_delay_ms=600_000)
            port = await nursery.start(strict.run)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await stream.receive_some(100) == b""
            await stream.aclose()
            assert strict.metrics.rejected_frames.get("not-a-validator-address") == 1
            open_to_local = make_network("v1", keys, validators, {"v0": Address("127.0.0.1", 9)},
                                         trio.open_memory_channel(4)[0], inbound_allow_only_validators=True,
                                         reverse_dial_delay_ms=600_000)
            port = await nursery.start(open_to_local.run)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await handshake(stream, chain_id=CHAIN, node_id="v0", signing_key=keys["v0"], validators=validators,
                            frame_bytes_max=FRAME_BYTES_MAX)
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def _flood_half_open(port: int, holders: int, counter: list) -> None:
    """Hold every handshake slot the node gives out with connections that send nothing, as an attacker
    would: `holders` workers each keep one connection open until the node closes it and then open the next
    at once; a worker refused outright (closed within 0.1 s) tries again 0.25 s later."""
    async def hold_forever():
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.25)
                continue
            counter[0] += 1
            opened = trio.current_time()
            try:
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            await trio.aclose_forcefully(stream)
            if trio.current_time() - opened < 0.1:
                await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        for _ in range(holders):
            nursery.start_soon(hold_forever)


async def test_a_half_open_flood_does_not_keep_a_restarted_validator_out():
    """Issue 14 point 5: 70 workers from 127.0.0.1 hold every handshake slot of v1 with connections that
    send nothing, opening the next the moment the node closes one (more than 20 connections a second).
    v0, the lower id, which dials v1, restarts: its dial into v1 meets full slots, yet the link is back
    within 10 s, because v1 dials v0 too (reverse_dial_delay_ms after losing the link) and v0 accepts that
    once its own dial has failed as long. Exactly one link remains and it carries frames both ways.
    Before the fix v0 stayed out (64 slots, each held for handshake_timeout_ms)."""
    keys, validators = make_validators()
    (port0,) = free_ports(1)
    in0_send, in0_recv = trio.open_memory_channel(64)
    in1_send, in1_recv = trio.open_memory_channel(64)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # The production redial backoff (100 ms doubling to 5 s): a restarted node dials as it would.
            backoff = dict(reconnect_backoff_min_ms=100, reconnect_backoff_max_ms=5000)
            net1 = make_network("v1", keys, validators, {"v0": Address("127.0.0.1", port0)}, in1_send, **backoff)
            port1 = await nursery.start(net1.run)

            async def run_v0(task_status=trio.TASK_STATUS_IGNORED):
                net = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, in0_send,
                                   listen_port=port0, **backoff)
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as own:
                        await own.start(net.run)
                        task_status.started((net, scope))

            net0, scope0 = await nursery.start(run_v0)
            await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
            flooded = [0]
            flood_started = trio.current_time()
            nursery.start_soon(_flood_half_open, port1, 70, flooded)
            await trio.sleep(2)          # the flood reaches its steady state
            scope0.cancel()
            await wait_for(lambda: net1.connected_peers() == [])
            net0, scope0 = await nursery.start(run_v0)
            restarted = trio.current_time()
            with trio.move_on_after(10):
                await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
            relinked_s = trio.current_time() - restarted
            assert net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"], (
                f"no link after {relinked_s:.1f} s; v1 refusals {dict(net1.metrics.rejected_frames.values)}")
            assert flooded[0] / (trio.current_time() - flood_started) > 20      # connections a second
            # One link, not two replacing each other: it stays, and frames cross it both ways.
            await trio.sleep(1)
            assert net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"]
            net0.send("v1", FRAME_KIND_CONSENSUS, b"to v1")
            net1.send("v0", FRAME_KIND_CONSENSUS, b"to v0")
            assert (await in1_recv.receive()).payload == b"to v1"
            assert (await in0_recv.receive()).payload == b"to v0"
            nursery.cancel_scope.cancel()


async def test_the_higher_id_dials_when_the_lower_id_cannot_reach_it():
    """v0's listed address for v1 is dead (port 1), so v0's dials all fail; v1 dials v0 once it has had no
    link for reverse_dial_delay_ms, v0 accepts, and the link carries frames. Before the fix only the lower
    id dialed and the pair never linked."""
    keys, validators = make_validators()
    (port0,) = free_ports(1)
    in0_send, in0_recv = trio.open_memory_channel(64)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", 1)}, in0_send,
                                listen_port=port0, reverse_dial_delay_ms=500)
            net1 = make_network("v1", keys, validators, {"v0": Address("127.0.0.1", port0)},
                                trio.open_memory_channel(64)[0], reverse_dial_delay_ms=500)
            await nursery.start(net0.run)
            await nursery.start(net1.run)
            started = trio.current_time()
            await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
            assert trio.current_time() - started >= 0.45
            assert net0.slots["v1"].dialed_by == net1.slots["v0"].dialed_by == "v1"
            net1.send("v0", FRAME_KIND_CONSENSUS, b"reverse")
            assert (await in0_recv.receive()).payload == b"reverse"
            nursery.cancel_scope.cancel()


async def test_dials_from_both_sides_settle_on_one_link():
    """Both sides dial at once (reverse_dial_delay_ms = 0): they settle on one link that both agree on,
    and it does not flap."""
    keys, validators = make_validators()
    port0, port1 = free_ports(2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)},
                                trio.open_memory_channel(64)[0], listen_port=port0, reverse_dial_delay_ms=0)
            net1 = make_network("v1", keys, validators, {"v0": Address("127.0.0.1", port0)},
                                trio.open_memory_channel(64)[0], listen_port=port1, reverse_dial_delay_ms=0)
            await nursery.start(net0.run)
            await nursery.start(net1.run)
            await wait_for(lambda: net0.connected_peers() == ["v1"] and net1.connected_peers() == ["v0"])
            await trio.sleep(1)
            assert net0.slots["v1"].dialed_by == net1.slots["v0"].dialed_by
            links0, links1 = net0.slots["v1"].links_opened, net1.slots["v0"].links_opened
            await trio.sleep(1)
            assert (net0.slots["v1"].links_opened, net1.slots["v0"].links_opened) == (links0, links1)
            nursery.cancel_scope.cancel()


# --- authenticated peers that misbehave --------------------------------------------------------------


async def honest_client(port, keys, validators, node_id):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _, connection = await handshake(stream, chain_id=CHAIN, node_id=node_id, signing_key=keys[node_id],
                                    validators=validators, frame_bytes_max=FRAME_BYTES_MAX)
    return stream, connection


async def test_a_peer_sending_undecodable_frames_is_disconnected_then_backed_off():
    """An authenticated peer gets peer_malformed_messages_max undecodable frames for free; the next one
    closes its link, counted in peer_disconnects by reason. Its first offence costs only the link; a
    second one within the backoff memory has its links refused for peer_offence_backoff_min_ms, after which
    it is served again."""
    keys, validators = make_validators()
    inbound_send, inbound_recv = trio.open_memory_channel(64)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None, "v1": None}, inbound_send,
                               peer_malformed_messages_max=2, peer_offence_backoff_min_ms=1000,
                               peer_offence_backoff_max_ms=4000)
            port = await nursery.start(net.run)
            stream, connection = await honest_client(port, keys, validators, "v0")
            for _ in range(2):
                await connection.send_frame(codec.pack({"not": "a frame"}))
            await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"within budget"))
            assert (await inbound_recv.receive()).payload == b"within budget"
            assert net.connected_peers() == ["v0"]
            await connection.send_frame(codec.pack({"not": "a frame"}))
            await closed_by_node(stream)
            await wait_for(lambda: net.connected_peers() == [])
            assert net.metrics.peer_disconnects.get("bad-shape") == 1
            # Offence 1 cost the link only: v0 may come straight back. It offends again (oversized frame).
            stream, connection = await honest_client(port, keys, validators, "v0")
            await wait_for(lambda: net.connected_peers() == ["v0"])
            await stream.send_all(struct.pack(">I", FRAME_BYTES_MAX + 1))
            await closed_by_node(stream)
            assert net.metrics.peer_disconnects.get("oversized-frame") == 1
            # Now it is backed off: refused after the handshake, while v1 is served.
            stream, _ = await honest_client(port, keys, validators, "v0")
            await closed_by_node(stream)
            assert net.metrics.rejected_frames.get("backed-off") == 1
            other, other_connection = await honest_client(port, keys, validators, "v1")
            await other_connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"v1 served"))
            assert (await inbound_recv.receive()).payload == b"v1 served"
            await trio.sleep(1.1)
            stream, connection = await honest_client(port, keys, validators, "v0")
            await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"back"))
            assert (await inbound_recv.receive()).payload == b"back"
            nursery.cancel_scope.cancel()


async def test_disconnect_closes_the_link_and_the_dialer_waits_out_the_backoff():
    """PeerNetwork.disconnect (what the daemon calls for a malformed consensus message): the link closes,
    is counted by reason, and the dialer side does not redial before the backoff of a second offence ends."""
    keys, validators = make_validators()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net0, net1, port1, _, _ = await linked_pair(nursery, keys, validators, peer_offence_backoff_min_ms=1500)
            net0.disconnect("v1", "bad-encoding")
            assert net0.metrics.peer_disconnects.get("bad-encoding") == 1
            await wait_for(lambda: net0.connected_peers() == ["v1"])      # first offence: link only
            net0.disconnect("v1", "bad-field")
            cut = trio.current_time()
            await wait_for(lambda: net0.connected_peers() == [])
            await wait_for(lambda: net0.connected_peers() == ["v1"])
            assert trio.current_time() - cut >= 1.4
            net0.disconnect("nobody", "bad-field")                       # unknown peers are ignored
            nursery.cancel_scope.cancel()


async def test_one_peer_cannot_queue_more_than_its_byte_budget():
    """peer_inbound_queue_bytes_max bounds the bytes one peer has read but the driver has not consumed:
    past it, that peer's reader waits (TCP pushes back on it) while another peer's frames still arrive;
    releasing a frame lets the reader go on."""
    keys, validators = make_validators()
    inbound_send, inbound_recv = trio.open_memory_channel(1000)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net = make_network("v3", keys, validators, {"v0": None, "v1": None}, inbound_send,
                               peer_inbound_queue_bytes_max=FRAME_BYTES_MAX)
            port = await nursery.start(net.run)
            _, flooder = await honest_client(port, keys, validators, "v0")
            for index in range(20):
                await flooder.send_frame(encode_frame(FRAME_KIND_CONSENSUS, bytes([index]) * 3000))
            _, polite = await honest_client(port, keys, validators, "v1")
            await polite.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"polite"))
            first = await inbound_recv.receive()
            second = await inbound_recv.receive()
            assert {first.peer_id, second.peer_id} == {"v0", "v1"}
            await trio.sleep(0.3)
            with pytest.raises(trio.WouldBlock):
                inbound_recv.receive_nowait()          # v0 is at its budget: its reader waits
            assert net.slots["v0"].inbound_bytes <= FRAME_BYTES_MAX
            v0_frame = first if first.peer_id == "v0" else second
            net.release(v0_frame)
            following = await inbound_recv.receive()
            assert (following.peer_id, following.payload) == ("v0", bytes([1]) * 3000)
            nursery.cancel_scope.cancel()


# --- exceptions inside a link ------------------------------------------------------------------------


def _raise_once(real, counter: list):
    def wrapper(*args, **kwargs):
        if not counter:
            counter.append(1)
            raise RuntimeError("injected")
        return real(*args, **kwargs)
    return wrapper


async def test_an_exception_in_a_link_task_closes_that_link_only(monkeypatch):
    """A RuntimeError injected into the reader (decode_frame) of the v0 link: that link closes and is logged
    with the peer and the exception; the network keeps running and v0 relinks."""
    from structlog.testing import capture_logs

    keys, validators = make_validators()
    with trio.fail_after(20), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            net0, net1, _, _, in1_recv = await linked_pair(nursery, keys, validators)
            opened = net1.slots["v0"].links_opened
            monkeypatch.setattr(transport, "decode_frame", _raise_once(transport.decode_frame, []))
            net0.send("v1", FRAME_KIND_CONSENSUS, b"boom")
            await wait_for(lambda: net1.slots["v0"].links_opened > opened and net1.connected_peers() == ["v0"])
            net0.send("v1", FRAME_KIND_CONSENSUS, b"after")
            while (await in1_recv.receive()).payload != b"after":
                pass
            nursery.cancel_scope.cancel()
    failed = [line for line in logs if line["event"] == "peer link failed"]
    assert failed and failed[0]["peer"] == "v0" and failed[0].get("exc_info")


async def test_injected_link_exceptions_do_not_stop_a_daemon_which_keeps_committing(tmp_path, monkeypatch):
    """Four in-process daemons (test_node_daemon.Net). A RuntimeError is injected once each into a reader
    (decode_frame), a writer (SecretConnection.send_frames) and an inbound handshake (node.transport.handshake);
    every daemon keeps running and the cluster keeps committing afterwards."""
    from tests.support.daemon_net import IDS, Net, submit_all

    net = Net(tmp_path)
    all_ids = [node_id for node_id, _ in IDS]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for node_id in all_ids:
                await net.start(nursery, node_id)
            receipts = {}
            await submit_all(net.daemons["hk-1"], range(0, 3), receipts)
            monkeypatch.setattr(transport, "decode_frame", _raise_once(transport.decode_frame, []))
            monkeypatch.setattr(SecretConnection, "send_frames",
                                _raise_once_async(SecretConnection.send_frames, []))
            await submit_all(net.daemons["cn-1"], range(3, 6), receipts)
            # The handshake itself raises (injected into node.transport.handshake, which the inbound side
            # calls): a stranger's connection meets it.
            monkeypatch.setattr(transport, "handshake", _raise_once_async(transport.handshake, []))
            await closed_by_node(await trio.open_tcp_stream("127.0.0.1", net.ports["hk-2"]))
            monkeypatch.undo()
            await submit_all(net.daemons["hk-2"], range(6, 12), receipts)
            assert sorted(receipts) == list(range(12))
            assert all(r["status"] == "committed" for r in receipts.values())
            top = max(r["height"] for r in receipts.values())
            await net.wait_height(all_ids, top)
            assert sum(net.daemons[n].metrics.rejected_frames.get("handshake-internal-error") for n in all_ids) == 1
            nursery.cancel_scope.cancel()


def _raise_once_async(real, counter: list):
    async def wrapper(*args, **kwargs):
        if not counter:
            counter.append(1)
            raise RuntimeError("injected")
        return await real(*args, **kwargs)
    return wrapper


async def test_a_validator_sending_malformed_consensus_messages_is_cut_but_not_for_protocol_reasons(tmp_path):
    """cn-2, played by the test with its real key, sends hk-2 consensus frames the core cannot decode
    ("bad-encoding"): past peer_malformed_messages_max (8) the daemon has the transport cut the link,
    counted in peer_disconnects. Rejections between honest validators ("wrong-view", "outside-window",
    "invalid-request:*") are never reported; the honest three keep committing."""
    from types import SimpleNamespace

    from tests.support.daemon_net import Net, submit_all

    net = Net(tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for node_id in ("hk-1", "hk-2", "cn-1"):
                await net.start(nursery, node_id)
            daemon = net.daemons["hk-2"]
            stream = await trio.open_tcp_stream("127.0.0.1", net.ports["hk-2"])
            _, connection = await handshake(stream, chain_id=net.genesis.chain_id, node_id="cn-2",
                                            signing_key=net.keys["cn-2"].signing_key, validators=net.validators,
                                            frame_bytes_max=1 << 20)
            await wait_for(lambda: "cn-2" in daemon.network.connected_peers())
            for _ in range(9):
                await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"\x93random"))
            await closed_by_node(stream)
            await wait_for(lambda: daemon.metrics.peer_disconnects.get("bad-encoding") == 1)
            assert daemon.metrics.rejected_messages.get("bad-encoding") == 9

            reported = []
            daemon.network.report_malformed = lambda peer, reason: reported.append((peer, reason))
            honest_reasons = ["wrong-view", "outside-window", "invalid-request:bad-signature", "unknown-sender"]
            daemon._report(SimpleNamespace(evidence=[], rejected=[("hk-1", reason) for reason in honest_reasons * 20]))
            assert reported == []
            daemon._report(SimpleNamespace(evidence=[], rejected=[("hk-1", "bad-field"), ("hk-1", "too-large")]))
            assert reported == [("hk-1", "bad-field"), ("hk-1", "too-large")]

            receipts = {}
            await submit_all(net.daemons["cn-1"], range(0, 4), receipts)
            assert all(r["status"] == "committed" for r in receipts.values())
            nursery.cancel_scope.cancel()


def test_new_transport_limits_are_validated(tmp_path):
    """Each new limit is range-checked by name, and the cross rules hold: first-bytes timeout <= handshake
    timeout, offence backoff max >= min, inbound queue budget >= frame_bytes_max (raised to it when unset);
    [p2p] inbound_allow_only_validators is a boolean and round-trips through render_config."""
    from node.config import ConfigError, load_config, render_config

    base = ('node_id = "hk-1"\nkey_file = "k"\ngenesis_file = "g"\ndata_dir = "d"\n'
            '[listen]\np2p = "127.0.0.1:7000"\nrpc = "127.0.0.1:7001"\nmetrics = "127.0.0.1:7002"\n'
            '[rpc]\nplaintext = true\n')

    def load(text):
        path = tmp_path / "node.toml"
        path.write_text(base + text)
        return load_config(path)

    def error(text):
        with pytest.raises(ConfigError) as info:
            load(text)
        return str(info.value)

    for key, low, high in (("handshake_first_bytes_timeout_ms", 100, 5000), ("inbound_handshakes_max", 1, 100_000),
                           ("inbound_handshakes_per_source_max", 1, 100_000), ("reverse_dial_delay_ms", 0, 600_000),
                           ("peer_malformed_messages_max", 0, 1_000_000),
                           ("peer_offence_backoff_min_ms", 1, 5_000)):
        for good in (low, high):
            assert getattr(load(f"[limits]\n{key} = {good}\n").limits, key) == good
        for bad in (low - 1, '"1"', "true"):
            assert error(f"[limits]\n{key} = {bad}\n").startswith(f"limits.{key}:")
    assert error("[limits]\nhandshake_first_bytes_timeout_ms = 5001\n").startswith(
        "limits.handshake_first_bytes_timeout_ms:")
    assert error("[limits]\npeer_offence_backoff_min_ms = 500\npeer_offence_backoff_max_ms = 499\n").startswith(
        "limits.peer_offence_backoff_max_ms:")
    assert error("[limits]\nframe_bytes_max = 4096\npeer_inbound_queue_bytes_max = 4095\n").startswith(
        "limits.peer_inbound_queue_bytes_max:")
    assert load("[limits]\nframe_bytes_max = 4096\npeer_inbound_queue_bytes_max = 4096\n"
                ).limits.peer_inbound_queue_bytes_max == 4096
    assert load(f"[limits]\nframe_bytes_max = {256 << 20}\n").limits.peer_inbound_queue_bytes_max == 256 << 20
    assert error("[p2p]\ninbound_allow_only_validators = 1\n").startswith("p2p.inbound_allow_only_validators:")
    assert error("[p2p]\nallow = true\n").startswith("p2p.allow:")
    config = load("[p2p]\ninbound_allow_only_validators = true\n")
    assert config.p2p.inbound_allow_only_validators is True
    (tmp_path / "again.toml").write_text(render_config(config))
    assert load_config(tmp_path / "again.toml").p2p == config.p2p
