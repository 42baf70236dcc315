"""VIEW-CHANGE and NEW-VIEW carry block digests, not bodies (issue 14, point 6).

A NEW-VIEW for n = 7 with a full window of large blocks fits under its own cap, where
the old encoding (each prepared certificate with its block) was over the 64 MiB frame;
the caps' arithmetic holds; and a replica that enters a view without a chosen block's
body fetches it (BLOCK-REQUEST / BLOCK-RESPONSE), checks it against the header, and
does not prepare the block until it has it.
"""

from __future__ import annotations

import nacl.signing
import pytest

from consensus import codec, messages
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.messages import (
    GENESIS_CHECKPOINT, MESSAGE_BYTES_MAX, NEW_VIEW_BYTES_MAX, VIEW_CHANGE_BYTES_MAX, NewView, PreparedCertificate,
    ViewChange, VoteSignature, choose_blocks, decode_message, encode, minimal_quorum, minimal_quorum_size,
    new_view_bytes_bound, sign, slot_payload, view_change_bytes_bound,
)
from consensus.validators import Validator, ValidatorSet

CHAIN = "bayledger-test"
KEYS7 = {f"v{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(7)}
VSET7 = ValidatorSet(tuple(
    Validator(f"v{i}", KEYS7[f"v{i}"].verify_key.encode(), "HK" if i < 4 else "CN") for i in range(7)))


def _chain(count: int, body_of) -> list[tuple[BlockHeader, tuple[bytes, ...]]]:
    blocks = []
    prev = ZERO_HASH
    for height in range(1, count + 1):
        entries = body_of(height)
        header = BlockHeader(CHAIN, height, prev, 1_700_000_000_000 + height, entries_hash(entries), len(entries),
                             height, codec.sha256(b"root%d" % height), codec.sha256(b"res"), VSET7.hash())
        blocks.append((header, entries))
        prev = header.hash()
    return blocks


def _certificate(view: int, header: BlockHeader, signers) -> PreparedCertificate:
    payload = slot_payload(view, header.height, header.hash())
    return PreparedCertificate(view, header, tuple(
        VoteSignature(s, codec.sign(KEYS7[s], codec.DOMAIN_PREPARE, CHAIN, payload)) for s in sorted(signers)))


def _new_view(headers: list[BlockHeader]) -> NewView:
    """The NEW-VIEW of view 1 (primary v1) from 5 VIEW-CHANGEs, each with every block prepared in view 0."""
    signers = minimal_quorum(VSET7, [v.id for v in VSET7.validators])
    certificates = tuple(_certificate(0, h, signers) for h in headers)
    view_changes = tuple(sign(ViewChange(1, GENESIS_CHECKPOINT, certificates, s), KEYS7[s], CHAIN) for s in signers)
    _, chosen = choose_blocks(view_changes)
    return sign(NewView(1, view_changes, tuple(p.header.hash() for p in chosen), "v1"), KEYS7["v1"], CHAIN)


def test_a_new_view_of_n7_with_a_full_window_of_large_blocks_fits_where_the_old_encoding_did_not():
    window = 16                      # ReplicaConfig's default watermark window
    entry = 16 * 1024                # 64 entries of 16 KiB: 1 MiB blocks
    blocks = _chain(window, lambda h: tuple(b"%08d:%04d:" % (h, i) + bytes(entry - 14) for i in range(64)))
    message = _new_view([h for h, _ in blocks])
    data = encode(message)
    assert len(message.view_changes) == 5 and len(message.chosen) == window
    assert len(data) <= new_view_bytes_bound(VSET7, window, CHAIN) <= NEW_VIEW_BYTES_MAX
    assert all(len(encode(vc)) <= VIEW_CHANGE_BYTES_MAX for vc in message.view_changes)
    assert decode_message(data, VSET7, CHAIN) == message
    # The old encoding: every certificate of every VIEW-CHANGE also carried {"entries": [...]}.
    body_bytes = sum(len(codec.pack("entries")) + len(codec.pack(list(entries))) for _, entries in blocks)
    old_view_change = len(encode(message.view_changes[0])) + body_bytes
    old_new_view = len(data) + len(message.view_changes) * body_bytes
    assert old_view_change > 16 * 1024 * 1024
    assert old_new_view > MESSAGE_BYTES_MAX
    assert len(data) < 100_000   # 16 headers and 5 x 16 x 5 signatures


def test_a_new_view_of_n7_at_the_largest_window_fits_its_cap():
    window = messages.PREPARED_CERTIFICATES_MAX
    blocks = _chain(window, lambda h: (b"ok:%d" % h,))
    message = _new_view([h for h, _ in blocks])
    data = encode(message)
    assert max(len(encode(vc)) for vc in message.view_changes) <= view_change_bytes_bound(VSET7, window, CHAIN)
    assert len(data) <= new_view_bytes_bound(VSET7, window, CHAIN) <= NEW_VIEW_BYTES_MAX
    assert view_change_bytes_bound(VSET7, window, CHAIN) <= VIEW_CHANGE_BYTES_MAX
    assert decode_message(data, VSET7, CHAIN).chosen == message.chosen


def _vset(n: int, id_bytes: int = messages.VALIDATOR_ID_BYTES_MAX) -> ValidatorSet:
    return ValidatorSet(tuple(
        Validator(f"{i:03d}".ljust(id_bytes, "x"), codec.sha256(b"key%d" % i), "HK" if i % 2 else "CN")
        for i in range(n)))


def test_the_size_arithmetic_in_messages():
    header, signature, bare = messages._sizes(messages.CHAIN_ID_BYTES_MAX, messages.VALIDATOR_ID_BYTES_MAX)
    assert (header, signature) == (399, 211)   # the header with its epoch (from epoch 1 on)
    assert messages.prepared_certificate_bytes_bound(5) == 1486
    assert messages.prepared_certificate_bytes_bound(67) == 14570
    chain = "c" * messages.CHAIN_ID_BYTES_MAX
    big = _vset(messages.VALIDATORS_MAX)
    assert minimal_quorum_size(big) == 67
    assert new_view_bytes_bound(big, 16, chain) <= NEW_VIEW_BYTES_MAX
    assert new_view_bytes_bound(big, 32, chain) <= NEW_VIEW_BYTES_MAX < new_view_bytes_bound(big, 33, chain)
    # Every window a node may configure fits n <= 16 with the longest ids.
    for n in (4, 7, 10, 13, 16):
        vset = _vset(n)
        assert view_change_bytes_bound(vset, 1024, chain) <= VIEW_CHANGE_BYTES_MAX
        assert new_view_bytes_bound(vset, 1024, chain) <= NEW_VIEW_BYTES_MAX


def test_the_bound_really_bounds_a_worst_case_view_change():
    vset = _vset(7)
    ids = [v.id for v in vset.validators]
    chain = "c" * messages.CHAIN_ID_BYTES_MAX
    top = messages.INTEGER_MAX
    header = BlockHeader(chain, top, bytes(32), top, bytes(32), top, top, bytes(32), bytes(32), vset.hash(), epoch=top)
    cert = PreparedCertificate(top, header, tuple(VoteSignature(i, bytes(64)) for i in minimal_quorum(vset, ids)))
    checkpoint = messages.CheckpointCertificate(top, bytes(32), tuple(VoteSignature(i, bytes(64)) for i in ids))
    vc = ViewChange(top, checkpoint, (cert,) * 20, ids[-1], bytes(64), epoch=top)
    assert len(encode(vc)) == view_change_bytes_bound(vset, 20, chain)
    nv = NewView(top, (vc,) * minimal_quorum_size(vset), (bytes(32),) * messages.PREPARED_CERTIFICATES_MAX, ids[-1],
                 bytes(64), epoch=top)
    assert len(encode(nv)) == new_view_bytes_bound(vset, 20, chain)


def test_consensus_limits_agree_with_genesis():
    from storage import genesis
    assert messages.VALIDATORS_MAX == genesis.validators_max
    assert messages.CHAIN_ID_BYTES_MAX == genesis.chain_id_bytes_max
    assert genesis.name_bytes_max <= messages.VALIDATOR_ID_BYTES_MAX


def test_minimal_quorum_keeps_the_jurisdiction_rule():
    vset = VSET7   # v0..v3 in HK, v4..v6 in CN, one of each needed
    # Preference puts every HK validator first; the CN minimum is still met.
    picked = minimal_quorum(vset, ["v0", "v1", "v2", "v3", "v4", "v5", "v6"])
    assert vset.is_quorum(picked) and len(picked) == vset.quorum_size == 5
    assert "v4" in picked and "v5" not in picked
    assert minimal_quorum(vset, ["v0", "v1"]) == ("v0", "v1")   # no quorum: given back as it is
    assert set(minimal_quorum(vset, ["v6", "v5", "v0", "v1", "v2", "v3", "v9"])) == {"v6", "v5", "v0", "v1", "v2"}


# ---------------------------------------------------------------------------
# The replica: fetching the bodies of re-proposed blocks

from consensus.messages import BlockResponse   # noqa: E402
from consensus.replica import Replica, ReplicaConfig, ReplicaConfigError   # noqa: E402

from tests.support.replica_cluster import Cluster, TrivialApp, all_committed, kind_of   # noqa: E402


def _log(cluster, tamper=None):
    """Record (sender, target, type, view, height) of every delivered message, optionally rewriting them."""
    log = []

    def record(sender, target, data):
        out = tamper(sender, target, data) if tamper else [data]
        for item in out:
            wire = codec.unpack(item)
            log.append((sender, target, wire.get("type"), wire.get("view"), wire.get("height")))
        return out

    cluster.tamper = record
    return log


def _prepared_without_v3(cluster):
    """Block A prepared by v0, v1, v2 in view 0; v3 never saw its PRE-PREPARE (so lacks its body); no COMMIT
    gets through. Then the primary v0 crashes: only a view change can finish A, and it needs v3's votes."""
    cluster.drop = lambda s, t, d: (kind_of(d) == "pre-prepare" and t == "v3") or kind_of(d) == "commit"
    cluster.submit("v0", b"ok:a")
    cluster.run(10)
    assert all(1 in cluster.nodes[n].replica.certs for n in ("v1", "v2"))
    prepared_hash = cluster.nodes["v1"].replica.certs[1].header.hash()
    assert cluster.nodes["v3"].replica._known_body(1, prepared_hash) is None
    cluster.nodes["v0"].crash()
    return prepared_hash


def test_a_replica_without_a_chosen_body_fetches_it_and_votes_only_once_it_has_it():
    cluster = Cluster()
    prepared_hash = _prepared_without_v3(cluster)
    held = {"on": True}
    base = lambda s, t, d: kind_of(d) == "commit" and codec.unpack(d)["view"] == 0   # noqa: E731
    # At first every BLOCK-RESPONSE to v3 is lost: its slot must wait (and it asks other peers in turn).
    cluster.drop = lambda s, t, d: base(s, t, d) or (held["on"] and t == "v3" and kind_of(d) == "block-response")
    log = _log(cluster)
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: cluster.nodes["v3"].replica.view_active and cluster.nodes["v3"].replica.view >= 1, 500)
    cluster.run(60)
    v3 = cluster.nodes["v3"].replica
    assert v3.slots[1].hash == prepared_hash and v3.slots[1].entries is None
    assert not any(s == "v3" and kind in ("prepare", "commit") and view >= 1 and h == 1 for s, _, kind, view, h in log)
    assert not all_committed(cluster, [b"ok:a"], live)
    asked = [t for s, t, kind, _, _ in log if s == "v3" and kind == "block-request"]
    assert len(set(asked)) >= 2, asked   # retried with a different peer each round
    # The NEW-VIEW carries a minimal quorum of VIEW-CHANGEs, and no bodies.
    assert len(v3.new_view.view_changes) == cluster.vset.quorum_size
    assert b"ok:a" not in v3.new_view_bytes
    held["on"] = False
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:a"], live), 1000)
    for n in live:
        assert cluster.nodes[n].chain[0].header.hash() == prepared_hash
    cluster.assert_agreement()
    got = next(i for i, e in enumerate(log) if e[1] == "v3" and e[2] == "block-response")
    voted = next(i for i, e in enumerate(log) if e[0] == "v3" and e[2] == "prepare" and e[3] >= 1 and e[4] == 1)
    assert got < voted
    assert not v3.fetching


def test_a_body_that_does_not_match_its_header_is_rejected_and_fetched_elsewhere():
    cluster = Cluster()
    prepared_hash = _prepared_without_v3(cluster)
    cluster.drop = lambda s, t, d: kind_of(d) == "commit" and codec.unpack(d)["view"] == 0
    forged = []

    def tamper(sender, target, data):
        if target == "v3" and kind_of(data) == "block-response" and not forged:
            wire = codec.unpack(data)
            forged.append(sender)
            return [codec.pack({**wire, "entries": [b"ok:forged"]})]   # the header still says ok:a
        if target == "v3" and kind_of(data) == "block-response" and sender == forged[0]:
            return []   # that peer stays faulty
        return [data]

    log = _log(cluster, tamper)
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:a"], live), 2000)
    assert (forged[0], "bad-body") in cluster.nodes["v3"].rejected
    assert cluster.nodes["v3"].chain[0].header.hash() == prepared_hash
    served = {s for s, t, kind, _, _ in log if t == "v3" and kind == "block-response"}
    assert len(served) >= 2
    # A block nobody asked for (valid in itself) is ignored.
    stray = BlockResponse(cluster.nodes["v1"].chain[0].header, cluster.nodes["v1"].chain[0].entries)
    ready = cluster.nodes["v3"].replica.on_message("v1", encode(stray))
    assert ready.is_empty()


def test_a_replica_restarted_while_fetching_fetches_again():
    cluster = Cluster()
    prepared_hash = _prepared_without_v3(cluster)
    base = lambda s, t, d: kind_of(d) == "commit" and codec.unpack(d)["view"] == 0   # noqa: E731
    cluster.drop = lambda s, t, d: base(s, t, d) or (t == "v3" and kind_of(d) == "block-response")
    assert cluster.run_until(lambda: cluster.nodes["v3"].replica.view_active and cluster.nodes["v3"].replica.view >= 1, 500)
    v3 = cluster.nodes["v3"]
    v3.crash()
    v3.restart()
    assert v3.replica.slots[1].entries is None and prepared_hash in v3.replica.fetching
    cluster.drop = base
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:a"], live), 2000)
    cluster.assert_agreement()


def test_a_block_request_is_served_from_persisted_bodies_and_rate_limited():
    cluster = Cluster()
    prepared_hash = _prepared_without_v3(cluster)
    v1 = cluster.nodes["v1"].replica
    v1.blocks.clear()   # only the body persisted with the certificate is left
    ready = v1.on_message("v2", encode(messages.BlockRequest((prepared_hash, codec.sha256(b"unknown")))))
    [out] = ready.messages
    response = decode_message(out.data, cluster.vset, "bayledger-test")
    assert out.to == "v2" and response.header.hash() == prepared_hash and response.entries == (b"ok:a",)
    again = v1.on_message("v2", encode(messages.BlockRequest((prepared_hash,))))
    assert not again.messages and ("v2", "block-request-too-often") in again.rejected


def test_a_replica_refuses_a_window_whose_view_change_could_not_fit():
    n = messages.VALIDATORS_MAX
    keys = [nacl.signing.SigningKey(codec.sha256(b"k%d" % i)) for i in range(n)]
    vset = ValidatorSet(tuple(Validator(f"validator-{i:03d}".ljust(64, "x"), keys[i].verify_key.encode(),
                                        "HK" if i % 2 else "CN") for i in range(n)))
    me = vset.validators[0].id
    Replica(ReplicaConfig(), vset, me, keys[0], CHAIN, TrivialApp())   # the default window (16) fits
    with pytest.raises(ReplicaConfigError, match="watermark_window 1024 is too large for 100 validators"):
        Replica(ReplicaConfig(watermark_window=1024), vset, me, keys[0], CHAIN, TrivialApp())


def test_many_missing_bodies_are_spread_one_request_per_peer_per_round():
    cluster = Cluster()
    v3 = cluster.nodes["v3"].replica
    v3.now_ms = cluster.now_ms
    for i in range(100):   # more than one request's worth, all certified by v0, v1, v2
        v3._want_body(1000 + i, codec.sha256(b"%d" % i), ("v0", "v1", "v2"))
    v3._request_bodies()
    ready = v3._ready()
    asked = {}
    for out in ready.messages:
        assert out.to not in asked, "two requests to one peer in one round"
        asked[out.to] = decode_message(out.data, cluster.vset, "bayledger-test").header_hashes
    assert sum(len(h) for h in asked.values()) == 100
    assert all(len(h) <= messages.BLOCK_REQUEST_HASHES_MAX for h in asked.values())


def _old_format(data: bytes) -> bytes:
    """A VIEW-CHANGE or NEW-VIEW as the previous version wrote it: prepared certificates with their
    `entries` (the bodies this version no longer sends)."""
    wire = codec.unpack(data)
    changes = wire["view_changes"] if wire["type"] == "new-view" else [wire]
    for change in changes:
        for certificate in change["prepared"]:
            certificate["entries"] = [b"ok:old"]
    return codec.pack(wire)


def test_a_replica_upgraded_mid_view_change_leaves_the_old_record_out_and_moves_on():
    """A node that stopped in a view change under the previous version has its VIEW-CHANGE stored with
    block bodies. After the upgrade it must start (not refuse its state), say what it left out, and
    keep up: it starts the next view change with a fresh VIEW-CHANGE and commits what the others do."""
    cluster = Cluster()
    v1 = cluster.nodes["v1"]
    # A block prepared everywhere but not committed (COMMITs dropped); then v1 is cut off, times out
    # into a view change of its own and persists a VIEW-CHANGE that carries the prepared certificate,
    # while the other three commit the block and carry on in view 0.
    cluster.drop = lambda s, t, d: kind_of(d) == "commit"
    cluster.submit("v0", b"ok:prepared")
    assert cluster.run_until(lambda: 1 in v1.replica.certs, 500)
    cluster.drop = lambda s, t, d: s == "v1" or t == "v1"
    assert cluster.run_until(lambda: not v1.replica.view_active, 2000)
    assert v1.replica.view_changes["v1"].prepared, "the stored VIEW-CHANGE must carry a certificate"
    stuck_view = v1.replica.view
    v1.crash()
    v1.persisted[b"view-change"] = _old_format(v1.persisted[b"view-change"])
    v1.restart()
    assert any("view-change" in note for note in v1.replica.restore_skipped), v1.replica.restore_skipped
    assert v1.replica.view == stuck_view + 1 and not v1.replica.view_active
    assert v1.replica.view_changes["v1"].view == stuck_view + 1
    cluster.drop = lambda s, t, d: False
    cluster.submit("v0", b"ok:a")
    live = ["v0", "v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:prepared", b"ok:a"], live), 5000)
    cluster.assert_agreement()


def test_an_old_format_new_view_is_left_out_and_the_replica_keeps_its_view():
    cluster = Cluster()
    _prepared_without_v3(cluster)
    v3 = cluster.nodes["v3"]
    assert cluster.run_until(lambda: v3.replica.view >= 1 and v3.replica.view_active, 2000)
    view = v3.replica.view
    assert b"new-view" in v3.persisted
    v3.crash()
    v3.persisted[b"new-view"] = _old_format(v3.persisted[b"new-view"])
    v3.restart()
    assert any("new-view" in note for note in v3.replica.restore_skipped)
    assert v3.replica.view == view and v3.replica.view_active and v3.replica.new_view is None
