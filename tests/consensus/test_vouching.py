"""Who checks request signatures (docs/CONSENSUS.md, "Who checks signatures").

In view 0 of the 4-validator test cluster (f = 1) the primary v0 and the backup after it, v1,
check every request's signature; v2 and v3 check only their own clients' requests and prepare a
block on the word of f + 1 validators: v0's proposal plus a PREPARE from a backup other than
themselves. These tests count the signature checks each replica makes and show that an invalid
request still never commits, that a silent checker costs only `vouch_wait_ms`, and that junk a
faulty peer gossips is never forwarded, proposed or blamed on the primary.
"""

from __future__ import annotations

import collections

import pytest

from consensus.handlers.normal_case import VOUCH_FALLBACK_HOLD_MS
from consensus.messages import PrePrepare, Requests, decode_message, encode, sign
from consensus.replica import ReplicaConfig, ReplicaConfigError

from tests.support.replica_cluster import CHAIN, TICK_MS, Cluster, TrivialApp, all_committed, build_block, kind_of


class CountingApp(TrivialApp):
    """TrivialApp whose "signature" is the b"ok:" prefix; counts full and shape-only checks."""

    def __init__(self) -> None:
        self.full = collections.Counter()
        self.shape = collections.Counter()

    def check_request(self, request: bytes) -> str | None:
        self.full[request] += 1
        return super().check_request(request)

    def check_request_shape(self, request: bytes) -> str | None:
        self.shape[request] += 1
        return None


def counted_cluster(**config) -> tuple[Cluster, dict[str, CountingApp]]:
    settings = dict(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200, checkpoint_interval=4,
                    watermark_window=8, catch_up_timeout_ms=200)
    settings.update(config)
    cluster = Cluster(ReplicaConfig(**settings))
    apps = {}
    for node_id, node in cluster.nodes.items():
        node.replica.app = apps[node_id] = CountingApp()
    return cluster, apps


def test_backups_after_the_checkers_prepare_on_vouchers_without_checking_signatures():
    cluster, apps = counted_cluster()
    requests = [f"ok:{i}".encode() for i in range(12)]
    for request in requests:
        cluster.submit("v0", request)          # the primary's client: checked there, forwarded to all
    assert cluster.run_until(lambda: all_committed(cluster, requests), 200)
    cluster.assert_agreement()
    for request in requests:
        assert apps["v0"].full[request] >= 1 and apps["v1"].full[request] >= 1
        assert apps["v2"].full[request] == 0 and apps["v3"].full[request] == 0
        assert apps["v2"].shape[request] >= 1 and apps["v3"].shape[request] >= 1
    assert all(node.replica.view == 0 for node in cluster.nodes.values())


def test_a_replica_always_checks_its_own_clients_requests():
    cluster, apps = counted_cluster()
    cluster.submit("v2", b"ok:mine")
    cluster.submit("v2", b"bad:mine")
    assert ("client", "invalid-request:not-ok") in cluster.nodes["v2"].rejected
    assert apps["v2"].full[b"ok:mine"] == 1
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:mine"]), 200)


def test_vouch_wait_ms_zero_makes_every_replica_check_every_request():
    cluster, apps = counted_cluster(vouch_wait_ms=0)
    requests = [f"ok:{i}".encode() for i in range(6)]
    for request in requests:
        cluster.submit("v0", request)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 200)
    for node_id in cluster.ids:
        assert all(apps[node_id].full[r] >= 1 for r in requests), node_id
        assert not apps[node_id].shape


def test_the_roles_move_with_the_view():
    cluster, _ = counted_cluster()
    checks = {node_id: node.replica._checks_signatures() for node_id, node in cluster.nodes.items()}
    assert checks == {"v0": True, "v1": True, "v2": False, "v3": False}
    replica = cluster.nodes["v3"].replica
    replica.view = 3                            # v3 leads view 3, v0 follows it
    assert replica._checks_signatures()
    replica = cluster.nodes["v0"].replica
    replica.view = 3
    assert replica._checks_signatures()
    replica = cluster.nodes["v1"].replica
    replica.view = 3
    assert not replica._checks_signatures()


def test_with_the_checking_backup_down_the_others_check_after_vouch_wait_ms():
    cluster, apps = counted_cluster(vouch_wait_ms=100)
    cluster.nodes["v1"].crash()
    cluster.submit("v0", b"ok:1")
    cluster.run(5)                              # 50 ms: v2 and v3 still wait for a voucher
    assert not cluster.nodes["v2"].chain and apps["v2"].full[b"ok:1"] == 0
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"], ["v0", "v2", "v3"]), 100)
    assert apps["v2"].full[b"ok:1"] == 1 and apps["v3"].full[b"ok:1"] == 1
    assert cluster.nodes["v2"].replica.vouch_fallbacks == 1
    # Having waited in vain once, they check at once for VOUCH_FALLBACK_HOLD_MS instead of waiting per block.
    assert cluster.nodes["v2"].replica.checks_signatures
    cluster.submit("v0", b"ok:2")
    cluster.run(2)
    assert all_committed(cluster, [b"ok:2"], ["v0", "v2", "v3"])
    assert all(node.replica.view == 0 for node in cluster.nodes.values() if node.up)
    # Then they rely on vouchers again (v1 is back).
    cluster.nodes["v1"].restart()
    cluster.run(VOUCH_FALLBACK_HOLD_MS // TICK_MS)
    assert not cluster.nodes["v2"].replica._checks_signatures()
    cluster.submit("v0", b"ok:3")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:3"]), 100)
    assert apps["v2"].full[b"ok:3"] == 0


def test_the_vouch_wait_is_capped_at_half_the_view_timeout():
    """A vouch wait longer than the view timeout would turn a down checker into a view change: the
    wait applied is at most half of it, so with v1 down the others check well before v0 times out."""
    assert ReplicaConfig(vouch_wait_ms=1000, view_timeout_ms=400).vouch_wait_applied_ms == 200
    assert ReplicaConfig(vouch_wait_ms=100, view_timeout_ms=400).vouch_wait_applied_ms == 100
    assert ReplicaConfig().vouch_wait_applied_ms == ReplicaConfig().vouch_wait_ms   # the defaults fit
    cluster, apps = counted_cluster(vouch_wait_ms=1000, view_timeout_ms=400)
    cluster.nodes["v1"].crash()
    cluster.submit("v0", b"ok:1")
    cluster.run(15)                             # 150 ms: v2 and v3 still wait for a voucher
    assert apps["v2"].full[b"ok:1"] == 0
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"], ["v0", "v2", "v3"]), 20)   # by 350 ms
    assert apps["v2"].full[b"ok:1"] == 1 and cluster.nodes["v2"].replica.vouch_fallbacks == 1
    assert all(node.replica.view == 0 for node in cluster.nodes.values() if node.up)


def test_a_faulty_primary_cannot_commit_an_invalid_request_that_no_one_checked():
    """v0 proposes a block holding an invalid request. v1 checks and refuses it; v2 and v3 get no
    voucher besides v0, check it themselves after vouch_wait_ms, and refuse it too."""
    cluster, apps = counted_cluster(vouch_wait_ms=100)
    bad_entries = (b"ok:1", b"bad:forged")

    def tamper(sender, target, data):
        if sender == "v0" and kind_of(data) == "pre-prepare":
            message = decode_message(data, cluster.vset, CHAIN)
            if message.view == 0 and message.height == 1:
                header = build_block(cluster, 1, None, bad_entries, message.header.time_ms)
                return [encode(sign(PrePrepare(0, header, bad_entries, "v0"), cluster.keys["v0"], CHAIN))]
        return [data]

    cluster.tamper = tamper
    cluster.submit("v0", b"ok:1")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"], ["v1", "v2", "v3"]), 2000)
    for node_id in ("v1", "v2", "v3"):
        assert b"bad:forged" not in cluster.committed_requests(node_id)
        assert ("v0", "bad-proposal") in cluster.nodes[node_id].rejected, node_id
        assert cluster.nodes[node_id].replica.view >= 1
        assert apps[node_id].full[b"bad:forged"] >= 1, node_id
    cluster.assert_agreement()


def test_junk_from_a_peer_is_never_forwarded_proposed_or_blamed_on_the_primary():
    cluster, apps = counted_cluster(vouch_wait_ms=100)
    junk = encode(Requests((b"bad:junk",)))
    replica = cluster.nodes["v2"].replica
    assert replica.on_message("v1", junk).rejected == []    # pooled on its shape alone
    assert replica.pending_request_count == 1
    forwarded = []
    original_send = cluster.nodes["v2"].send

    def watch(out):
        if kind_of(out.data) == "requests":
            forwarded.extend(decode_message(out.data, cluster.vset, CHAIN).requests)
        original_send(out)

    cluster.nodes["v2"].send = watch
    cluster.run(120)                            # past the view timeout and several retransmissions
    assert replica.pending_request_count == 0   # checked before blaming the primary, and dropped
    assert apps["v2"].full[b"bad:junk"] == 1
    assert b"bad:junk" not in forwarded
    assert all(node.replica.view == 0 for node in cluster.nodes.values())
    assert not any(b"bad:junk" in block.entries for node in cluster.nodes.values() for block in node.chain)


def test_unproposed_junk_is_checked_and_dropped_before_blaming_the_primary():
    """With no retransmission before the view timeout, only the censorship rule sees the junk."""
    cluster, apps = counted_cluster(vouch_wait_ms=100, retransmit_ms=60_000)
    replica = cluster.nodes["v2"].replica
    replica.on_message("v1", encode(Requests((b"bad:junk",))))
    cluster.run(80)                             # 800 ms: past the 500 ms view timeout
    assert apps["v2"].full[b"bad:junk"] == 1 and replica.pending_request_count == 0
    assert all(node.replica.view == 0 for node in cluster.nodes.values())


def test_unchecked_requests_fill_at_most_half_the_pool():
    cluster, apps = counted_cluster(request_pool_max=4, batch_wait_ms=10_000, batch_requests_max=10)
    replica = cluster.nodes["v2"].replica
    assert replica.on_message("v1", encode(Requests((b"bad:1", b"bad:2")))).rejected == []
    assert apps["v2"].full[b"bad:1"] == 0
    # From half the pool on, a peer's requests are checked before they are pooled.
    assert replica.on_message("v1", encode(Requests((b"bad:3", b"ok:4")))).rejected == [
        ("v1", "invalid-request:not-ok")]
    assert apps["v2"].full[b"bad:3"] == 1 and apps["v2"].full[b"ok:4"] == 1
    assert replica.pending_request_count == 3


def test_a_primary_checks_what_it_pooled_unchecked_before_proposing_it():
    """v2 pooled a junk request and a valid one unchecked while a backup; leading (view 2), it
    proposes only the valid one and drops the junk."""
    cluster, apps = counted_cluster(vouch_wait_ms=100)
    replica = cluster.nodes["v2"].replica
    replica.on_message("v1", encode(Requests((b"bad:junk", b"ok:kept"))))
    assert apps["v2"].full[b"ok:kept"] == 0 and replica.pending_request_count == 2
    replica.view = 2                            # as after two view changes, alone: only its output matters
    replica._proposal_queue = None
    ready = replica.on_tick(cluster.now_ms + 10)
    proposals = [decode_message(out.data, cluster.vset, CHAIN) for out in ready.messages + sum(
        (batch for batch in replica._held), []) if kind_of(out.data) == "pre-prepare"]
    assert [p.entries for p in proposals] == [(b"ok:kept",)]
    assert apps["v2"].full[b"bad:junk"] == 1 and apps["v2"].full[b"ok:kept"] == 1
    assert replica.pending_request_count == 1


def test_vouch_wait_ms_is_checked():
    ReplicaConfig(vouch_wait_ms=0)
    with pytest.raises(ReplicaConfigError, match="vouch_wait_ms"):
        ReplicaConfig(vouch_wait_ms=-1)
