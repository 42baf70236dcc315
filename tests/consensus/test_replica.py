"""The replica in a small deterministic cluster: 4 validators (2 HK, 2 CN), a trivial Application, a FIFO network.

Each test drives the real Replica through its public inputs and carries out
every Ready exactly as a host must (persist, on_persisted, send, apply, serve
catch-up), then checks what the replicas committed and signed.
"""

from __future__ import annotations

import pytest

from consensus import codec
from consensus.messages import (
    CatchUpRequest, PrePrepare, Prepare, Requests, ViewChange, decode_message, encode, sign,
)
from consensus.replica import Replica, ReplicaConfig, ReplicaConfigError, encode_catch_up_response
from consensus.timeouts import Timer
from consensus.vote_log import KEY_BODY, KEY_CERT, KEY_VOTE
from tests.support.replica_cluster import (
    CHAIN, START_MS, Cluster, Node, TrivialApp, all_committed, build_block, kind_of, make_validators,
)


def test_normal_case_commits_every_request_in_order_with_certificates():
    """Requests submitted to different replicas all commit on every replica, with the same blocks."""
    cluster = Cluster()
    requests = [f"ok:{i}".encode() for i in range(30)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[i % 4], request)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 200)
    cluster.assert_agreement()
    assert all(n.replica.view == 0 for n in cluster.nodes.values())
    # Checkpoints became stable and truncated the persisted log.
    node = cluster.nodes["v1"]
    assert node.replica.stable.height >= 4
    vote_heights = [int.from_bytes(k[len(KEY_VOTE):], "big") for k in node.persisted if k.startswith(KEY_VOTE)]
    assert all(h > node.replica.stable.height for h in vote_heights)
    body_heights = [int.from_bytes(k[len(KEY_BODY):len(KEY_BODY) + 8], "big") for k in node.persisted if k.startswith(KEY_BODY)]
    assert all(h > node.replica.stable.height for h in body_heights)


def test_a_block_is_persisted_once_however_many_records_refer_to_it():
    """Every replica's vote, its prepared certificate and (on the primary) its proposal refer to one
    stored copy of the block's entries; a replica restarted from that state has the block back."""
    cluster = Cluster()
    request = b"ok:" + b"x" * 200
    cluster.submit("v0", request)
    assert cluster.run_until(lambda: all_committed(cluster, [request]), 200)
    for node_id, node in cluster.nodes.items():
        holding = [k for k, v in node.persisted.items() if request in v]
        assert len(holding) == 1 and holding[0].startswith(KEY_BODY), (node_id, holding)
        assert any(k.startswith(KEY_CERT) for k in node.persisted) and any(k.startswith(KEY_VOTE) for k in node.persisted)
    node = cluster.nodes["v1"]
    node.crash()
    node.restart()
    [certificate] = node.replica.certs.values()
    assert node.replica._known_body(certificate.height, certificate.header.hash()) == (request,)


def test_invalid_request_is_refused_and_never_committed():
    cluster = Cluster()
    cluster.submit("v1", b"bad:1")
    cluster.submit("v1", b"ok:1")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"]), 200)
    assert ("client", "invalid-request:not-ok") in cluster.nodes["v1"].rejected
    assert b"bad:1" not in cluster.committed_requests("v0")


def test_silent_primary_triggers_view_change_and_commits_continue():
    """The primary of view 0 crashes; the others move to view 1 and commit every request."""
    cluster = Cluster()
    cluster.submit("v1", b"ok:before")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:before"]), 200)
    cluster.nodes["v0"].crash()
    requests = [f"ok:{i}".encode() for i in range(10)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[1 + i % 3], request)
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, requests, live), 2000)
    assert all(cluster.nodes[n].replica.view >= 1 for n in live)
    cluster.assert_agreement()


def test_equivocating_primary_yields_evidence_and_a_view_change():
    """v0 signs two different blocks for (view 0, height 1); v1 sees both, reports them and leads a view change."""
    cluster = Cluster()
    other_entries = (b"ok:other",)
    forged = {}

    def tamper(sender, target, data):
        if sender == "v0" and kind_of(data) == "pre-prepare" and target in ("v1", "v2"):
            message = decode_message(data, cluster.vset, CHAIN)
            if message.view == 0 and message.height == 1:
                if "b" not in forged:
                    header = build_block(cluster, 1, None, other_entries, message.header.time_ms)
                    forged["b"] = encode(sign(PrePrepare(0, header, other_entries, "v0"), cluster.keys["v0"], CHAIN))
                return [data, forged["b"]] if target == "v1" else [forged["b"]]
        return [data]

    cluster.tamper = tamper
    requests = [b"ok:1", b"ok:2"]
    for request in requests:
        cluster.submit("v3", request)
    assert cluster.run_until(lambda: all_committed(cluster, requests, ["v1", "v2", "v3"]), 2000)
    evidence = cluster.nodes["v1"].evidence
    assert evidence and evidence[0].validator == "v0" and evidence[0].kind == "pre-prepare"
    first, second = (decode_message(e, cluster.vset, CHAIN) for e in (evidence[0].first, evidence[0].second))
    assert (first.view, first.height) == (second.view, second.height) and first.header != second.header
    assert cluster.nodes["v1"].replica.view >= 1
    cluster.assert_agreement()


def test_restart_from_persisted_state_never_signs_a_conflicting_vote():
    """v1 prepares block A at (0, 1) and crashes right after persisting; restarted, it is offered a
    different block B for the same slot by the (faulty) primary and must not prepare it."""
    cluster = Cluster()
    cluster.nodes["v1"].crash_after_persist = True
    held_back = []
    cluster.drop = lambda s, t, d: (s == "v0" and t in ("v2", "v3") and kind_of(d) == "pre-prepare"
                                    and not held_back.append((t, d)))
    cluster.submit("v0", b"ok:a")
    cluster.run(3)
    node = cluster.nodes["v1"]
    assert not node.up and any(k.startswith(KEY_VOTE) for k in node.persisted)
    node.restart()
    cluster.drop = lambda s, t, d: False
    header = build_block(cluster, 1, None, (b"ok:b",), START_MS)
    forged = encode(sign(PrePrepare(0, header, (b"ok:b",), "v0"), cluster.keys["v0"], CHAIN))
    ready = node.replica.on_message("v0", forged)
    assert ("v0", "bad-proposal") in ready.rejected
    node.handle(ready)  # Node.send asserts that no two different blocks are signed for one slot
    for target, data in held_back:
        cluster.nodes[target].handle(cluster.nodes[target].replica.on_message("v0", data))
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:a"], ["v1", "v2", "v3"]), 3000)
    assert b"ok:b" not in cluster.committed_requests("v1")
    cluster.assert_agreement()


def test_primary_crash_mid_batch_restarts_and_re_proposes_the_same_block():
    """The primary persists its PRE-PREPARE and crashes before sending it; after restart it sends that same block."""
    cluster = Cluster()
    primary = cluster.nodes["v0"]
    primary.crash_after_persist = True
    cluster.submit("v0", b"ok:1")
    assert not primary.up
    persisted_vote = codec.unpack(primary.persisted[KEY_VOTE + (1).to_bytes(8, "big")])
    primary.restart()
    cluster.submit("v0", b"ok:2")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1", b"ok:2"]), 2000)
    first = cluster.nodes["v2"].chain[0]
    assert first.header.to_wire() == persisted_vote["header"]
    cluster.assert_agreement()


def test_lagging_replica_catches_up_with_verified_certificates():
    """v3 is down while 40 requests commit in many blocks past several checkpoints; restarted, it catches up."""
    cluster = Cluster(ReplicaConfig(batch_requests_max=2, batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200,
                                    checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200))
    lagging = cluster.nodes["v3"]
    lagging.crash()
    requests = [f"ok:{i}".encode() for i in range(40)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[i % 3], request)
    assert cluster.run_until(lambda: all_committed(cluster, requests, ["v0", "v1", "v2"]), 3000)
    assert len(cluster.nodes["v0"].chain) >= 20
    lagging.restart()
    assert cluster.run_until(lambda: all_committed(cluster, requests), 3000)
    assert lagging.replica.last_applied_height == cluster.nodes["v0"].replica.last_applied_height
    # It takes part again: new requests commit with it in the quorum.
    cluster.nodes["v0"].crash()
    more = [b"ok:after-1", b"ok:after-2"]
    for request in more:
        cluster.submit("v3", request)
    assert cluster.run_until(lambda: all_committed(cluster, more, ["v1", "v2", "v3"]), 3000)
    cluster.assert_agreement()


def test_catch_up_response_with_a_bad_certificate_is_rejected():
    cluster = Cluster()
    cluster.submit("v0", b"ok:1")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"]), 200)
    block = cluster.nodes["v0"].chain[0]
    fresh = Node(cluster, "v3")
    fresh.chain, fresh.persisted = [], {}
    fresh.start()
    bad = type(block)(block.header, block.entries, type(block.certificate)(
        block.certificate.view, 1, block.certificate.header_hash, block.certificate.signatures[:2]))
    ready = fresh.replica.on_message("v0", encode_catch_up_response([bad]))
    assert ready.rejected == [("v0", "bad-certificate")] and not ready.committed
    ready = fresh.replica.on_message("v0", encode_catch_up_response([block]))
    assert [b.header.height for b in ready.committed] == [1]


def test_checkpoint_during_view_change():
    """Checkpoint votes are lost until the primary dies; they become stable while the view changes."""
    cluster = Cluster()
    changing = lambda: any(n.replica.view > 0 for n in cluster.nodes.values())
    cluster.drop = lambda s, t, d: kind_of(d) == "checkpoint" and not changing()
    requests = [f"ok:{i}".encode() for i in range(6)]
    for request in requests:
        cluster.submit("v0", request)
        cluster.run(2)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 500)
    assert all(n.replica.stable.height == 0 for n in cluster.nodes.values())
    cluster.nodes["v0"].crash()
    more = [b"ok:x", b"ok:y"]
    for request in more:
        cluster.submit("v2", request)
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, more, live)
                             and all(cluster.nodes[n].replica.stable.height >= 4 for n in live), 3000)
    assert all(cluster.nodes[n].replica.view >= 1 for n in live)
    cluster.assert_agreement()


def test_partition_that_heals():
    """2 | 2 split: no quorum on either side, so nothing commits; after healing everything commits."""
    cluster = Cluster()
    split = {"v0": 0, "v1": 0, "v2": 1, "v3": 1}
    healed = []
    cluster.drop = lambda s, t, d: not healed and split[s] != split[t]
    requests = [f"ok:{i}".encode() for i in range(8)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[i % 4], request)
    cluster.run(300)
    assert all(len(n.chain) == 0 for n in cluster.nodes.values())
    healed.append(True)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 5000)
    cluster.assert_agreement()


def test_garbage_and_forgeries_are_rejected_with_reasons():
    cluster = Cluster()
    replica = cluster.nodes["v1"].replica
    assert replica.on_message("v2", b"\xc1garbage").rejected == [("v2", "bad-encoding")]
    assert replica.on_message("stranger", b"").rejected == [("stranger", "unknown-sender")]
    prepare = encode(sign(Prepare(0, 1, bytes(32), "v2"), cluster.keys["v2"], CHAIN))
    assert replica.on_message("v3", prepare).rejected == [("v3", "sender-mismatch")]
    forged = encode(sign(Prepare(0, 1, bytes(32), "v2"), cluster.keys["v3"], CHAIN))
    assert replica.on_message("v2", forged).rejected == [("v2", "bad-signature")]
    far = encode(sign(Prepare(0, 10_000, bytes(32), "v2"), cluster.keys["v2"], CHAIN))
    assert replica.on_message("v2", far).rejected == [("v2", "outside-window")]
    future = encode(sign(Prepare(7, 1, bytes(32), "v2"), cluster.keys["v2"], CHAIN))
    assert replica.on_message("v2", future).rejected == [("v2", "wrong-view")]


def test_request_pool_refuses_at_its_limit():
    cluster = Cluster(ReplicaConfig(request_pool_max=3, batch_wait_ms=10_000, batch_requests_max=10))
    replica = cluster.nodes["v1"].replica
    for i in range(3):
        assert replica.on_request(f"ok:{i}".encode()).rejected == []
    assert replica.on_request(b"ok:3").rejected == [("client", "request-pool-full")]
    assert replica.on_request(b"ok:0").rejected == []  # a duplicate is dropped silently
    assert replica.pending_request_count == 3


def test_config_is_checked():
    with pytest.raises(ReplicaConfigError, match="watermark_window"):
        ReplicaConfig(checkpoint_interval=8, watermark_window=15)
    with pytest.raises(ReplicaConfigError, match="batch_requests_max"):
        ReplicaConfig(batch_requests_max=0)


def test_config_upper_limits_at_their_edges():
    """The config may not outgrow what one message carries: a block's requests, a VIEW-CHANGE's certificates."""
    from consensus.messages import BLOCK_REQUESTS_MAX, PREPARED_CERTIFICATES_MAX

    ReplicaConfig(batch_requests_max=BLOCK_REQUESTS_MAX)
    with pytest.raises(ReplicaConfigError, match="batch_requests_max must be at most 4096"):
        ReplicaConfig(batch_requests_max=BLOCK_REQUESTS_MAX + 1)
    ReplicaConfig(watermark_window=PREPARED_CERTIFICATES_MAX)
    with pytest.raises(ReplicaConfigError, match="watermark_window must be at most 1024"):
        ReplicaConfig(watermark_window=PREPARED_CERTIFICATES_MAX + 1)
    # A request must reach the other backups well inside a view timeout (censorship detection).
    assert ReplicaConfig(view_timeout_ms=2000, forward_others_after_ms=500).forward_others_delay_ms == 500
    assert ReplicaConfig(view_timeout_ms=2000, forward_others_after_ms=501).forward_others_delay_ms == 500
    with pytest.raises(ReplicaConfigError, match="forward_others_after_ms must be a non-negative integer"):
        ReplicaConfig(forward_others_after_ms=-1)


def test_whole_cluster_restart_still_refuses_a_committed_request():
    """F1 (FINDINGS.md): after every replica restarts from persisted state, a client's retry of a request
    that already committed is dropped, not committed a second time."""
    cluster = Cluster()
    cluster.submit("v1", b"ok:once")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:once"]), 200)
    for node in cluster.nodes.values():
        node.crash()
    for node in cluster.nodes.values():
        node.restart()
    cluster.submit("v0", b"ok:once")
    cluster.submit("v0", b"ok:next")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:next"]), 500)
    cluster.assert_agreement()


def test_a_replica_left_in_an_old_view_adopts_a_relayed_new_view():
    """F3 (FINDINGS.md): v3 misses the NEW-VIEW of view 1 from its primary; another replica relays it."""
    cluster = Cluster()
    cluster.nodes["v0"].crash()
    cluster.drop = lambda s, t, d: t == "v3" and s == "v1" and kind_of(d) == "new-view"
    for request in (b"ok:1", b"ok:2"):
        cluster.submit("v2", request)
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1", b"ok:2"], ["v1", "v2", "v3"]), 3000)
    assert cluster.nodes["v3"].replica.view_active and cluster.nodes["v3"].replica.view == 1
    assert not [r for r in cluster.nodes["v3"].rejected if r[1] == "sender-mismatch"]
    cluster.assert_agreement()


def test_catch_up_response_past_our_height_makes_us_fetch_the_gap():
    cluster = Cluster()
    for request in (b"ok:1", b"ok:2"):
        cluster.submit("v0", request)
        cluster.run(5)
    chain = cluster.nodes["v0"].chain
    assert len(chain) >= 2
    fresh = Node(cluster, "v3")
    fresh.chain, fresh.persisted = [], {}
    fresh.start()
    ready = fresh.replica.on_message("v1", encode_catch_up_response(chain[1:2]))
    assert not ready.rejected and not ready.committed
    requests = [decode_message(m.data, cluster.vset, CHAIN) for m in ready.messages if m.to == "v1"]
    assert [(r.from_height, r.to_height) for r in requests] == [(1, 2)]


def test_view_change_timer_doubles_and_lone_views_do_not_run_away():
    """7 validators (f = 2); the primaries of views 0 and 1 are down. View 1 fails, so a replica waits
    twice the timeout in it before moving to view 2, where v2 leads and commits resume. The simulated
    clock is the only clock here."""
    config = ReplicaConfig(batch_wait_ms=0, view_timeout_ms=400, retransmit_ms=100, checkpoint_interval=4,
                           watermark_window=8, catch_up_timeout_ms=200)
    cluster = Cluster(config, jurisdictions=("HK", "HK", "HK", "CN", "CN", "CN", "CN"))
    sent = []
    node = cluster.nodes["v4"]
    original_send = node.send

    def recording_send(out):
        message = decode_message(out.data, cluster.vset, CHAIN, verify=False)
        if isinstance(message, ViewChange) and (message.view, ) not in [(v,) for _, v in sent]:
            sent.append((cluster.now_ms, message.view))
        original_send(out)

    node.send = recording_send
    cluster.nodes["v0"].crash()
    cluster.nodes["v1"].crash()
    cluster.submit("v4", b"ok:1")
    live = ["v2", "v3", "v4", "v5", "v6"]
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"], live), 5000)
    views = [v for _, v in sent]
    assert views[:2] == [1, 2]
    (t1, _), (t2, _) = sent[:2]
    assert t2 - t1 >= 2 * config.view_timeout_ms
    assert all(cluster.nodes[n].replica.view == 2 for n in live)
    cluster.assert_agreement()


def test_f_plus_one_view_changes_pull_a_replica_along():
    """A replica that has seen no fault itself joins a view change once f + 1 others ask for a higher view."""
    cluster = Cluster()
    replica = cluster.nodes["v3"].replica
    vc = sign(ViewChange(2, replica.stable, (), "v1"), cluster.keys["v1"], CHAIN)
    replica.on_message("v1", encode(vc))
    assert replica.view == 0  # one validator (maybe faulty) is not enough
    vc = sign(ViewChange(5, replica.stable, (), "v0"), cluster.keys["v0"], CHAIN)
    ready = replica.on_message("v0", encode(vc))
    # f + 1 = 2 validators are above view 0; the lowest view both have reached is 2.
    assert replica.view == 2 and not replica.view_active
    assert ready.persist and not ready.messages  # the VIEW-CHANGE waits for its state to be written
    released = replica.on_persisted()
    assert [kind_of(m.data) for m in released.messages] == ["view-change"]
    # With a quorum (v1, v3 at 2 and v0 at 5) the primary of view 2 (v2) would send NEW-VIEW; v3 stays waiting.
    vc = sign(ViewChange(2, replica.stable, (), "v2"), cluster.keys["v2"], CHAIN)
    replica.on_message("v2", encode(vc))
    assert replica.view == 2 and not replica.view_active


def test_a_prepared_block_survives_the_view_change_at_its_height():
    """Block A is prepared everywhere in view 0 but no COMMIT gets through; the primary dies. The NEW-VIEW
    must re-propose A at height 1 (not a fresh block), and A commits with a view-1 certificate."""
    cluster = Cluster()
    cluster.drop = lambda s, t, d: kind_of(d) == "commit"
    cluster.submit("v0", b"ok:a")
    cluster.run(10)
    assert all(1 in n.replica.certs for n in cluster.nodes.values())
    prepared_hash = cluster.nodes["v1"].replica.certs[1].header.hash()
    cluster.nodes["v0"].crash()
    # The view-0 COMMITs stay lost (their retransmissions too): only the view change can finish A.
    cluster.drop = lambda s, t, d: kind_of(d) == "commit" and codec.unpack(d)["view"] == 0
    cluster.submit("v2", b"ok:b")
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:a", b"ok:b"], live), 3000)
    for n in live:
        first = cluster.nodes[n].chain[0]
        assert first.header.hash() == prepared_hash and first.certificate.view >= 1
    cluster.assert_agreement()


def test_watermark_window_and_batch_size_at_their_edges():
    config = ReplicaConfig(batch_requests_max=3, batch_wait_ms=0, checkpoint_interval=4, watermark_window=8)
    cluster = Cluster(config)
    replica = cluster.nodes["v1"].replica
    top = replica.stable.height + config.watermark_window
    at_edge = encode(sign(Prepare(0, top, bytes(32), "v2"), cluster.keys["v2"], CHAIN))
    assert replica.on_message("v2", at_edge).rejected == []
    past_edge = encode(sign(Prepare(0, top + 1, bytes(32), "v2"), cluster.keys["v2"], CHAIN))
    assert replica.on_message("v2", past_edge).rejected == [("v2", "outside-window")]
    # The primary never builds a block above batch_requests_max ...
    requests = [f"ok:{i}".encode() for i in range(7)]
    for request in requests:
        cluster.submit("v1", request)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 500)
    assert max(len(b.entries) for b in cluster.nodes["v0"].chain) == 3
    # ... and a backup refuses one that is, as a faulty primary.
    parent = cluster.nodes["v1"].chain[-1].header
    entries = (b"ok:x1", b"ok:x2", b"ok:x3", b"ok:x4")
    header = build_block(cluster, parent.height + 1, parent, entries, parent.time_ms)
    oversized = encode(sign(PrePrepare(0, header, entries, "v0"), cluster.keys["v0"], CHAIN))
    ready = replica.on_message("v0", oversized)
    assert ("v0", "bad-proposal") in ready.rejected and replica.view == 1


def test_message_size_limit_at_its_edge():
    from consensus.messages import MESSAGE_BYTES_MAX
    cluster = Cluster()
    replica = cluster.nodes["v1"].replica
    assert replica.on_message("v2", b"\x80" + bytes(MESSAGE_BYTES_MAX)).rejected == [("v2", "too-large")]
    assert replica.on_message("v2", bytes(MESSAGE_BYTES_MAX)).rejected == [("v2", "bad-encoding")]


def test_host_can_ask_whether_a_request_is_already_committed():
    cluster = Cluster()
    cluster.submit("v1", b"ok:1")
    assert cluster.nodes["v1"].replica.is_pending(codec.sha256(b"ok:1"))      # pooled, not committed yet
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"]), 200)
    assert cluster.nodes["v2"].replica.is_committed(b"ok:1")
    assert not cluster.nodes["v2"].replica.is_committed(b"ok:2")
    assert not any(node.replica.is_pending(codec.sha256(b"ok:1")) for node in cluster.nodes.values())
    status = cluster.nodes["v2"].replica.snapshot()
    assert status.pending_request_count == 0 and status.last_applied_height >= 1


def test_construction_refuses_an_inconsistent_setup():
    vset, keys = make_validators()
    config = ReplicaConfig()
    with pytest.raises(ValueError, match="not in the validator set"):
        Replica(config, vset, "v9", keys["v0"], CHAIN, TrivialApp())
    with pytest.raises(ValueError, match="does not match"):
        Replica(config, vset, "v0", keys["v1"], CHAIN, TrivialApp())
    header = build_block(Cluster(), 1, None, (b"ok:1",), START_MS)
    with pytest.raises(ValueError, match="last_applied"):
        Replica(config, vset, "v0", keys["v0"], CHAIN, TrivialApp(), last_applied=(2, header))
    with pytest.raises(ValueError, match="unreadable"):
        Replica(config, vset, "v0", keys["v0"], CHAIN, TrivialApp(), persisted={b"view": b"\xc1"})


def test_catch_up_requests_are_served_at_most_once_per_interval_per_peer():
    cluster = Cluster(ReplicaConfig(batch_wait_ms=0, catch_up_serve_interval_ms=10))
    cluster.submit("v0", b"ok:1")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"]), 200)
    replica = cluster.nodes["v0"].replica
    request = encode(CatchUpRequest(1, 1))
    assert replica.on_message("v3", request).serve_catch_up == [("v3", 1, 1)]
    assert replica.on_message("v3", request).rejected == [("v3", "catch-up-too-often")]
    assert replica.on_message("v2", request).serve_catch_up == [("v2", 1, 1)]  # another peer is not limited
    replica.on_tick(replica.now_ms + 10)
    assert replica.on_message("v3", request).serve_catch_up == [("v3", 1, 1)]


def test_messages_wait_for_their_own_persist_batch_in_order():
    """Two Readies with persist batches are outstanding: each on_persisted releases exactly the messages
    of the oldest batch, and a Ready without persist queues behind them instead of overtaking (the
    primary's forward to every validator at once, with forward_others_after_ms = 0; two blocks of one
    request each in flight, with partial_batch_in_flight_max = 2)."""
    cluster = Cluster(ReplicaConfig(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200, checkpoint_interval=4,
                                    watermark_window=8, catch_up_timeout_ms=200, forward_others_after_ms=0,
                                    partial_batch_in_flight_max=2))
    primary = cluster.nodes["v0"].replica
    ready1 = primary.on_request(b"ok:1")
    ready2 = primary.on_request(b"ok:2")
    assert ready1.persist and not ready1.messages and ready2.persist and not ready2.messages
    ready3 = primary.on_tick(cluster.now_ms + 1)  # flushes the request forward: no persist of its own
    assert not ready3.persist and not ready3.messages
    first = [codec.unpack(m.data) for m in primary.on_persisted().messages]
    assert [(m["type"], m.get("header", {}).get("height", m.get("height"))) for m in first] == [
        ("pre-prepare", 1), ("prepare", 1)]
    second = [codec.unpack(m.data) for m in primary.on_persisted().messages]
    assert [m["type"] for m in second] == ["pre-prepare", "requests"]
    assert not primary.on_persisted().messages  # nothing left


def test_a_replica_alone_in_a_higher_view_still_gets_its_request_committed():
    """v3's forwards are lost, so it suspects the primary and moves to view 1 alone; the others stay in
    view 0. Once links work, v3 resends the request to everyone, view 0 commits it, and v3 (still waiting
    in view 1, as PBFT requires) receives the block by catch-up."""
    cluster = Cluster()
    cluster.drop = lambda s, t, d: s == "v3" and kind_of(d) == "requests"
    cluster.submit("v3", b"ok:lonely")
    assert cluster.run_until(lambda: cluster.nodes["v3"].replica.view == 1, 500)
    cluster.drop = lambda s, t, d: False
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:lonely"]), 3000)
    assert [cluster.nodes[n].replica.view for n in ("v0", "v1", "v2")] == [0, 0, 0]
    assert cluster.nodes["v3"].replica.view == 1 and not cluster.nodes["v3"].replica.view_active
    cluster.assert_agreement()


def test_the_primary_queue_of_unproposed_requests_matches_a_full_scan():
    """The primary keeps its requests to propose in a queue (it looks after every input) instead
    of scanning its pool; after every input, across in-flight blocks, commits and a view change,
    it gives exactly what a full scan of the pool gives."""

    config = ReplicaConfig(batch_requests_max=5, batch_wait_ms=30, view_timeout_ms=500, retransmit_ms=200,
                           checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200)
    cluster = Cluster(config)
    checked = []

    def checking(replica, resumed):
        def unproposed():
            in_flight = set()
            for height, slot in replica.slots.items():
                if height > replica.last_applied_height:
                    in_flight.update(slot.request_ids)
            expected = [p for rid, p in replica.pool.items() if rid not in in_flight]
            before = replica._proposal_queue
            found = resumed()
            assert [p.request for p in found.values()] == [p.request for p in expected]
            checked.append((len(found), before is not None and replica._proposal_queue is before))
            return found
        return unproposed

    for node in cluster.nodes.values():
        node.replica._unproposed = checking(node.replica, node.replica._unproposed)
    requests = [f"ok:{i}".encode() for i in range(60)]
    for i, request in enumerate(requests[:40]):
        cluster.submit(cluster.ids[i % 4], request)
        if i % 3 == 0:
            cluster.run(1)   # some blocks go in flight while more requests arrive
    assert cluster.run_until(lambda: all_committed(cluster, requests[:40]), 400)
    # The primary goes silent: the next primary takes over with requests still pending.
    primary = cluster.nodes["v0"]
    primary.crash()
    for i, request in enumerate(requests[40:]):
        cluster.submit(cluster.ids[1 + i % 3], request)
    assert cluster.run_until(lambda: all_committed(cluster, requests, ["v1", "v2", "v3"]), 2000)
    assert cluster.nodes["v1"].replica.view >= 1
    cluster.assert_agreement()
    # Kept queues, rebuilt ones, partial and full batches were all exercised.
    assert len(checked) > 100 and {resumed for _, resumed in checked} == {True, False}
    assert any(0 < n < 5 for n, _ in checked) and any(n >= 5 for n, _ in checked)


def test_a_partial_batch_waits_while_blocks_are_in_flight_and_a_full_one_does_not():
    cluster = Cluster(ReplicaConfig(batch_wait_ms=0, batch_requests_max=4, partial_batch_in_flight_max=2,
                                    view_timeout_ms=60_000, checkpoint_interval=4, watermark_window=8))
    held = []
    cluster.drop = lambda sender, target, data: held.append((sender, target, data)) or kind_of(data) != "pre-prepare"
    primary = cluster.nodes["v0"].replica

    def in_flight():
        return sorted(h for h in primary.slots if h > primary.last_applied_height)

    cluster.submit("v0", b"ok:1")
    cluster.run(1)
    cluster.submit("v0", b"ok:2")
    cluster.run(1)
    assert in_flight() == [1, 2]
    cluster.submit("v0", b"ok:3")
    cluster.run(3)
    assert in_flight() == [1, 2]                  # a partial batch waits: 2 blocks are in flight
    for i in range(4, 8):
        cluster.submit("v0", f"ok:{i}".encode())
    cluster.run(1)
    assert in_flight() == [1, 2, 3]               # a full batch does not
    assert primary.slots[3].entries == (b"ok:3", b"ok:4", b"ok:5", b"ok:6")
    cluster.drop = lambda sender, target, data: False
    for sender, target, data in held:
        cluster.queue.append((sender, target, data))
    requests = [f"ok:{i}".encode() for i in range(1, 8)]
    assert cluster.run_until(lambda: all_committed(cluster, requests), 200)
    cluster.assert_agreement()


def _sent_kinds(cluster, ticks):
    """Run `ticks` ticks and return every (sender, target, kind) handed to the network meanwhile."""
    sent = []
    before = cluster.drop

    def record(sender, target, data):
        sent.append((sender, target, kind_of(data)))
        return before(sender, target, data)

    cluster.drop = record
    cluster.run(ticks)
    cluster.drop = before
    return sent


def test_retransmission_goes_only_to_the_peers_that_have_not_voted():
    """A block nobody can commit (every COMMIT is lost) and a backup that hears nothing: the primary
    resends its PRE-PREPARE only to that backup, the PREPAREs go only to the peers whose COMMIT
    their sender lacks (all of them here), and every COMMIT goes to everyone."""
    cluster = Cluster(ReplicaConfig(batch_wait_ms=0, view_timeout_ms=60_000, retransmit_ms=200,
                                    checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200))
    cluster.drop = lambda sender, target, data: target == "v3" or kind_of(data) == "commit"
    cluster.submit("v1", b"ok:stuck")
    cluster.run(5)
    assert all(len(n.chain) == 0 for n in cluster.nodes.values())
    sent = _sent_kinds(cluster, 60)                 # three retransmission periods
    preprepares = {(s, t) for s, t, kind in sent if kind == "pre-prepare"}
    assert preprepares == {("v0", "v3")}, preprepares
    prepares = {(s, t) for s, t, kind in sent if kind == "prepare"}
    assert prepares == {(s, t) for s in ("v0", "v1", "v2") for t in cluster.ids if t != s}
    commits = {(s, t) for s, t, kind in sent if kind == "commit"}
    assert commits == {(s, t) for s in ("v0", "v1", "v2") for t in cluster.ids if t != s}
    # Once v3 hears again it catches up and the block commits everywhere.
    cluster.drop = lambda sender, target, data: False
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:stuck"]), 200)


def test_a_block_is_resent_only_once_it_went_unanswered_for_half_a_period():
    """A PRE-PREPARE sent just before the retransmission timer fires is not sent again at once."""
    config = ReplicaConfig(batch_wait_ms=0, view_timeout_ms=60_000, retransmit_ms=400, checkpoint_interval=4,
                           watermark_window=8, catch_up_timeout_ms=200)
    cluster = Cluster(config)
    cluster.drop = lambda sender, target, data: kind_of(data) in ("prepare", "commit")
    primary = cluster.nodes["v0"].replica
    # Run until 50 ms before the primary's next retransmission, then propose.
    while primary.timeouts._deadline_ms[Timer.RETRANSMIT] - cluster.now_ms != 50:
        cluster.run(1)
    cluster.submit("v0", b"ok:late")
    sent = _sent_kinds(cluster, 10)   # the timer fires 50 ms after the proposal: too young to resend
    assert [kind for s, _, kind in sent if s == "v0" and kind == "pre-prepare"] == ["pre-prepare"] * 3
    sent = _sent_kinds(cluster, 40)   # the next round, 450 ms after it: resent to every backup
    assert sorted(t for s, t, kind in sent if s == "v0" and kind == "pre-prepare") == ["v1", "v2", "v3"]


def test_a_prepare_is_resent_only_to_the_peers_whose_commit_is_missing():
    """v1's COMMITs are lost and v3 hears nothing: v1 commits (it holds three COMMITs), v0 and v2 do
    not. They resend their PREPAREs to v1 and v3 only (each holds the other's COMMIT), and v1,
    done with the height, resends nothing."""
    cluster = Cluster(ReplicaConfig(batch_wait_ms=0, view_timeout_ms=60_000, retransmit_ms=200,
                                    checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200))
    cluster.drop = lambda sender, target, data: target == "v3" or (sender == "v1" and kind_of(data) == "commit")
    cluster.submit("v1", b"ok:stuck")
    cluster.run(5)
    assert cluster.heights() == {"v0": 0, "v1": 1, "v2": 0, "v3": 0}
    sent = _sent_kinds(cluster, 60)
    prepares = {(s, t) for s, t, kind in sent if kind == "prepare"}
    assert prepares == {(s, t) for s in ("v0", "v2") for t in ("v1", "v3")}
    assert {(s, t) for s, t, kind in sent if kind == "pre-prepare"} == {("v0", "v3")}


def _quiet_config(**changes):
    """No view change for a minute: the forwarding tests watch a stuck request for longer than a timeout."""
    return ReplicaConfig(**{**dict(batch_wait_ms=0, view_timeout_ms=60_000, retransmit_ms=200, checkpoint_interval=4,
                                   watermark_window=8, catch_up_timeout_ms=200), **changes})


def _forwards(sent):
    return {(s, t) for s, t, kind in sent if kind == "requests"}


def test_a_client_request_goes_to_the_primary_at_once_and_to_the_others_only_if_still_pending():
    """v1's client request reaches the primary with the next tick and no one else while it commits
    within forward_others_after_ms; one the primary leaves out (its PRE-PREPAREs are lost here) goes
    to the other backups once that time has passed, and never to the primary a second time."""
    cluster = Cluster(_quiet_config(forward_others_after_ms=100))
    cluster.submit("v1", b"ok:quick")
    sent = _sent_kinds(cluster, 30)
    assert all_committed(cluster, [b"ok:quick"])
    assert _forwards(sent) == {("v1", "v0")}
    cluster.drop = lambda sender, target, data: kind_of(data) == "pre-prepare"
    cluster.submit("v1", b"ok:stuck")
    sent = _sent_kinds(cluster, 9)          # 90 ms: not yet
    assert _forwards(sent) == {("v1", "v0")}
    sent = _sent_kinds(cluster, 3)          # past 100 ms
    assert _forwards(sent) == {("v1", "v2"), ("v1", "v3")}


def test_the_primary_s_own_client_request_goes_to_no_one_while_it_commits_in_time():
    cluster = Cluster(_quiet_config(forward_others_after_ms=100))
    cluster.submit("v0", b"ok:primary")
    sent = _sent_kinds(cluster, 30)
    assert all_committed(cluster, [b"ok:primary"])
    assert _forwards(sent) == set()


def test_forward_others_after_ms_zero_forwards_to_every_validator_at_once():
    cluster = Cluster(_quiet_config(forward_others_after_ms=0))
    cluster.submit("v1", b"ok:all")
    sent = _sent_kinds(cluster, 1)
    assert _forwards(sent) == {("v1", "v0"), ("v1", "v2"), ("v1", "v3")}


def test_next_tick_ms_says_when_a_tick_is_needed():
    """A host may tick less often while nothing is due: next_tick_ms is the earliest pending deadline,
    the tick's own time when something waits for the very next tick, None before the first tick."""
    config = ReplicaConfig(batch_wait_ms=20, view_timeout_ms=2000, retransmit_ms=500, checkpoint_interval=4,
                           watermark_window=8, catch_up_timeout_ms=200, catch_up_probe_ms=2000,
                           forward_others_after_ms=100)
    cluster = Cluster(config)
    assert Replica(config, cluster.vset, "v1", cluster.keys["v1"], CHAIN, cluster.nodes["v1"].replica.app,
                   margin_heights=cluster.margin_heights).next_tick_ms() is None
    cluster.run(100)   # a second of an idle chain
    for node in cluster.nodes.values():
        replica = node.replica
        wanted = replica.next_tick_ms()
        # Idle: only the periodic timers (retransmission, sweeps, the catch-up probe) ask, and not soon.
        assert replica.now_ms < wanted <= replica.now_ms + config.retransmit_ms
    backup = cluster.nodes["v1"].replica
    backup.on_request(b"ok:tick")
    assert backup.next_tick_ms() == backup.now_ms            # its forward to the primary waits for a tick
    backup.on_tick(backup.now_ms + 1)
    # Forwarded to the primary; to the others only if still pending 100 ms on, and its progress timer runs.
    assert backup.next_tick_ms() <= backup.now_ms + config.forward_others_after_ms
    primary = cluster.nodes["v0"].replica
    primary.on_message("v1", encode(Requests((b"ok:later",))))
    seen_ms = primary.now_ms
    assert primary.next_tick_ms() == seen_ms                 # work: a tick arms its progress timer
    primary.on_tick(seen_ms + 1)
    assert primary.next_tick_ms() == seen_ms + config.batch_wait_ms   # then its batch wait ends
