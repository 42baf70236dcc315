"""Peer-transport helpers over real 127.0.0.1 sockets (tests/node/test_node_transport.py and the driver
tests): a validator set of fresh keys, a PeerNetwork on port 0 with small limits, a handshaken socket
pair, and a wait bounded by the caller's own fail_after.
"""

from __future__ import annotations

import nacl.signing
import trio

from consensus.validators import Validator, ValidatorSet
from node.config import Address
from node.metrics import NodeMetrics
from node.transport import PeerLimits, PeerNetwork, handshake

CHAIN = "test-chain"
FRAME_BYTES_MAX = 4096


def make_validators(count: int = 4):
    keys = {f"v{i}": nacl.signing.SigningKey.generate() for i in range(count)}
    jurisdictions = ["HK", "HK", "CN", "CN"]
    validators = ValidatorSet(tuple(
        Validator(vid, bytes(key.verify_key), jurisdictions[i % 4]) for i, (vid, key) in enumerate(keys.items())))
    return keys, validators


def make_network(node_id, keys, validators, peers, inbound, **overrides):
    settings = dict(frame_bytes_max=FRAME_BYTES_MAX, handshake_timeout_ms=2000, peer_send_queue_frames_max=8,
                    peer_send_queue_bytes_max=1 << 20,
                    reconnect_backoff_min_ms=20, reconnect_backoff_max_ms=200)
    settings.update(overrides)
    return PeerNetwork(node_id=node_id, chain_id=CHAIN, signing_key=keys[node_id], validators=validators,
                       peers=peers, listen=Address("127.0.0.1", 0), inbound=inbound, metrics=NodeMetrics(),
                       limits=PeerLimits(**settings))


async def wait_for(predicate, step_s=0.01):
    # Bounded by the test's own fail_after, not by a timed assertion.
    while not predicate():
        await trio.sleep(step_s)


async def socket_pair():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def handshaken_pair(keys, validators) -> dict:
    """Both ends of a real socket pair after the handshake, "a" as v0 and "b" as v1: name -> (peer id, connection)."""
    left, right = await socket_pair()
    results = {}

    async def side(name, stream, node_id):
        results[name] = await handshake(stream, chain_id=CHAIN, node_id=node_id, signing_key=keys[node_id],
                                        validators=validators, frame_bytes_max=FRAME_BYTES_MAX)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", left, "v0")
        nursery.start_soon(side, "b", right, "v1")
    return results
