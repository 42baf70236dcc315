"""Epochs in the replica (docs/CONSENSUS.md, "Reconfiguration: epochs"): a committed reconfiguration takes
effect at commit height + margin + 1, certificates from then on are the new set's, a rotated-out key is
refused, a removed validator stops voting, and a restart comes back in the epoch it left.

The reconfiguration is the test cluster's stand-in entry (tests/support/replica_cluster.py,
`reconfigure_request`); the ledger's co-signed entry is issue 17's next step.
"""

from __future__ import annotations

import nacl.signing
import pytest

from consensus import codec
from consensus.block import commit_vote_payload
from consensus.epochs import AddValidator, RemoveValidator, RotateValidatorKey, SetMinSigners
from consensus.messages import Prepare, encode, sign
from consensus.replica import Replica, ReplicaConfig
from consensus.validators import Validator
from tests.support.replica_cluster import CHAIN, RECONFIGURE_PREFIX, Cluster, TrivialApp, reconfigure_request

MARGIN = 8
CONFIG = ReplicaConfig(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200, checkpoint_interval=4,
                       watermark_window=8, catch_up_timeout_ms=200)
NEW_KEY = nacl.signing.SigningKey(bytes([99]) * 32)


def reconfiguration_height(cluster, node_id="v0"):
    for block in cluster.nodes[node_id].chain:
        if any(entry.startswith(RECONFIGURE_PREFIX) for entry in block.entries):
            return block.header.height
    return None


def commit_past(cluster, height, nodes=None):
    """Submit one request at a time until every node (of `nodes`) holds `height` blocks: heights advance
    only with blocks, and empty ones fill idle heights only while an epoch is pending."""
    nodes = nodes or cluster.ids
    for number in range(4 * height):
        if min(len(cluster.nodes[n].chain) for n in nodes) >= height:
            return
        cluster.submit(nodes[0], f"ok:fill-{number}".encode())
        cluster.run(3)
    raise AssertionError(f"heights {cluster.heights()} did not reach {height}")


def signature_of(block, validator):
    return next(s.signature for s in block.certificate.signatures if s.validator == validator)


def test_a_rotated_key_signs_from_the_new_epoch_on_and_the_old_key_is_refused():
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    old_key = cluster.keys["v2"]
    cluster.submit("v0", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 4)
    cluster.assert_agreement()
    for node in cluster.nodes.values():
        assert node.replica.epoch == 1 and node.replica.member
        assert node.replica.epoch_base.height == start - 1
        assert node.replica.validators.get("v2").public_key == NEW_KEY.verify_key.encode()
    # Node.append checked every certificate with its epoch's set; v2 signed with the key of each epoch.
    checked = set()
    for block in cluster.nodes["v0"].chain:
        key = NEW_KEY if block.header.height >= start else old_key
        if "v2" in {s.validator for s in block.certificate.signatures}:
            payload = codec.signing_bytes(codec.DOMAIN_COMMIT, CHAIN, block_commit_payload(block))
            key.verify_key.verify(payload, signature_of(block, "v2"))
            checked.add(key)
    assert checked == {old_key, NEW_KEY}
    # A vote for a height of the new epoch signed with the rotated-out key is refused.
    height = len(cluster.nodes["v0"].chain) + 1
    forged = sign(Prepare(0, height, bytes(32), "v2"), old_key, CHAIN)
    ready = cluster.nodes["v0"].replica.on_message("v2", encode(forged))
    assert ("v2", "bad-signature") in ready.rejected


def block_commit_payload(block):
    return commit_vote_payload(block.certificate.view, block.header.height, block.header.hash())


def test_a_restart_after_the_switch_comes_back_in_the_new_epoch_and_keeps_committing():
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    cluster.submit("v0", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 1)
    for node_id in ("v1", "v2"):
        cluster.nodes[node_id].crash()
        cluster.nodes[node_id].restart()
        replica = cluster.nodes[node_id].replica
        assert replica.epoch == 1 and replica.epoch_base.height == start - 1
        assert replica.signing_key.verify_key.encode() == replica.validators.get(node_id).public_key
    commit_past(cluster, start + 6)
    cluster.assert_agreement()


def test_a_removed_validator_stops_voting_and_the_others_go_on_without_it():
    cluster = Cluster(CONFIG, jurisdictions=("HK", "HK", "HK", "HK", "CN", "CN", "CN"), margin_heights=MARGIN)
    cluster.submit("v0", reconfigure_request(0, [RemoveValidator("v3")]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    others = [node_id for node_id in cluster.ids if node_id != "v3"]
    commit_past(cluster, start + 4, others)
    removed = cluster.nodes["v3"].replica
    assert removed.epoch == 1 and not removed.member
    for node_id in others:
        replica = cluster.nodes[node_id].replica
        assert replica.epoch == 1 and replica.validators.n == 6 and "v3" not in replica.validators
        for block in cluster.nodes[node_id].chain[start - 1:]:
            assert "v3" not in {s.validator for s in block.certificate.signatures}
    # Whatever the removed validator still sends is refused as from a stranger.
    ready = cluster.nodes["v0"].replica.on_message("v3", encode(Prepare(0, start + 5, bytes(32), "v3")))
    assert ("v3", "unknown-sender") in ready.rejected
    cluster.assert_agreement()


def test_a_reconfiguration_that_would_break_the_safety_rule_changes_nothing():
    cluster = Cluster(CONFIG, margin_heights=MARGIN)
    # Two signers per jurisdiction with f = 1 need 3 validators on each side; each has 2.
    cluster.submit("v0", reconfigure_request(0, [SetMinSigners(2)]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    commit_past(cluster, reconfiguration_height(cluster) + MARGIN + 4)
    for node in cluster.nodes.values():
        assert node.replica.epoch == 0 and len(node.replica.schedule.epochs) == 1
    cluster.assert_agreement()


def test_a_reconfiguration_for_another_epoch_is_not_one():
    cluster = Cluster(CONFIG, margin_heights=MARGIN)
    cluster.submit("v0", reconfigure_request(1, [RemoveValidator("v0")]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    commit_past(cluster, reconfiguration_height(cluster) + MARGIN + 4)
    assert all(len(node.replica.schedule.epochs) == 1 for node in cluster.nodes.values())


def test_a_validator_down_across_the_switch_catches_up_through_both_epochs_and_votes_in_the_new_one():
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    cluster.nodes["v3"].crash()
    cluster.submit("v0", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 3, ["v0", "v1", "v2"])
    cluster.nodes["v3"].restart()
    late = cluster.nodes["v3"]
    assert late.replica.epoch == 0
    # It catches up (each certificate checked with its epoch's set) and enters epoch 1 at the boundary.
    assert cluster.run_until(lambda: len(late.chain) >= start + 3)
    assert late.replica.epoch == 1
    # Then it votes: with v1 down, v0, v2 and v3 are the quorum, so new blocks need v3's signature.
    cluster.nodes["v1"].crash()
    commit_past(cluster, start + 6, ["v0", "v2", "v3"])
    assert "v3" in {s.validator for s in late.chain[-1].certificate.signatures}
    cluster.assert_agreement()


def test_an_idle_chain_fills_the_heights_to_the_new_epoch_with_empty_blocks():
    """Heights advance only with blocks: with no requests at all, the primary proposes empty ones while the
    next epoch is pending, one at a time, and stops once the new set has taken over."""
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    cluster.submit("v0", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: all(node.replica.epoch == 1 for node in cluster.nodes.values()))
    start = reconfiguration_height(cluster) + MARGIN + 1
    cluster.run(50)
    for node in cluster.nodes.values():
        assert len(node.chain) == start - 1   # the last block of epoch 0, and nothing after it
        assert all(block.entries == () for block in node.chain[reconfiguration_height(cluster):])
    cluster.assert_agreement()


def test_view_changes_on_both_sides_of_the_boundary():
    """The primary of view 0 is down: epoch 0 changes view to commit the reconfiguration and its last
    heights, and epoch 1, which starts again at view 0 with the same primary, changes view too; the
    chain goes on in epoch 1 with VIEW-CHANGEs that name their epoch."""
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    cluster.nodes["v0"].crash()
    live = ["v1", "v2", "v3"]
    cluster.submit("v1", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster, "v1") is not None)
    height = reconfiguration_height(cluster, "v1")
    start = height + MARGIN + 1
    commit_past(cluster, start + 3, live)
    for node_id in live:
        replica = cluster.nodes[node_id].replica
        assert replica.epoch == 1 and replica.view >= 1 and replica.primary_id != "v0"
    chain = cluster.nodes["v1"].chain
    assert chain[height - 1].certificate.view >= 1 and chain[start - 1].certificate.view >= 1
    assert chain[start - 1].header.epoch == 1 and chain[start - 2].header.epoch == 0
    cluster.assert_agreement()


def test_a_crash_after_the_switch_is_written_but_before_its_blocks_are_applied():
    """A lagging validator receives the blocks across the boundary in one catch-up Ready: the schedule, the
    new epoch's view and base are written with the first block, and it crashes before the others are
    applied. It restarts in the old epoch with nothing left to decide there (the written base is its
    stable checkpoint), catches up, and enters the new epoch again."""
    cluster = Cluster(CONFIG, margin_heights=MARGIN, spare_keys={"v2": (NEW_KEY,)})
    late = cluster.nodes["v3"]
    late.crash()
    commit_past(cluster, 3, ["v0", "v1", "v2"])   # so the reconfiguration's block is not the first
    cluster.submit("v0", reconfigure_request(0, [RotateValidatorKey("v2", NEW_KEY.verify_key.encode())]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 3, ["v0", "v1", "v2"])
    late.crash_after_persist = True
    late.restart()
    assert cluster.run_until(lambda: not late.up)
    # The first block rode in the write; the rest, the reconfiguration's block among them, were lost.
    assert 0 < len(late.chain) < reconfiguration_height(cluster)
    late.restart()
    assert late.replica.epoch == 0 and late.replica._epoch_decided()
    assert late.replica.stable.height == start - 1
    assert cluster.run_until(lambda: len(late.chain) >= start + 3 and late.replica.epoch == 1)
    cluster.nodes["v1"].crash()                   # v3 is needed for a quorum now
    commit_past(cluster, start + 6, ["v0", "v2", "v3"])
    cluster.assert_agreement()


def test_a_validator_added_later_catches_up_from_genesis_and_votes_from_its_epoch():
    """v4 is in no set at genesis: it runs with joining=True and is refused until the others know it.
    Once the reconfiguration that adds it commits, it replays the chain (each certificate checked with
    its epoch's set), enters epoch 1 as a member, and its vote counts: with v1 down, 4 of 5 are needed."""
    cluster = Cluster(CONFIG, margin_heights=MARGIN, joiners=1)
    joiner = cluster.nodes["v4"]
    assert not joiner.replica.member
    key = cluster.keys["v4"].verify_key.encode()
    cluster.submit("v0", reconfigure_request(0, [AddValidator(Validator("v4", key, "HK"))]))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 2, ["v0", "v1", "v2", "v3"])
    assert cluster.run_until(lambda: len(joiner.chain) >= start + 2)
    assert joiner.replica.epoch == 1 and joiner.replica.member
    cluster.nodes["v1"].crash()
    commit_past(cluster, start + 5, ["v0", "v2", "v3", "v4"])
    assert "v4" in {s.validator for s in joiner.chain[-1].certificate.signatures}
    cluster.assert_agreement()


def test_a_validator_that_is_in_no_set_must_say_it_is_joining():
    cluster = Cluster(CONFIG, margin_heights=MARGIN)
    stranger = nacl.signing.SigningKey(bytes([201]) * 32)
    with pytest.raises(ValueError, match="joining=True"):
        Replica(CONFIG, cluster.vset, "v9", stranger, CHAIN, TrivialApp(), margin_heights=MARGIN)


def test_an_epoch_that_changes_only_the_application_data_keeps_the_set_and_switches():
    """The ledger's regulator keys ride in an epoch's application data: a reconfiguration of only those
    opens an epoch with the same validators, which every replica enters and keeps committing in; a
    restart keeps the data."""
    cluster = Cluster(CONFIG, margin_heights=MARGIN)
    cluster.submit("v0", reconfigure_request(0, [], application=b"regulators v2"))
    assert cluster.run_until(lambda: reconfiguration_height(cluster) is not None)
    start = reconfiguration_height(cluster) + MARGIN + 1
    commit_past(cluster, start + 3)
    for node in cluster.nodes.values():
        assert node.replica.epoch == 1 and node.replica.schedule.latest.application == b"regulators v2"
        assert node.replica.validators == node.replica.schedule.epochs[0].validators
        assert node.chain[start - 1].header.epoch == 1
    cluster.nodes["v1"].crash()
    cluster.nodes["v1"].restart()
    assert cluster.nodes["v1"].replica.schedule.latest.application == b"regulators v2"
    # The same data again changes nothing: no epoch.
    cluster.submit("v0", reconfigure_request(1, [], nonce=b"again", application=b"regulators v2"))
    commit_past(cluster, start + 3 + 2 * MARGIN)
    assert all(len(node.replica.schedule.epochs) == 2 for node in cluster.nodes.values())
