"""Censorship detection that a Byzantine peer cannot turn against an honest primary (issue 14, point 3).

The attack: a faulty validator sends valid requests to the backups only, never to the primary.
Backups used to pool them without forwarding them and blamed the primary once they had waited a
view timeout. Now a backup forwards what it holds to the primary and blames the primary only for a
request the primary provably held while it proposed its whole queue (a partial batch) without it.
"""

from __future__ import annotations

from consensus.messages import REQUESTS_MESSAGE_BYTES_MAX, Requests, decode_message, encode

from tests.support.replica_cluster import CHAIN, Cluster, all_committed


def requests_message(requests):
    return encode(Requests(tuple(requests)))


def flood_backups(cluster, attacker, requests, chunk=256):
    """The attacker's REQUESTS go to every validator but the primary of view 0 (v0)."""
    for i in range(0, len(requests), chunk):
        data = requests_message(requests[i:i + chunk])
        for target in cluster.ids:
            if target not in (attacker, "v0"):
                cluster.queue.append((attacker, target, data))


def views(cluster):
    return {i: n.replica.view for i, n in cluster.nodes.items()}


def test_requests_sent_only_to_the_backups_do_not_depose_an_honest_primary():
    cluster = Cluster()
    attacker = "v3"
    flood = [f"ok:flood-{i}".encode() for i in range(2000)]
    flood_backups(cluster, attacker, flood)
    # Honest load beside it, so the primary keeps proposing.
    honest = [f"ok:honest-{i}".encode() for i in range(40)]
    for i, request in enumerate(honest):
        cluster.submit(cluster.ids[i % 3], request)
    assert cluster.run_until(lambda: all_committed(cluster, flood + honest), ticks_max=1500), cluster.heights()
    cluster.run(200)   # and it stays calm after the flood is drained
    assert set(views(cluster).values()) == {0}, views(cluster)
    cluster.assert_agreement()


def test_a_trickle_of_requests_sent_only_to_the_backups_does_not_depose_an_honest_primary():
    """Low load: the primary proposes partial batches all the time (the evidence the rule looks at)."""
    cluster = Cluster()
    attacker = "v3"
    sent = []
    for step in range(60):
        request = f"ok:trickle-{step}".encode()
        sent.append(request)
        flood_backups(cluster, attacker, [request])
        cluster.submit("v1", f"ok:client-{step}".encode())
        sent.append(f"ok:client-{step}".encode())
        cluster.run(7)
    assert cluster.run_until(lambda: all_committed(cluster, sent), ticks_max=1000)
    assert set(views(cluster).values()) == {0}, views(cluster)
    cluster.assert_agreement()


def test_a_primary_that_drops_one_request_while_proposing_others_is_deposed():
    cluster = Cluster()
    censored = b"ok:censored"

    def tamper(sender, target, data):
        # v0 (the primary of view 0) never takes `censored`, whoever sends it and however often.
        if target != "v0":
            return [data]
        message = decode_message(data, cluster.vset, CHAIN, verify=False)
        if isinstance(message, Requests) and censored in message.requests:
            kept = [r for r in message.requests if r != censored]
            return [requests_message(kept)] if kept else []
        return [data]

    cluster.tamper = tamper
    cluster.submit("v1", censored)
    others = []
    for step in range(80):
        request = f"ok:other-{step}".encode()
        others.append(request)
        cluster.submit(cluster.ids[step % 4], request)
        cluster.run(5)
        if all(n.replica.view >= 1 for n in cluster.nodes.values()):
            break
    assert all(n.replica.view >= 1 for n in cluster.nodes.values()), views(cluster)
    assert cluster.run_until(lambda: all_committed(cluster, [censored] + others), ticks_max=1000)
    cluster.assert_agreement()


def test_forwarded_requests_message_stays_under_the_byte_cap():
    """A backup's forward to the primary is cut by count and by bytes (REQUESTS_MESSAGE_BYTES_MAX)."""
    cluster = Cluster()
    node = cluster.nodes["v1"]
    big = [b"ok:" + bytes([i % 256, i // 256]) + b"x" * 60_000 for i in range(300)]   # ~18 MB in all
    for i in range(0, len(big), 100):   # ~6 MB each: under the cap on the way in too
        node.handle(node.replica.on_message("v3", requests_message(big[i:i + 100])))
    sent = []
    original_send = node.send

    def record(out):
        sent.append(out)
        original_send(out)

    node.send = record
    for _ in range(60):
        cluster.now_ms += 10
        node.handle(node.replica.on_tick(cluster.now_ms))
    forwards = [decode_message(out.data, cluster.vset, CHAIN) for out in sent if out.to == "v0"]
    forwards = [(out, m) for out, m in zip([o for o in sent if o.to == "v0"], forwards) if isinstance(m, Requests)]
    assert forwards, "the backup forwarded nothing to the primary"
    assert all(len(out.data) <= REQUESTS_MESSAGE_BYTES_MAX for out, _ in forwards)
    assert len(forwards) >= 3   # 18 MB: more than two messages' worth
    forwarded = [r for _, m in forwards for r in m.requests]
    assert set(forwarded) == set(big)


def test_a_lost_forward_is_forgiven_and_sent_again():
    """The first copy of a forwarded request is lost on the way to the primary: one strike at most,
    then the copy sent again arrives, and the primary (which proposes partial batches all along) is kept."""
    cluster = Cluster()
    lonely = b"ok:lonely"
    lost = []

    def tamper(sender, target, data):
        if target == "v0" and not lost:
            message = decode_message(data, cluster.vset, CHAIN, verify=False)
            if isinstance(message, Requests) and lonely in message.requests:
                lost.append(sender)
                kept = [r for r in message.requests if r != lonely]
                return [requests_message(kept)] if kept else []
        return [data]

    cluster.tamper = tamper
    # Only v2 ever holds it (as if a faulty peer sent it to v2 alone).
    cluster.nodes["v2"].handle(cluster.nodes["v2"].replica.on_message("v3", requests_message([lonely])))
    others = []
    for step in range(60):
        request = f"ok:other-{step}".encode()
        others.append(request)
        cluster.submit(cluster.ids[step % 4], request)
        cluster.run(5)
    assert lost == ["v2"]
    assert cluster.run_until(lambda: all_committed(cluster, [lonely] + others), ticks_max=500)
    assert set(views(cluster).values()) == {0}, views(cluster)


def test_a_primary_whose_pool_is_full_is_not_blamed_for_what_it_refused():
    """The faulty v3 sends requests to the backups only, and floods the primary directly so that its
    pool is full whenever a backup's forward arrives: the primary refuses those forwards, proposes its
    flood, and takes them when forwarded again once it has room. Nobody blames it."""
    from consensus.replica import ReplicaConfig
    from tests.support.replica_cluster import TICK_MS

    config = ReplicaConfig(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200, checkpoint_interval=4,
                           watermark_window=8, catch_up_timeout_ms=200, request_pool_max=1000, batch_requests_max=16)
    cluster = Cluster(config)
    to_backups = [f"ok:backups-{i}".encode() for i in range(200)]
    flood_backups(cluster, "v3", to_backups)
    floods = 0

    def forward_pending():
        return any(target == "v0" and sender in ("v1", "v2") and decode_message(
            data, cluster.vset, CHAIN, verify=False).__class__ is Requests for sender, target, data in cluster.queue)

    for _ in range(600):
        if floods < 8 and forward_pending():
            # The flood reaches the primary just before the backups' forwards do.
            flood = [f"ok:flood-{floods}-{i}".encode() for i in range(1000)]
            cluster.queue[:0] = [("v3", "v0", requests_message(flood[i:i + 250])) for i in range(0, 1000, 250)]
            floods += 1
        cluster.deliver_all()
        cluster.now_ms += TICK_MS
        for node in cluster.nodes.values():
            node.handle(node.replica.on_tick(cluster.now_ms))
        if all_committed(cluster, to_backups):
            break
    assert floods > 0
    refused = [r for r in cluster.nodes["v0"].rejected if r[0] in ("v1", "v2") and r[1] == "request-pool-full"]
    assert refused, "the test must make the primary refuse a forward"
    assert all_committed(cluster, to_backups), cluster.heights()
    cluster.run(100)
    assert set(views(cluster).values()) == {0}, views(cluster)
    cluster.assert_agreement()
