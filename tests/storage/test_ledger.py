"""The LevelDB ledger: apply rules with their reason codes, atomic idempotent apply, opening checks,
proofs from the store against an in-memory recomputation, and speculative execution."""

from __future__ import annotations

import msgpack
import plyvel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.block import BlockHeader
from consensus.messages import CommittedBlock
from storage import entries, merkle
from storage import execution, records
from storage import ledger as ledger_module
from storage.genesis import Participant
from storage.application import LedgerApplication
from storage.ledger import Ledger, LedgerError, NonceWindow
from tests.support.storage_helpers import Author, certify, commitment, key_from, make_world, next_block, reconfigure


def apply(world, ledger, entry_list, **kw):
    block = next_block(world, ledger, entry_list, **kw)
    return [o.reason if not o.ok else o.leaf_index for o in ledger.apply_block(block)]


def regulators(world):
    return list(world.governance_keys.items())


def test_commit_and_duplicate(world, ledger):
    author = Author(world, "hk-bureau")
    other = Author(world, "cn-bureau")
    assert apply(world, ledger, [author.commit(commitment(1)), author.commit(commitment(2)),
                                 other.commit(commitment(1), jurisdiction="CN")]) == [0, 1, "duplicate-commitment"]
    assert ledger.tree_size() == 2
    assert apply(world, ledger, [other.commit(commitment(2))]) == ["duplicate-commitment"]
    assert ledger.tree_size() == 2
    status = ledger.commitment_status(commitment(1), now_ms=0)
    assert status["status"] == "active" and status["author"] == "hk-bureau" and status["height"] == 1
    assert ledger.commitment_status(commitment(99), now_ms=0) is None
    with pytest.raises(ValueError):
        ledger.commitment_status("not bytes", now_ms=0)
    # The rejected entry is kept in the block, with its reason, and served in catch-up.
    block = ledger.committed_block(1)
    assert len(block.entries) == 3 and block.header.entry_count == 3
    assert ledger.block_results(1) == [0, 1, "duplicate-commitment"]
    block.verify(world.genesis.validator_set)


def test_author_rules(world, ledger):
    stranger_key = key_from("stranger")
    stranger = entries.build_commit(stranger_key, "stranger", world.chain_id, commitment(1), "credit-report", "HK", 1, 1)
    impostor = entries.build_commit(stranger_key, "hk-bureau", world.chain_id, commitment(2), "credit-report", "HK", 1, 1)
    unknown_kind = Author(world, "hk-bureau").commit(commitment(3), kind="horoscope")
    other_chain = Author(make_world(chain_id="elsewhere"), "hk-bureau").commit(commitment(4))
    assert apply(world, ledger, [stranger, impostor, unknown_kind, other_chain, b"\x00garbage"]) == [
        "unknown-author", "key-mismatch", "unknown-kind", "wrong-chain", "entry-malformed"]
    assert ledger.tree_size() == 0


def test_replay_and_nonce_window(world, ledger, monkeypatch):
    author = Author(world, "hk-bureau")
    first = author.commit(commitment(1))
    assert apply(world, ledger, [first, first]) == [0, "replayed-nonce"]
    assert apply(world, ledger, [first]) == ["replayed-nonce"]
    key = world.participant_keys["hk-bureau"]

    def commit_with(nonce, n):
        return entries.build_commit(key, "hk-bureau", world.chain_id, commitment(n), "credit-report", "HK", nonce, 1)

    monkeypatch.setattr(records, "nonce_window", 3)
    # Clock-like nonces, out of order: fine while the window (3 most recent) is not full.
    assert apply(world, ledger, [commit_with(5_000_000, 10), commit_with(2_000_000, 11)]) == [1, 2]
    # Window {1, 2_000_000, 5_000_000} is full: below its smallest is stale, inside is new or replayed.
    assert apply(world, ledger, [commit_with(0, 12), commit_with(3_000_000, 13), commit_with(2_000_000, 14)]) == [
        "stale-nonce", 3, "replayed-nonce"]
    # 1 was forgotten (window now {2M, 3M, 5M}): its replay is refused as stale, never applied twice.
    assert apply(world, ledger, [first, commit_with(1_000_000, 15)]) == ["stale-nonce", "stale-nonce"]
    assert ledger.nonce_used("hk-bureau", 3_000_000) and not ledger.nonce_used("hk-bureau", 4_000_000)
    assert ledger.nonce_used("hk-bureau", 1)  # refused for ever (stale)


def test_nonce_window_unit(monkeypatch):
    monkeypatch.setattr(records, "nonce_window", 4)
    w = NonceWindow()
    for nonce in (10, 3, 7):
        assert w.check(nonce) is None
        w.add(nonce)
    assert w.check(7) == "replayed-nonce" and w.check(1) is None  # not full yet
    w.add(1)
    assert w.recent == [1, 3, 7, 10] and w.check(0) == "stale-nonce" and w.check(5) is None
    w.add(5)
    assert w.recent == [3, 5, 7, 10] and w.check(1) == "stale-nonce" and w.check(2) == "stale-nonce"
    copy = w.copy()
    copy.add(20)
    assert w.recent == [3, 5, 7, 10]
    assert NonceWindow.decode(w.encode()) == w


@given(st.sets(st.integers(min_value=0, max_value=2**63 - 1), max_size=300))
def test_nonce_window_encoding_round_trips_as_runs(nonces):
    """Any window survives encode/decode; an author counting up costs one run, a few bytes."""
    window = NonceWindow(sorted(nonces))
    assert NonceWindow.decode(window.encode()).recent == sorted(nonces)


def test_nonce_window_of_a_counting_author_is_one_run():
    window = NonceWindow(range(1_000, 1_000 + records.nonce_window))
    assert msgpack.unpackb(window.encode()) == [1_000, records.nonce_window]
    gapped = NonceWindow([1, 2, 3, 7, 8, 20])
    assert msgpack.unpackb(gapped.encode()) == [1, 3, 7, 2, 20, 1]


def test_nonce_window_default_edge(world, ledger):
    """With the real nonce_window: exactly that many out-of-order nonces are remembered."""
    author_key = world.participant_keys["cn-bureau"]
    window = records.nonce_window
    batch = [entries.build_commit(author_key, "cn-bureau", world.chain_id, commitment(1000 + n), "credit-report",
                                  "CN", 10 * n + 100, 1) for n in range(window)]
    assert apply(world, ledger, list(reversed(batch))) == list(range(window))
    older = entries.build_commit(author_key, "cn-bureau", world.chain_id, commitment(1), "credit-report", "CN", 99, 1)
    between = entries.build_commit(author_key, "cn-bureau", world.chain_id, commitment(2), "credit-report", "CN", 105, 1)
    assert apply(world, ledger, [older, between]) == ["stale-nonce", window]


def test_revoke_rules(world, ledger):
    hk, cn = Author(world, "hk-bureau"), Author(world, "cn-bureau")
    apply(world, ledger, [hk.commit(commitment(1)), hk.commit(commitment(2)), hk.commit(commitment(3))])
    assert apply(world, ledger, [cn.revoke(commitment(1)), hk.revoke(commitment(9)), hk.revoke(commitment(1)),
                                 hk.revoke(commitment(1))]) == ["not-submitter", "unknown-commitment", 3, "already-revoked"]
    gov = entries.build_governance_revoke(regulators(world), world.chain_id, commitment(2), "court order", 1, 1)
    hk_only = entries.build_governance_revoke(regulators(world)[:1], world.chain_id, commitment(3), "x", 2, 1)
    assert apply(world, ledger, [gov, hk_only]) == [4, "governance-threshold"]
    assert ledger.commitment_status(commitment(1), 0)["status"] == "revoked"
    assert ledger.commitment_status(commitment(2), 0)["revoke_leaf_index"] == 4
    assert ledger.commitment_status(commitment(2), 0)["revoke_height"] == 3
    assert ledger.commitment_status(commitment(1), 0)["height"] == 1
    assert ledger.commitment_status(commitment(3), 0)["status"] == "active"


def test_expiry(world, ledger):
    author = Author(world, "hk-bureau")
    block_time = world.genesis.genesis_time_ms + 1000
    assert apply(world, ledger, [author.commit(commitment(1), expires_ms=block_time),
                                 author.commit(commitment(2), expires_ms=block_time + 1)]) == ["already-expired", 0]
    assert ledger.commitment_status(commitment(2), now_ms=block_time)["status"] == "active"
    assert ledger.commitment_status(commitment(2), now_ms=block_time + 1)["status"] == "expired"


def test_admit_and_suspend(world, ledger):
    newcomer_key = key_from("sz-bank")
    newcomer = Participant("sz-bank", "CN", "bank", bytes(newcomer_key.verify_key))
    commit_early = entries.build_commit(newcomer_key, "sz-bank", world.chain_id, commitment(1), "credit-score", "CN", 1, 1)
    assert apply(world, ledger, [commit_early]) == ["unknown-author"]
    admit = entries.build_admit(regulators(world), world.chain_id, newcomer, 1, 1)
    under_signed = entries.build_admit(regulators(world)[1:], world.chain_id, newcomer, 2, 1)
    assert apply(world, ledger, [under_signed, admit, commit_early]) == ["governance-threshold", 0, 1]
    assert ledger.participant("sz-bank").status == "active"
    again = entries.build_admit(regulators(world), world.chain_id, newcomer, 3, 1)
    suspend = entries.build_suspend(regulators(world), world.chain_id, "sz-bank", 4, 1)
    suspend_twice = entries.build_suspend(regulators(world), world.chain_id, "sz-bank", 5, 1)
    suspend_nobody = entries.build_suspend(regulators(world), world.chain_id, "nobody", 6, 1)
    late = entries.build_commit(newcomer_key, "sz-bank", world.chain_id, commitment(2), "credit-score", "CN", 2, 1)
    assert apply(world, ledger, [again, suspend, suspend_twice, suspend_nobody, late]) == [
        "participant-exists", 2, "already-suspended", "unknown-participant", "suspended"]
    # Re-admission with a new key reactivates; the old key no longer works.
    new_key = key_from("sz-bank rotated")
    readmit = entries.build_admit(regulators(world), world.chain_id,
                                  Participant("sz-bank", "CN", "bank", bytes(new_key.verify_key)), 7, 1)
    old_key_commit = entries.build_commit(newcomer_key, "sz-bank", world.chain_id, commitment(3), "credit-score", "CN", 3, 1)
    new_key_commit = entries.build_commit(new_key, "sz-bank", world.chain_id, commitment(3), "credit-score", "CN", 4, 1)
    assert apply(world, ledger, [readmit, old_key_commit, new_key_commit]) == [3, "key-mismatch", 4]
    assert {p.id: p.status for p in ledger.participants()}["sz-bank"] == "active"


def test_apply_is_idempotent_and_checks_the_block(world, ledger):
    author = Author(world, "hk-bureau")
    block = next_block(world, ledger, [author.commit(commitment(1))])
    first = ledger.apply_block(block)
    assert ledger.apply_block(block) == first
    assert ledger.height() == 1
    # A different block at an applied height is an error.
    other = CommittedBlock(
        BlockHeader(**dict(block.header.to_wire(), time_ms=block.header.time_ms + 1)), block.entries, block.certificate)
    with pytest.raises(LedgerError, match="conflicts"):
        ledger.apply_block(other)
    good = next_block(world, ledger, [author.commit(commitment(2))])
    header = good.header

    def with_header(**changes):
        h = BlockHeader(**dict(header.to_wire(), **changes))
        return CommittedBlock(h, good.entries, certify(world, h))

    cases = [
        (with_header(height=3), "does not follow"),
        (with_header(prev_hash=bytes(32)), "does not extend"),
        (with_header(tree_root=bytes(32)), "diverged"),
        (with_header(results_hash=bytes(32)), "diverged"),
        (with_header(tree_size=9), "diverged"),
        (with_header(entry_count=2), "entries do not match"),
        (with_header(time_ms=block.header.time_ms - 1), "before its parent"),
        (with_header(validator_set_hash=bytes(32)), "validator set"),
        (CommittedBlock(header, good.entries, certify(world, header, signers=("hk-1", "hk-2"))), "certificate"),
        (CommittedBlock(header, good.entries, certify(world, header, signers=("hk-1", "hk-2", "hk-2"))), "certificate"),
    ]
    for bad, message in cases:
        with pytest.raises(LedgerError, match=message):
            ledger.apply_block(bad)
        assert ledger.height() == 1 and ledger.tree_size() == 1
    assert [o.leaf_index for o in ledger.apply_block(good)] == [1]


def test_reopen_keeps_everything(world, tmp_path):
    path = tmp_path / "store"
    store = Ledger.open(path, world.genesis)
    author = Author(world, "hk-bureau")
    for n in range(5):
        store.apply_block(next_block(world, store, [author.commit(commitment(10 * n + i)) for i in range(n + 1)]))
    store.write_consensus_state([(b"view", b"\x07"), (b"vote/1", b"a"), (b"vote/2", b"b")])
    store.write_consensus_state([(b"vote/1", None)])
    root, size, head = store.tree_root(), store.tree_size(), store.head()
    store.close()
    store = Ledger.open(path, world.genesis)
    assert (store.tree_root(), store.tree_size(), store.head(), store.height()) == (root, size, head, 5)
    assert store.load_consensus_state() == {b"view": b"\x07", b"vote/2": b"b"}
    assert store.nonce_used("hk-bureau", 15) and not store.nonce_used("hk-bureau", 16)
    assert store.apply_block(next_block(world, store, [author.commit(commitment(999))])) [0].leaf_index == size
    store.close()


def test_a_header_naming_epoch_1_is_stored_and_served_unchanged(tmp_path):
    """The store keeps a header's own bytes: an epoch-1 header reads back equal, with its epoch and
    hash, after a reopen and through the catch-up encoding; an epoch-0 parent stays without the key."""
    from consensus.epochs import RotateValidatorKey
    from consensus.messages import decode_message, encode_catch_up_response

    world = make_world(epoch_margin_heights=1)
    path = tmp_path / "store"
    store = Ledger.open(path, world.genesis)
    author = Author(world, "hk-bureau")
    new_key = key_from("validator hk-1, rotated")
    rotate = reconfigure(world, 0, [RotateValidatorKey("hk-1", new_key.verify_key.encode())])
    assert store.apply_block(next_block(world, store, [rotate]))[0].ok           # height 1: epoch 1 from 3
    store.apply_block(next_block(world, store, [author.commit(commitment(1))]))  # height 2: still epoch 0
    world.validator_keys["hk-1"] = new_key
    block = next_block(world, store, [author.commit(commitment(2))])
    assert block.header.epoch == 1
    store.apply_block(block)
    store.close()
    store = Ledger.open(path, world.genesis)
    try:
        stored = store.header(3)
        assert stored == block.header and stored.epoch == 1 and stored.hash() == block.header.hash()
        assert store.head() == block.header and store.header(2).epoch == 0
        assert "epoch" not in msgpack.unpackb(store.header(2).encode(), raw=False)
        assert store.epochs.latest_epoch == 1 and store.epochs.entry_leaves == (0,)
        message = decode_message(encode_catch_up_response([store.committed_block(3)]), world.genesis.validator_set,
                                 world.chain_id)
        assert message.blocks[0].header == block.header
        assert message.blocks[0].certificate.to_wire() == block.certificate.to_wire()
        assert store.apply_block(next_block(world, store, [author.commit(commitment(3))]))[0].ok
    finally:
        store.close()


def test_consensus_changes_given_with_a_block_are_durable_with_it_and_only_with_it(world, tmp_path):
    """apply_block(block, consensus_changes) writes the replica's records in the block's batch: after a
    reopen both are there; a refused block writes neither; an already-applied block still takes them."""
    path = tmp_path / "store"
    store = Ledger.open(path, world.genesis)
    author = Author(world, "hk-bureau")
    store.write_consensus_state([(b"vote/1", b"old"), (b"view", b"\x01")])
    first = next_block(world, store, [author.commit(commitment(1))])
    store.apply_block(first, [(b"committed/1", b"ids"), (b"vote/1", None)])
    refused = next_block(world, store, [author.commit(commitment(2))])
    wrong_header = BlockHeader(**dict(refused.header.to_wire(), tree_root=bytes(32)))
    wrong = CommittedBlock(wrong_header, refused.entries, certify(world, wrong_header))
    with pytest.raises(LedgerError, match="diverged"):
        store.apply_block(wrong, [(b"committed/2", b"never")])
    store.apply_block(first, [(b"view", b"\x02")])      # idempotent, and the changes still land
    store.close()
    store = Ledger.open(path, world.genesis)
    assert store.height() == 1
    assert store.load_consensus_state() == {b"committed/1": b"ids", b"view": b"\x02"}
    store.close()


def test_open_refuses_other_stores(world, tmp_path):
    path = tmp_path / "store"
    Ledger.open(path, world.genesis).close()
    with pytest.raises(LedgerError, match="belongs to chain 'bayledger-test'.*'other'"):
        Ledger.open(path, make_world(chain_id="other").genesis)
    different = make_world(governance_threshold=1, regulators_per_side=2).genesis
    with pytest.raises(LedgerError, match="different genesis"):
        Ledger.open(path, different)
    held = Ledger.open(path, world.genesis)
    with pytest.raises(LedgerError, match="another node"):
        Ledger.open(path, world.genesis)
    held.close()
    db = plyvel.DB(str(path))
    db.put(b"mformat", bytes((ledger_module.FORMAT_VERSION + 1,)))
    db.close()
    with pytest.raises(LedgerError, match=f"format version {ledger_module.FORMAT_VERSION + 1}; "
                                          f"this software reads version {ledger_module.FORMAT_VERSION}"):
        Ledger.open(path, world.genesis)
    foreign = tmp_path / "foreign"
    db = plyvel.DB(str(foreign), create_if_missing=True)
    db.put(b"hello", b"world")
    db.close()
    with pytest.raises(LedgerError, match="not a Bayledger store"):
        Ledger.open(foreign, world.genesis)
    with pytest.raises(LedgerError, match="cannot open"):
        Ledger.open(tmp_path / "missing", world.genesis, create=False)


def test_write_buffer_size_is_checked_at_its_edges(world, tmp_path):
    """LevelDB's memtable size is taken within [min, max] and refused outside, naming the range."""
    low, high = ledger_module.leveldb_write_buffer_bytes_min, ledger_module.leveldb_write_buffer_bytes_max
    for size in (low, high):
        store = Ledger.open(tmp_path / f"ok-{size}", world.genesis, write_buffer_bytes=size)
        author = Author(world, "hk-bureau")
        assert store.apply_block(next_block(world, store, [author.commit(commitment(1))]))[0].ok
        store.close()
    for size in (low - 1, high + 1, float(low), None):
        with pytest.raises(LedgerError, match=f"write_buffer_bytes must be an integer in {low}..{high}"):
            Ledger.open(tmp_path / "refused", world.genesis, write_buffer_bytes=size)
    assert not (tmp_path / "refused").exists()   # refused before anything is created


def test_proofs_from_store_match_recomputation(world, ledger):
    """Roots, inclusion and consistency proofs read from the store equal an in-memory RFC 6962 tree,
    for every size and leaf, across blocks of uneven sizes (exercises the rehashed low levels)."""
    author = Author(world, "hk-bureau")
    tree = merkle.MemoryTree()
    n = 0
    for block_size in (1, 2, 3, 8, 5, 13, 1, 21, 7, 9):
        batch = [author.commit(commitment(n + i)) for i in range(block_size)]
        n += block_size
        for data in batch:
            tree.append(data)
        apply(world, ledger, batch)
        assert ledger.tree_root() == tree.root() == ledger.head().tree_root
    for size in range(1, tree.size + 1):
        assert ledger.tree_root(size) == tree.root(size)
        for index in range(size):
            assert ledger.inclusion_proof(index, size) == tree.inclusion_path(index, size)
        for size1 in range(1, size + 1):
            assert ledger.consistency_proof(size1, size) == tree.consistency_proof(size1, size)
    with pytest.raises(LedgerError):
        ledger.inclusion_proof(tree.size)
    with pytest.raises(LedgerError):
        ledger.consistency_proof(0, 3)
    with pytest.raises(LedgerError):
        ledger.tree_root(tree.size + 1)


def test_speculative_execution_never_writes_and_is_reused(world, ledger):
    """Three blocks executed ahead (each on its in-flight parent) change nothing on disk; applying them
    later gives the same roots; rules see the in-flight state (revoke of an in-flight commit)."""
    author = Author(world, "hk-bureau")
    app = LedgerApplication(ledger)
    assert app.check_request(author.commit(commitment(7))) is None
    assert app.check_request(b"junk") == "entry-malformed"
    b1 = next_block(world, ledger, [author.commit(commitment(1)), author.commit(commitment(2))], parent=None)
    b2 = next_block(world, ledger, [author.revoke(commitment(1)), author.commit(commitment(1))], parent=b1.header)
    b3 = next_block(world, ledger, [author.commit(commitment(3))], parent=b2.header)
    assert ledger.height() == 0 and ledger.tree_size() == 0
    assert ledger.commitment_record(commitment(1)) is None
    # Unknown parent: cannot execute.
    stranger = BlockHeader(**dict(b2.header.to_wire(), tree_root=bytes(32)))
    assert app.execute(stranger, 3, b3.header.time_ms, list(b3.entries)) is None
    assert app.execute(b1.header, 5, b3.header.time_ms, list(b3.entries)) is None
    for block in (b1, b2, b3):
        outcomes = ledger.apply_block(block)
        assert ledger.head() == block.header
    assert [o.reason for o in outcomes] == [None]
    assert ledger.block_results(2) == [2, "duplicate-commitment"]
    assert ledger.commitment_status(commitment(1), 0)["status"] == "revoked"
    # Below the applied head there is nothing to execute.
    assert app.execute(b2.header, 3, b3.header.time_ms, list(b3.entries)) is None


def test_applied_execution_is_released_by_its_in_flight_children(world, ledger):
    """Under load every block is executed on its in-flight parent. Once the parent is applied, the
    child reads the store, not the parent's overlay: otherwise each block would hold its parent
    alive and every lookup (e.g. the duplicate-commitment check of each new commitment) would walk
    a chain as long as the node's uptime."""
    import gc
    import weakref

    author = Author(world, "hk-bureau")
    blocks = [next_block(world, ledger, [author.commit(commitment(0))], parent=None)]
    released = []
    for n in range(1, 6):
        # The next block is executed while its parent is still in flight, then the parent applies.
        blocks.append(next_block(world, ledger, [author.commit(commitment(n))], parent=blocks[-1].header))
        parent_execution = next(e for e in ledger._speculative.values() if e.height == n)
        released.append(weakref.ref(parent_execution))
        del parent_execution
        ledger.apply_block(blocks[-2])
    gc.collect()
    assert [ref() for ref in released] == [None] * 5
    (in_flight,) = ledger._speculative.values()
    assert in_flight.height == 6 and in_flight.parent is ledger._store_view
    # Reads through the cut are the store's: an applied commitment is a duplicate for the child.
    assert in_flight.commitment(commitment(4)) == ledger.commitment_record(commitment(4))
    ledger.apply_block(blocks[-1])
    assert ledger.height() == 6 and ledger.block_results(6) == [5]


def test_fork_in_flight(world, ledger):
    """Two different in-flight children of one parent; once one is applied, the other's child is refused."""
    a, b = Author(world, "hk-bureau"), Author(world, "cn-bureau")
    b1 = next_block(world, ledger, [a.commit(commitment(1))], parent=None)
    ledger.apply_block(b1)
    left = next_block(world, ledger, [a.commit(commitment(2))], parent=b1.header)
    right = next_block(world, ledger, [b.commit(commitment(2), jurisdiction="CN")], parent=b1.header)
    assert left.header.hash() != right.header.hash()
    right_child = next_block(world, ledger, [b.commit(commitment(3), jurisdiction="CN")], parent=right.header)
    ledger.apply_block(left)
    assert ledger.execute(right.header, 3, right_child.header.time_ms, list(right_child.entries)) is None
    with pytest.raises(LedgerError):
        ledger.apply_block(right_child)
    assert ledger.commitment_status(commitment(2), 0)["author"] == "hk-bureau"


def test_speculative_limit(world, ledger, monkeypatch):
    """At most speculative_blocks_max executions are kept; the lowest heights go first."""
    monkeypatch.setattr(ledger_module, "speculative_blocks_max", 3)
    author = Author(world, "hk-bureau")
    parent = None
    for n in range(5):
        parent = next_block(world, ledger, [author.commit(commitment(n))], parent=parent).header
    assert len(ledger._speculative) == 3
    assert min(e.height for e in ledger._speculative.values()) == 3


def test_stored_block_serves_catch_up_to_another_store(world, ledger, tmp_path):
    """A block read back from one store (rejected entries included), sent through the consensus
    catch-up encoding, applies on a second store to the same head."""
    from consensus.messages import CatchUpResponse, decode_message, encode_catch_up_response

    author = Author(world, "hk-bureau")
    first = author.commit(commitment(1))
    apply(world, ledger, [first, first, author.commit(commitment(2))])
    apply(world, ledger, [author.revoke(commitment(1)), b"\x00not an entry"])
    blocks = [ledger.committed_block(h) for h in (1, 2)]
    message = decode_message(encode_catch_up_response(blocks), world.genesis.validator_set, world.chain_id)
    assert isinstance(message, CatchUpResponse)
    other = Ledger.open(tmp_path / "other", world.genesis)
    try:
        for block in message.blocks:
            other.apply_block(block)
        assert other.head() == ledger.head() and other.tree_root() == ledger.tree_root()
        assert other.block_results(1) == [0, "replayed-nonce", 1]
        assert other.block_results(2) == [2, "entry-malformed"]
    finally:
        other.close()


def test_checked_entries_are_executed_without_decoding_again(world, ledger, tmp_path, monkeypatch):
    """An entry that passed the stateless check is executed from the decoding the check made (one
    decode per entry on a validator, not two), with the same results as decoding it afresh; only
    valid entries are kept, and at most decoded_entries_max of them, oldest forgotten first."""
    monkeypatch.setattr(ledger_module, "decoded_entries_max", 3)
    author = Author(world, "hk-bureau")
    batch = [author.commit(commitment(n)) for n in range(4)] + [author.revoke(commitment(0))]
    unsigned = entries.sign_entry(entries.decode_entry(batch[1]).body, world.chain_id, [("hk-bureau", key_from("x"))])
    assert ledger.check_entry(unsigned) == "bad-signature"
    for data in batch[:3]:
        assert ledger.check_entry(data) is None
    assert ledger.check_entry(batch[0]) is None            # checked again: still remembered once
    assert list(ledger._decoded) == batch[:3]
    for data in batch[3:]:
        assert ledger.check_entry(data) is None
    assert list(ledger._decoded) == batch[2:]              # the two oldest forgotten

    decodes = []
    real_decode = execution.decode_entry
    monkeypatch.setattr(execution, "decode_entry", lambda data: decodes.append(data) or real_decode(data))
    block = next_block(world, ledger, batch + [unsigned], parent=None)
    assert decodes == batch[:2] + [unsigned]               # only those not remembered were decoded
    outcomes = [o.reason if not o.ok else o.leaf_index for o in ledger.apply_block(block)]

    fresh = Ledger.open(tmp_path / "fresh", world.genesis)   # nothing checked: every entry decoded
    try:
        assert outcomes == [o.reason if not o.ok else o.leaf_index for o in fresh.apply_block(block)]
        assert fresh.head() == ledger.head()
    finally:
        fresh.close()
    assert outcomes == [0, 1, 2, 3, 4, "replayed-nonce"]    # the re-signed copy of entry 1 (same nonce)


def test_the_application_checks_shape_without_signatures(world, ledger):
    application = LedgerApplication(ledger)
    author = Author(world, "hk-bureau")
    good = author.commit(commitment(1))
    forged = entries.sign_entry(entries.decode_entry(good).body, world.chain_id, [("hk-bureau", key_from("x"))])
    assert application.check_request(forged) == "bad-signature"
    assert application.check_request_shape(forged) is None
    assert application.check_request_shape(b"\xc1") == "entry-malformed"
    assert application.check_request_shape(good) is None and application.check_request(good) is None
