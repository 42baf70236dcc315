"""Match proofs and consistency proofs: built by the ledger, verified offline with genesis alone;
every tampering is caught and named."""

from __future__ import annotations

import ast
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus import codec
from storage import entries, proofs
from storage.ledger import Ledger
from storage.proofs import verify_consistency_proof, verify_match_proof
from storage.genesis import Genesis
from consensus.epochs import AddValidator
from consensus.validators import Validator
from tests.support.storage_helpers import (
    Author, commitment, flip_bit, key_from, make_world, next_block, reconfigure, tampered,
)


@pytest.fixture
def filled(world, tmp_path):
    """A store with commitments 0..29 over 4 blocks; 3 revoked later by its author, 4 by governance."""
    store = Ledger.open(tmp_path / "store", world.genesis)
    author = Author(world, "hk-bureau")
    n = 0
    for size in (5, 10, 1, 14):
        store.apply_block(next_block(world, store, [author.commit(commitment(n + i), expires_ms=2_000_000_000_000 if n + i == 7 else None)
                                                    for i in range(size)]))
        n += size
    regulators = list(world.governance_keys.items())
    store.apply_block(next_block(world, store, [
        author.revoke(commitment(3), "superseded"),
        entries.build_governance_revoke(regulators, world.chain_id, commitment(4), "court order", 1, 1),
    ]))
    yield store
    store.close()


def test_match(world, filled):
    proof = filled.match_proof(commitment(12))
    verdict = verify_match_proof(proof, world.genesis, commitment(12), now_ms=0)
    assert verdict.status == "match" and verdict.check is None and verdict.valid
    d = verdict.details
    assert (d["height"], d["leaf_index"], d["author"], d["kind"], d["jurisdiction"]) == (2, 12, "hk-bureau", "credit-report", "HK")
    assert d["time_ms"] == filled.header(2).time_ms
    decoded = codec.unpack_canonical(proof)
    assert decoded["tree_size"] == filled.header(2).tree_size == 15
    assert decoded["header"] == filled.header(2).to_wire()
    assert "revocation" not in decoded
    assert len(proof) <= proofs.proof_bytes_max
    # Also accepted already decoded.
    assert verify_match_proof(decoded, world.genesis, commitment(12), now_ms=0).status == "match"
    assert filled.match_proof(commitment(999)) is None


def test_revoked_by_author_and_by_governance(world, filled):
    verdict = verify_match_proof(filled.match_proof(commitment(3)), world.genesis, commitment(3), now_ms=0)
    assert verdict.status == "revoked"
    assert verdict.details["revoked_height"] == 5 and verdict.details["revoke_reason"] == "superseded"
    assert verdict.details["revoked_by"] == "hk-bureau" and verdict.details["height"] == 1
    verdict = verify_match_proof(filled.match_proof(commitment(4)), world.genesis, commitment(4), now_ms=0)
    assert verdict.status == "revoked" and verdict.details["revoked_by"] == "governance"


def test_expired_at_query_time(world, filled):
    proof = filled.match_proof(commitment(7))
    assert verify_match_proof(proof, world.genesis, commitment(7), now_ms=2_000_000_000_000 - 1).status == "match"
    assert verify_match_proof(proof, world.genesis, commitment(7), now_ms=2_000_000_000_000).status == "expired"
    # Default: this machine's clock (2026 is before the expiry in 2033).
    assert verify_match_proof(proof, world.genesis, commitment(7)).status == "match"


def test_each_tampering_is_named(world, filled):
    good = filled.match_proof(commitment(12))
    revoked = filled.match_proof(commitment(3))
    other_raw = world.genesis.to_dict()
    other_raw["validators"][0]["public_key"] = bytes(key_from("another hk-1").verify_key).hex()
    other_genesis = Genesis.from_dict(other_raw)  # same chain id, other validator set

    def set_(key, value):
        return lambda v: v.__setitem__(key, value)

    def header_field(name, value):
        return lambda v: v["header"].__setitem__(name, value)

    cases = [
        (good, set_("entry", flip_bit(msgpack.unpackb(good)["entry"], 40)), "inclusion"),
        (good, set_("leaf_index", 11), "inclusion"),
        (good, set_("leaf_index", 15), "leaf-index"),
        (good, set_("leaf_index", -1), "leaf-index"),
        (good, set_("tree_size", 16), "tree-size"),
        (good, set_("inclusion_path", msgpack.unpackb(good)["inclusion_path"][:-1]), "inclusion"),
        (good, set_("inclusion_path", [flip_bit(h) for h in msgpack.unpackb(good)["inclusion_path"]]), "inclusion"),
        (good, set_("inclusion_path", "nope"), "inclusion"),
        (good, header_field("tree_root", bytes(32)), "certificate"),
        (good, header_field("time_ms", 5), "certificate"),
        (good, header_field("colour", 5), "header"),
        (good, header_field("chain_id", "elsewhere"), "chain"),
        (good, lambda v: v["certificate"]["signatures"].pop(), "certificate"),
        (good, lambda v: v["certificate"].__setitem__("view", 9), "certificate"),
        (good, set_("certificate", "junk"), "certificate"),
        (good, set_("version", 1), "format"),  # version 1 had no status section
        (good, lambda v: v.pop("header"), "format"),
        (revoked, lambda v: v["revocation"].__setitem__("entry", msgpack.unpackb(good)["entry"]), "revocation.inclusion"),
        (revoked, lambda v: v["revocation"]["inclusion_path"].pop(), "revocation.inclusion"),
        (revoked, lambda v: v["revocation"]["header"].__setitem__("height", 9), "revocation.certificate"),
    ]
    for proof, change, check in cases:
        verdict = verify_match_proof(tampered(proof, change), world.genesis, commitment(12 if proof is good else 3), now_ms=0)
        assert (verdict.status, verdict.check) == ("invalid", check), (check, verdict)
        assert verdict.message
    # A revocation that is a valid revoke of ANOTHER commitment, spliced in.
    other_revocation = msgpack.unpackb(filled.match_proof(commitment(4)))["revocation"]
    spliced = tampered(good, lambda v: v.__setitem__("revocation", other_revocation))
    verdict = verify_match_proof(spliced, world.genesis, commitment(12), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "revocation.entry")
    # The right proof for another commitment, or another genesis, or garbage.
    assert verify_match_proof(good, world.genesis, commitment(13), now_ms=0).check == "commitment"
    assert verify_match_proof(good, other_genesis, commitment(12), now_ms=0).check == "certificate"
    assert verify_match_proof(b"\xc1", world.genesis, commitment(12)).check == "format"
    assert verify_match_proof(b"\x93\x01\x02\x03", world.genesis, commitment(12)).check == "format"
    assert verify_match_proof(good, world.genesis, b"short").check == "commitment"


def test_a_proof_hashes_each_header_as_it_came_with_its_epoch(tmp_path):
    """A proof from a block of epoch 1 carries the key (and the step to epoch 1) and verifies; a header
    that names another epoch than its height's is refused as `epoch`, and "epoch": 0 is malformed.
    (tests/storage/test_epoch_proofs.py walks longer chains.)"""
    world = make_world(epoch_margin_heights=1)
    world.validator_keys["hk-3"] = key_from("validator hk-3")
    hk3 = Validator("hk-3", bytes(world.validator_keys["hk-3"].verify_key), "HK")
    store = Ledger.open(tmp_path / "store", world.genesis)
    try:
        author = Author(world, "hk-bureau")
        addresses = {"hk-3": {"p2p": "10.0.0.7:26601", "rpc": "10.0.0.7:26701"}}
        store.apply_block(next_block(world, store, [author.commit(commitment(1)),
                                                    reconfigure(world, 0, [AddValidator(hk3)], addresses)]))
        store.apply_block(next_block(world, store, []))
        store.apply_block(next_block(world, store, [author.commit(commitment(2))]))   # epoch 1 from height 3
        zero, one = store.match_proof(commitment(1)), store.match_proof(commitment(2))
        assert "epoch" not in msgpack.unpackb(zero)["header"] and msgpack.unpackb(one)["header"]["epoch"] == 1
        assert msgpack.unpackb(zero)["status"]["header"]["epoch"] == 1, "the status is the epoch-1 head"
        for proof, value in ((zero, commitment(1)), (one, commitment(2))):
            assert verify_match_proof(proof, world.genesis, value, now_ms=0).status == "match"
        cases = [
            (one, lambda v: v["header"].pop("epoch"), "epoch"),
            (one, lambda v: v["header"].__setitem__("epoch", 2), "epoch"),
            (one, lambda v: v["header"].__setitem__("epoch", 0), "header"),
            (one, lambda v: v["header"].__setitem__("time_ms", 0), "certificate"),
            (zero, lambda v: v["header"].__setitem__("epoch", 1), "epoch"),
            (zero, lambda v: v["status"]["header"].pop("epoch"), "status.epoch"),
        ]
        for proof, change, check in cases:
            verdict = verify_match_proof(tampered(proof, change), world.genesis,
                                         commitment(1 if proof is zero else 2), now_ms=0)
            assert (verdict.status, verdict.check) == ("invalid", check), (check, verdict)
        h1, h3 = store.header(1), store.header(3)
        proof = store.consistency_proof(h1.tree_size, h3.tree_size)
        older = {"header": h1.to_wire(), "certificate": store.certificate(1).to_wire()}
        newer = {"header": h3.to_wire(), "certificate": store.certificate(3).to_wire()}
        steps = msgpack.unpackb(one)["epochs"]
        assert verify_consistency_proof(older, newer, proof, world.genesis, steps).status == "match"
        assert verify_consistency_proof(older, newer, proof, world.genesis).check == "newer.epoch"
    finally:
        store.close()


def test_proof_size_limit_edge(world, filled):
    """A proof of exactly proof_bytes_max bytes is decoded (and its padding refused by name: no key
    beyond the documented ones); one byte more is refused unread."""
    limit = proofs.proof_bytes_max
    padding = msgpack.unpackb(filled.match_proof(commitment(12)))
    padding["pad"] = b""
    base = len(msgpack.packb(padding, use_bin_type=True))
    padding["pad"] = b"p" * (limit - base)
    # A longer bin's header is longer (bin 8: 2 bytes, bin 16: 3, bin 32: 5): take the difference off.
    excess = len(msgpack.packb(padding, use_bin_type=True)) - limit
    padding["pad"] = padding["pad"][:len(padding["pad"]) - excess]
    at_limit = msgpack.packb(padding, use_bin_type=True)
    assert len(at_limit) == limit
    verdict = verify_match_proof(at_limit, world.genesis, commitment(12), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "format") and "unknown key(s) 'pad'" in verdict.message
    padding["pad"] += b"p"
    verdict = verify_match_proof(msgpack.packb(padding, use_bin_type=True), world.genesis, commitment(12), now_ms=0)
    assert verdict.check == "format" and "exceeds" in verdict.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_bit_flip_is_never_a_match(world, filled, data):
    """Flipping any single bit of a match proof never yields a valid verdict (all bytes are bound)."""
    good = filled.match_proof(commitment(12))
    bit = data.draw(st.integers(0, len(good) * 8 - 1))
    flipped = bytearray(good)
    flipped[bit // 8] ^= 1 << (bit % 8)
    verdict = verify_match_proof(bytes(flipped), world.genesis, commitment(12), now_ms=0)
    assert verdict.status == "invalid", (bit, verdict)


_canonical_leaves = st.one_of(st.binary(max_size=40), st.integers(min_value=-2**63, max_value=2**64 - 1),
                              st.text(max_size=8), st.booleans(), st.none(), st.lists(st.binary(max_size=33), max_size=4))
_canonical_values = st.recursive(_canonical_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(proven=st.dictionaries(st.text(max_size=6), _canonical_values, max_size=6),
       status=st.dictionaries(st.text(max_size=6), _canonical_values, max_size=4),
       revocation=st.none() | st.dictionaries(st.text(max_size=6), _canonical_values, max_size=3),
       as_encoded=st.sets(st.text(max_size=6), max_size=3))
def test_proof_encoding_is_codec_pack(proven, status, revocation, as_encoded):
    """The proof encoder (values already canonical, some passed as Encoded bytes) writes exactly what
    codec.pack writes for the decoded map: the bytes a verifier re-encodes and hashes."""
    proven = {k: v for k, v in proven.items() if k not in ("version", "status", "revocation")}
    expected = {"version": proofs.MATCH_PROOF_VERSION, **proven, "status": status}
    if revocation is not None:
        expected["revocation"] = revocation
    given_proven = {k: proofs.Encoded(codec.pack(v)) if k in as_encoded else v for k, v in proven.items()}
    given_status = {k: proofs.Encoded(codec.pack(v)) if k in as_encoded else v for k, v in status.items()}
    assert proofs.build_match_proof(given_proven, revocation, given_status) == codec.pack(expected)


def test_proof_block_cache_bound_edge(world, filled, monkeypatch):
    """Proofs of leaves in more blocks than the cache holds stay right; the cache never exceeds its bound."""
    import storage.ledger as ledger_module

    expected = {n: filled.match_proof(commitment(n)) for n in (0, 5, 15, 16)}   # blocks 1, 2, 3, 4
    filled._proof_blocks.clear()
    monkeypatch.setattr(ledger_module, "proof_block_cache_entries_max", 2)
    for _ in range(2):
        for n, proof in expected.items():
            assert filled.match_proof(commitment(n)) == proof
            assert 1 <= len(filled._proof_blocks) <= 2


def test_consistency_between_heads(world, filled):
    h2, h4 = filled.header(2), filled.header(4)
    proof = filled.consistency_proof(h2.tree_size, h4.tree_size)
    older = {"header": h2.to_wire(), "certificate": filled.certificate(2).to_wire()}
    newer = {"header": h4.to_wire(), "certificate": filled.certificate(4).to_wire()}
    assert verify_consistency_proof(older, newer, proof, world.genesis).status == "match"
    assert verify_consistency_proof(h2.to_wire(), h4.to_wire(), proof).status == "match"
    assert verify_consistency_proof(h2.to_wire(), h4.to_wire(), proof[:-1]).check == "consistency"
    forged = dict(h4.to_wire(), tree_root=bytes(32))
    assert verify_consistency_proof(h2.to_wire(), forged, proof).check == "consistency"
    assert verify_consistency_proof(older, dict(newer, header=forged), proof, world.genesis).check == "newer.certificate"
    assert verify_consistency_proof({"x": 1}, h4.to_wire(), proof).check == "header"


def test_verifiers_do_not_import_plyvel():
    """Client code uses proofs.py, merkle.py, entries.py and genesis.py: none may import plyvel."""
    root = Path(__file__).resolve().parents[2] / "storage"
    for name in ("proofs.py", "merkle.py", "entries.py", "genesis.py"):
        tree = ast.parse((root / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
                if node.level and node.module.split(".")[0] == "ledger":
                    imported.add("ledger")
        assert "plyvel" not in imported and "ledger" not in imported and "trio" not in imported, name


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_structures_never_raise(world, filled, data):
    """Any field of a real proof replaced by any msgpack value: a verdict, never an exception."""
    good = msgpack.unpackb(filled.match_proof(commitment(3)))  # revoked: has every part
    path = data.draw(st.sampled_from([
        ("entry",), ("leaf_index",), ("tree_size",), ("inclusion_path",), ("header",), ("certificate",),
        ("header", "height"), ("header", "tree_root"), ("certificate", "signatures"), ("revocation",),
        ("revocation", "entry"), ("revocation", "header"), ("revocation", "leaf_index"), ("version",),
    ]))
    target = good
    for key in path[:-1]:
        target = target[key]
    value = target[path[-1]] = data.draw(_values)
    verdict = verify_match_proof(good, world.genesis, commitment(3), now_ms=0)
    if path == ("revocation",) and not isinstance(value, dict):
        # A revocation is a map or absent: nil (or anything else) is not absence.
        assert (verdict.status, verdict.check) == ("invalid", "revocation.format")
    else:
        assert verdict.status in ("invalid", "revoked")
