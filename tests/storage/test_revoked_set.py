"""The revoked set in the ledger (stored SMT nodes, results_hash, speculative execution) and the status
section of match proofs: a node cannot hide a revocation, and every tampering is named, never raised."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus import codec
from storage import entries, proofs, smt
from storage.ledger import Ledger, outcomes_hash
from storage.proofs import verify_match_proof
from tests.support.storage_helpers import (
    Author, commitment, expected_smt_store, flip_bit, make_world, next_block, reference_smt_root, tampered,
)


def _stored_smt_ids(store: Ledger) -> set[bytes]:
    with store._db.iterator(prefix=b"r", include_value=False) as it:
        return {key[1:] for key in it}


def test_results_hash_commits_to_the_revoked_set(world, ledger, tmp_path):
    author = Author(world, "hk-bureau")
    regulators = list(world.governance_keys.items())
    ledger.apply_block(next_block(world, ledger, [author.commit(commitment(i)) for i in range(8)]))
    assert ledger.revoked_root() == smt.EMPTY_ROOT
    revoked: set[bytes] = set()
    plan = [
        [author.revoke(commitment(1)), author.revoke(commitment(2))],
        [entries.build_governance_revoke(regulators, world.chain_id, commitment(5), "court order", 1, 1),
         author.revoke(commitment(1)),            # already-revoked: no change to the set
         author.revoke(commitment(99))],          # unknown-commitment: no change either
        [author.commit(commitment(8))],           # no revoke: the root carries over
    ]
    for block_entries, newly in zip(plan, [{commitment(1), commitment(2)}, {commitment(5)}, set()]):
        block = next_block(world, ledger, block_entries)
        ledger.apply_block(block)
        revoked |= newly
        root = reference_smt_root(revoked)
        assert ledger.revoked_root() == root
        header = ledger.head()
        assert header.results_hash == smt.results_hash(outcomes_hash(ledger.block_results(header.height)), root)
    assert ledger.block_results(3)[1:] == ["already-revoked", "unknown-commitment"]
    # The compact store: nodes with >= 2 revoked below, and each revoked one's highest node alone.
    assert _stored_smt_ids(ledger) == set(expected_smt_store(revoked))
    # Reopened (cold caches), the root is read back and a further revoke builds on it.
    ledger.close()
    store = Ledger.open(tmp_path / "ledger", world.genesis)
    try:
        assert store.revoked_root() == reference_smt_root(revoked)
        store.apply_block(next_block(world, store, [author.revoke(commitment(7))]))
        assert store.revoked_root() == reference_smt_root(revoked | {commitment(7)})
    finally:
        store.close()


def test_speculative_revokes_give_the_same_root_as_apply(world, tmp_path):
    """Blocks executed ahead on a backup (each on its in-flight parent, revokes in two of them) carry
    the root that a fresh store computes at apply; nothing reaches the disk before apply."""
    backup = Ledger.open(tmp_path / "backup", world.genesis)
    fresh = Ledger.open(tmp_path / "fresh", world.genesis)
    try:
        author = Author(world, "hk-bureau")
        b1 = next_block(world, backup, [author.commit(commitment(i)) for i in range(4)], parent=None)
        b2 = next_block(world, backup, [author.revoke(commitment(0)), author.commit(commitment(4))], parent=b1.header)
        b3 = next_block(world, backup, [author.revoke(commitment(1)), author.revoke(commitment(4))], parent=b2.header)
        assert backup.height() == 0 and not _stored_smt_ids(backup)
        assert backup.revoked_root() == smt.EMPTY_ROOT
        for block in (b1, b2, b3):
            fresh.apply_block(block)   # executes afresh; refuses a results_hash it does not reproduce
            backup.apply_block(block)  # reuses the speculative executions
        expected = reference_smt_root({commitment(0), commitment(1), commitment(4)})
        assert fresh.revoked_root() == backup.revoked_root() == expected
        assert _stored_smt_ids(fresh) == _stored_smt_ids(backup)
    finally:
        backup.close()
        fresh.close()


@pytest.fixture
def served(world, tmp_path):
    """Commitments 0..9 at height 1, 3 revoked at height 2, 10 committed at height 3; plus proofs
    served at height 1 (before the revoke) for 3 and 5."""
    store = Ledger.open(tmp_path / "store", world.genesis)
    author = Author(world, "hk-bureau")
    store.apply_block(next_block(world, store, [author.commit(commitment(i)) for i in range(10)]))
    early = {n: store.match_proof(commitment(n)) for n in (3, 5)}
    store.apply_block(next_block(world, store, [author.revoke(commitment(3), "withdrawn")]))
    store.apply_block(next_block(world, store, [author.commit(commitment(10))]))
    store.early = early
    yield store
    store.close()


def test_match_and_revoked_say_as_of_when(world, served):
    verdict = verify_match_proof(served.match_proof(commitment(5)), world.genesis, commitment(5), now_ms=0)
    assert verdict.status == "match"
    assert (verdict.details["status_height"], verdict.details["status_time_ms"]) == (3, served.header(3).time_ms)
    status = codec.unpack_canonical(served.match_proof(commitment(5)))["status"]
    assert status["header"] == served.head().to_wire() and status["revoked_root"] == served.revoked_root()
    verdict = verify_match_proof(served.match_proof(commitment(3)), world.genesis, commitment(3), now_ms=0)
    assert verdict.status == "revoked" and verdict.details["revoked_height"] == 2
    assert verdict.details["status_height"] == 3
    # A proof served before the revoke was a match as of height 1, and says so.
    verdict = verify_match_proof(served.early[3], world.genesis, commitment(3), now_ms=0)
    assert verdict.status == "match" and verdict.details["status_height"] == 1


def test_a_node_cannot_hide_a_revocation(world, served):
    revoked = served.match_proof(commitment(3))
    stripped = tampered(revoked, lambda v: v.pop("revocation"))
    verdict = verify_match_proof(stripped, world.genesis, commitment(3), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "status.revocation-missing") and "height 3" in verdict.message
    # Nor by pairing the commit with the (certified, genuine) absence path of another commitment.
    other_path = msgpack.unpackb(served.match_proof(commitment(5)))["status"]["revoked_path"]
    spliced = tampered(stripped, lambda v: v["status"].__setitem__("revoked_path", other_path))
    verdict = verify_match_proof(spliced, world.genesis, commitment(3), now_ms=0)
    assert verdict.status == "invalid" and verdict.check in ("status.revoked-path", "status.revocation-missing")
    # An older status (before the revoke) with the revocation is still "revoked": both are proven.
    old_status = msgpack.unpackb(served.early[3])["status"]
    older = tampered(revoked, lambda v: v.__setitem__("status", old_status))
    verdict = verify_match_proof(older, world.genesis, commitment(3), now_ms=0)
    assert verdict.status == "revoked" and verdict.details["status_height"] == 1


def test_revocation_the_set_denies_is_named(world, served, tmp_path):
    """Validators that certify a fork (possible with the test keys) could show a revocation on one
    branch and a set without it on the other, at a later height: the verifier names the conflict."""
    fork = Ledger.open(tmp_path / "fork", world.genesis)
    try:
        fork.apply_block(served.committed_block(1))
        other = Author(world, "cn-bureau")
        fork.apply_block(next_block(world, fork, [other.commit(commitment(50), jurisdiction="CN")]))
        fork.apply_block(next_block(world, fork, [other.commit(commitment(51), jurisdiction="CN")]))
        assert fork.head().hash() != served.head().hash()
        fork_status = msgpack.unpackb(fork.match_proof(commitment(3)))["status"]
    finally:
        fork.close()
    spliced = tampered(served.match_proof(commitment(3)), lambda v: v.__setitem__("status", fork_status))
    verdict = verify_match_proof(spliced, world.genesis, commitment(3), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "status.revocation-not-in-set")


def test_each_status_tampering_is_named(world, served):
    good = served.match_proof(commitment(5))
    status = msgpack.unpackb(good)["status"]
    other_genesis = make_world(chain_id="elsewhere").genesis

    def status_set(key, value):
        return lambda v: v["status"].__setitem__(key, value)

    def status_header(name, value):
        return lambda v: v["status"]["header"].__setitem__(name, value)

    def path_set(key, value):
        return lambda v: v["status"]["revoked_path"].__setitem__(key, value)

    bitmap = status["revoked_path"]["bitmap"]
    first_set = next(h for h in range(256) if (bitmap[h // 8] >> (h % 8)) & 1)
    cases = [
        (lambda v: v.pop("status"), "status.format"),
        (lambda v: v.__setitem__("status", [1, 2]), "status.format"),
        (lambda v: v["status"].pop("revoked_root"), "status.format"),
        (status_set("outcomes_hash", status["outcomes_hash"][:31]), "status.format"),
        (status_set("revoked_root", None), "status.format"),
        (status_set("outcomes_hash", flip_bit(status["outcomes_hash"], 5)), "status.results-hash"),
        (status_set("revoked_root", flip_bit(status["revoked_root"], 31)), "status.results-hash"),
        (status_header("time_ms", 1), "status.certificate"),
        (status_header("results_hash", bytes(32)), "status.certificate"),
        (status_header("colour", 1), "status.header"),
        (status_header("chain_id", "elsewhere"), "status.chain"),
        (status_set("header", "junk"), "status.header"),
        (lambda v: v["status"]["certificate"]["signatures"].pop(), "status.certificate"),
        (status_set("certificate", None), "status.certificate"),
        (path_set("bitmap", flip_bit(bitmap, first_set // 8)), "status.revoked-path"),
        (path_set("bitmap", bitmap[:-1]), "status.revoked-path"),
        (path_set("siblings", []), "status.revoked-path"),
        (path_set("siblings", [flip_bit(h) for h in status["revoked_path"]["siblings"]]), "status.revoked-path"),
        (path_set("siblings", "nope"), "status.revoked-path"),
        (path_set("extra", 1), "status.revoked-path"),
        (status_set("revoked_path", [bitmap, []]), "status.revoked-path"),
    ]
    for change, check in cases:
        verdict = verify_match_proof(tampered(good, change), world.genesis, commitment(5), now_ms=0)
        assert (verdict.status, verdict.check) == ("invalid", check), (check, verdict)
        assert verdict.message
    # A genuine status of an earlier height than the commit: named.
    late = served.match_proof(commitment(10))
    early_status = msgpack.unpackb(served.early[5])["status"]
    verdict = verify_match_proof(tampered(late, lambda v: v.__setitem__("status", early_status)),
                                 world.genesis, commitment(10), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "status.height")
    # A proof of another chain (same keys): its status fails too, before it is even looked at.
    assert verify_match_proof(good, other_genesis, commitment(5), now_ms=0).check == "chain"


def _status_span(proof: bytes) -> tuple[int, int]:
    """Byte range of the status section's value inside the encoded proof."""
    encoded = codec.pack(codec.unpack_canonical(proof)["status"])
    start = proof.index(encoded)
    return start, start + len(encoded)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_bit_flip_in_the_status_section_is_never_valid(world, served, data):
    n = data.draw(st.sampled_from([3, 5]))  # revoked and active
    good = served.match_proof(commitment(n))
    start, end = _status_span(good)
    bit = data.draw(st.integers(start * 8, end * 8 - 1))
    flipped = bytearray(good)
    flipped[bit // 8] ^= 1 << (bit % 8)
    verdict = verify_match_proof(bytes(flipped), world.genesis, commitment(n), now_ms=0)
    assert verdict.status == "invalid", (n, bit - start * 8, verdict)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_status_structures_never_raise(world, served, data):
    n = data.draw(st.sampled_from([3, 5]))
    good = msgpack.unpackb(served.match_proof(commitment(n)))
    path = data.draw(st.sampled_from([
        ("status",), ("status", "header"), ("status", "certificate"), ("status", "outcomes_hash"),
        ("status", "revoked_root"), ("status", "revoked_path"), ("status", "revoked_path", "bitmap"),
        ("status", "revoked_path", "siblings"), ("status", "header", "height"),
        ("status", "header", "results_hash"),
    ]))
    target = good
    for key in path[:-1]:
        target = target[key]
    original = target[path[-1]]
    value = target[path[-1]] = data.draw(_values)
    verdict = verify_match_proof(good, world.genesis, commitment(n), now_ms=0)
    if value == original:  # e.g. no siblings drawn for a path that has none
        assert verdict.valid
    else:
        assert verdict.status == "invalid", (path, verdict)


def test_proof_with_many_revoked_stays_small(world, ledger):
    """Proof size grows with log2 of the revoked count (a few siblings), far below proof_base_bytes_max."""
    author = Author(world, "hk-bureau")
    ledger.apply_block(next_block(world, ledger, [author.commit(commitment(i)) for i in range(300)]))
    ledger.apply_block(next_block(world, ledger, [author.revoke(commitment(i)) for i in range(1, 300)]))
    for n in (0, 1):
        proof = ledger.match_proof(commitment(n))
        siblings = codec.unpack_canonical(proof)["status"]["revoked_path"]["siblings"]
        assert 6 <= len(siblings) <= 24 and len(proof) < proofs.proof_base_bytes_max // 8
        expected = "match" if n == 0 else "revoked"
        assert verify_match_proof(proof, world.genesis, commitment(n), now_ms=0).status == expected


def test_cli_prints_not_revoked_as_of(world, served, capsys):
    """node/cli/participant.py's verdict line names the status height and time (display only; exit codes kept)."""
    from node.cli.participant import _print_verdict

    verdict = verify_match_proof(served.match_proof(commitment(5)), world.genesis, commitment(5), now_ms=0)
    assert _print_verdict(verdict, commitment(5)) == 0
    out = capsys.readouterr().out
    assert out.startswith("MATCH") and "not revoked as of height 3 (" in out
    verdict = verify_match_proof(served.match_proof(commitment(3)), world.genesis, commitment(3), now_ms=0)
    assert _print_verdict(verdict, commitment(3)) == 1
    assert capsys.readouterr().out.startswith("REVOKED")


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 600])
def test_smt_cache_limit_edge(world, ledger, monkeypatch, limit):
    """The in-memory node cache never exceeds smt_cache_entries_max (blocks here write 1 to a few
    nodes: limits at, below and above that), and whatever it drops, roots and proofs stay right."""
    from storage import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "smt_cache_entries_max", limit)
    author = Author(world, "hk-bureau")
    ledger.apply_block(next_block(world, ledger, [author.commit(commitment(i)) for i in range(6)]))
    revoked: set[bytes] = set()
    for batch in ([1], [2, 3], [4]):
        ledger.apply_block(next_block(world, ledger, [author.revoke(commitment(i)) for i in batch]))
        revoked |= {commitment(i) for i in batch}
        assert len(ledger._smt_cache) <= limit
        assert ledger.revoked_root() == reference_smt_root(revoked)
        for n in (0, 1, 5):
            expected = "revoked" if commitment(n) in revoked else "match"
            assert verify_match_proof(ledger.match_proof(commitment(n)), world.genesis, commitment(n),
                                      now_ms=0).status == expected
            assert len(ledger._smt_cache) <= limit
