"""Links that follow the validator set (issue 17): PeerNetwork.set_peers over real loopback TCP.

A validator added by a reconfiguration is accepted and dialed; a removed one is cut and refused; a
link authenticated with a rotated-out key is cut, and the peer comes back with its new key."""

from __future__ import annotations

import nacl.signing
import trio

from consensus.validators import Validator, ValidatorSet
from node.config import Address
from node.transport import FRAME_KIND_CONSENSUS, peer_keys_of
from tests.support.transport_helpers import make_network, make_validators, wait_for


def _channel():
    return trio.open_memory_channel(64)


async def _linked_pair(nursery, keys, validators):
    """v1 listening, v0 dialing it: (net0, net1, v1's port)."""
    net1 = make_network("v1", keys, validators, {"v0": None}, _channel()[0])
    port1 = await nursery.start(net1.run)
    net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, _channel()[0])
    await nursery.start(net0.run)
    return net0, net1, port1


async def test_a_validator_added_later_is_accepted_and_dialed_once_the_set_names_it():
    keys, validators = make_validators(4)
    genesis = ValidatorSet(validators.validators[:3])        # v3 is not in the set yet
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            send3, receive3 = _channel()
            joiner = make_network("v3", keys, genesis, {"v0": None}, send3)
            port3 = await nursery.start(joiner.run)
            send0, _receive0 = _channel()
            net0 = make_network("v0", keys, genesis, {"v1": None, "v2": None}, send0)
            port0 = await nursery.start(net0.run)
            # The joiner knows v0's address and dials it: v0 refuses a validator its set does not name.
            joiner.set_peers(peer_keys_of(genesis, validators), {"v0": Address("127.0.0.1", port0)})
            await wait_for(lambda: net0.metrics.rejected_frames.get("unknown-validator") >= 1)
            assert net0.connected_peers() == []
            # The reconfiguration is scheduled: v0 follows the set, dials v3 (the lower id dials) and links.
            net0.set_peers(peer_keys_of(genesis, validators), {"v3": Address("127.0.0.1", port3)})
            await wait_for(lambda: "v3" in net0.connected_peers())
            net0.send("v3", FRAME_KIND_CONSENSUS, b"welcome")
            frame = await receive3.receive()
            assert (frame.peer_id, frame.payload) == ("v0", b"welcome")
            nursery.cancel_scope.cancel()


async def test_a_removed_validator_is_cut_and_no_longer_accepted():
    keys, validators = make_validators(2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net0, net1, _port1 = await _linked_pair(nursery, keys, validators)
            await wait_for(lambda: net1.connected_peers() == ["v0"])
            # v1 removes v0 from its set: the link is closed, and v0's redials are refused.
            net1.set_peers({}, {})
            await wait_for(lambda: net1.connected_peers() == [] and net0.connected_peers() == [])
            await wait_for(lambda: net1.metrics.rejected_frames.get("unknown-validator") >= 1)
            assert "v0" not in net1.slots
            net1.send("v0", FRAME_KIND_CONSENSUS, b"dropped")   # to no one: no error, no queue
            nursery.cancel_scope.cancel()


async def test_a_rotated_out_key_loses_its_link_and_the_new_key_gets_one_back():
    keys, validators = make_validators(2)
    new_key = nacl.signing.SigningKey.generate()
    rotated = ValidatorSet((validators.validators[0], Validator("v1", new_key.verify_key.encode(), "CN")))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net0, net1, port1 = await _linked_pair(nursery, keys, validators)
            await wait_for(lambda: net0.connected_peers() == ["v1"])
            # While the rotation is pending v0 accepts both keys: the old link stays up.
            net0.set_peers(peer_keys_of(validators, rotated), {"v1": Address("127.0.0.1", port1)})
            assert net0.connected_peers() == ["v1"]
            # The new epoch starts at v0 first: the link made with v1's old key is cut ...
            net0.set_peers(peer_keys_of(rotated), {"v1": Address("127.0.0.1", port1)})
            await wait_for(lambda: net0.metrics.rejected_frames.get("unknown-key") >= 1)
            # ... and comes back once v1 authenticates with its new key.
            net1.set_signing_key(new_key)
            await wait_for(lambda: net0.connected_peers() == ["v1"] and net0.slots["v1"].connection.peer_key
                           == new_key.verify_key.encode())
            nursery.cancel_scope.cancel()
