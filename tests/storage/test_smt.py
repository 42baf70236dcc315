"""The revoked set's sparse Merkle tree (storage/smt.py) against a from-scratch reference; its proofs
accept exactly the right (key, membership, root) and refuse every tampering by a clear ProofError or a
different root, never another exception."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from storage import smt
from tests.support.storage_helpers import expected_smt_store, reference_smt_root as reference_root


def store_of(keys) -> dict[bytes, bytes]:
    nodes: dict[bytes, bytes] = {}
    for key in keys:
        nodes.update(smt.update(nodes.get, key))
    return nodes


# Keys that often share long prefixes (differing only in the last bytes or bits) as well as random ones.
_keys = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=1, max_size=1).map(lambda b: bytes(31) + b),
    st.integers(0, 7).map(lambda i: bytes([0x80]) + bytes(30) + bytes([i])),
)


def test_empty_hashes_and_root():
    assert smt.EMPTY[0] == bytes(32)
    assert smt.EMPTY[1] == hashlib.sha256(b"\x01" + bytes(64)).digest()
    assert len(smt.EMPTY) == 257 and smt.EMPTY_ROOT == smt.EMPTY[256]
    assert smt.root({}.get) == smt.EMPTY_ROOT == reference_root(set())
    assert smt.leaf_hash(b"\xaa" * 32) == hashlib.sha256(b"\x02" + b"\xaa" * 32).digest()


def test_node_ids():
    key = bytes([0b1011_0000]) + bytes(31)
    assert smt.ROOT_ID == b"\x00\x00"
    assert smt.node_id(key, 1) == b"\x00\x01" + bytes([0b1000_0000])
    assert smt.node_id(key, 3) == b"\x00\x03" + bytes([0b1010_0000])
    assert smt.sibling_id(key, 3) == b"\x00\x03" + bytes([0b1000_0000])
    assert smt.node_id(key, 256) == b"\x01\x00" + key
    assert smt.sibling_id(key, 256) == b"\x01\x00" + key[:31] + b"\x01"


@settings(max_examples=60, deadline=None)
@given(st.sets(_keys, max_size=12), st.lists(_keys, max_size=4))
def test_root_and_proofs_match_the_definition(members, others):
    nodes = store_of(sorted(members))
    root = smt.root(nodes.get)
    assert root == reference_root(set(members))
    # Insertion order does not matter, and a second insert changes nothing.
    assert smt.root(store_of(sorted(members, reverse=True) + sorted(members)).get) == root
    for key in members:
        proof = smt.prove(nodes.get, key)
        assert smt.root_from_proof(key, True, proof["bitmap"], proof["siblings"]) == root
        assert smt.root_from_proof(key, False, proof["bitmap"], proof["siblings"]) != root
    for key in others:
        if key in members:
            continue
        proof = smt.prove(nodes.get, key)
        assert smt.root_from_proof(key, False, proof["bitmap"], proof["siblings"]) == root
        assert smt.root_from_proof(key, True, proof["bitmap"], proof["siblings"]) != root
    # The compact store: nodes with >= 2 members below, and the highest node of each member alone.
    assert {nid: len(v) for nid, v in nodes.items()} == expected_smt_store(members)
    for nid, value in nodes.items():
        if len(value) == 64:
            depth = int.from_bytes(nid[:2], "big")
            assert value == smt.single_hash(value[32:], depth) + value[32:] and smt.node_id(value[32:], depth) == nid


def test_reinserting_a_member_changes_nothing_and_singles_split():
    a = bytes(32)
    b = bytes(31) + b"\x01"  # differs from a only in the very last bit: they part at depth 256
    nodes = store_of([a])
    assert nodes == {smt.ROOT_ID: smt.single_hash(a, 0) + a} and smt.update(nodes.get, a) == []
    nodes.update(smt.update(nodes.get, b))
    assert smt.root(nodes.get) == reference_root({a, b})
    assert len(nodes) == 256 + 2 and len(nodes[smt.node_id(a, 256)]) == 64 == len(nodes[smt.node_id(b, 256)])
    for key in (a, b, bytes(31) + b"\x02"):
        proof = smt.prove(nodes.get, key)
        assert smt.root_from_proof(key, key in (a, b), proof["bitmap"], proof["siblings"]) == smt.root(nodes.get)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_bit_flip_of_a_proof_or_key_fails(data):
    members = [hashlib.sha256(b"member %d" % i).digest() for i in range(9)]
    nodes = store_of(members)
    root = smt.root(nodes.get)
    key = data.draw(st.sampled_from(members + [hashlib.sha256(b"absent").digest()]))
    present = key in members
    proof = smt.prove(nodes.get, key)
    part = data.draw(st.sampled_from(["bitmap", "sibling", "key", "root"]))
    bitmap, siblings = bytearray(proof["bitmap"]), list(proof["siblings"])
    key_, root_ = bytearray(key), bytearray(root)
    target = {"bitmap": bitmap, "key": key_, "root": root_}.get(part)
    if part == "sibling":
        i = data.draw(st.integers(0, len(siblings) - 1))
        target = bytearray(siblings[i])
    bit = data.draw(st.integers(0, 255))
    target[bit // 8] ^= 1 << (bit % 8)
    if part == "sibling":
        siblings[i] = bytes(target)
    for claimed in (present, not present):
        try:
            got = smt.root_from_proof(bytes(key_), claimed, bytes(bitmap), siblings)
        except smt.ProofError:
            continue
        if part == "key":
            # An absent key's proof may also show another absent key (same empty path): only the truth.
            assert got != root or claimed == (bytes(key_) in members), (claimed, bytes(key_).hex())
        else:
            assert got != bytes(root_), claimed


def test_malformed_proofs_are_refused_by_name():
    members = [hashlib.sha256(b"member %d" % i).digest() for i in range(3)]
    nodes = store_of(members)
    proof = smt.prove(nodes.get, members[0])
    bitmap, siblings = proof["bitmap"], proof["siblings"]
    assert siblings, "three members give at least one non-empty sibling"
    cases = [
        (bitmap[:-1], siblings, "bitmap must be 32 bytes"),
        ("x" * 32, siblings, "bitmap must be 32 bytes"),
        (bitmap, tuple(siblings), "siblings must be a list"),
        (bitmap, siblings + [bytes(32)], "differ from the bitmap"),
        (bitmap, siblings[:-1], "differ from the bitmap"),
        (bitmap, [b"short"] + siblings[1:], "not a 32-byte hash"),
        (bitmap, [None] + siblings[1:], "not a 32-byte hash"),
        (bitmap, [bytes(32)] * smt.DEPTH + [bytes(32)], "at most 256"),
    ]
    for bad_bitmap, bad_siblings, message in cases:
        with pytest.raises(smt.ProofError, match=message):
            smt.root_from_proof(members[0], True, bad_bitmap, bad_siblings)
    # An empty sibling listed explicitly is refused: each proof has exactly one encoding.
    all_set = b"\xff" * 32
    with pytest.raises(smt.ProofError, match="empty subtree but is listed"):
        smt.root_from_proof(members[0], True, all_set, list(smt.EMPTY[:256]))


def test_results_hash_binds_both_parts():
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    from consensus import codec

    assert smt.results_hash(a, b) == codec.sha256(codec.pack({"outcomes_hash": a, "revoked_root": b}))
    assert smt.results_hash(a, b) != smt.results_hash(b, a)


def doc_root_from_proof(c: bytes, present: bool, bitmap: bytes, siblings: list[bytes]) -> bytes:
    """The verification of docs/PROTOCOL.md §3 written from its text alone, as a client would."""
    empty = [bytes(32)]
    for _ in range(256):
        empty.append(hashlib.sha256(b"\x01" + empty[-1] + empty[-1]).digest())
    running = hashlib.sha256(b"\x02" + c).digest() if present else empty[0]
    listed = iter(siblings)
    for h in range(256):
        s = next(listed) if (bitmap[h // 8] >> (h % 8)) & 1 else empty[h]
        bit = (int.from_bytes(c, "big") >> h) & 1  # bit 255 - h counted from the top = bit h from the bottom
        running = hashlib.sha256(b"\x01" + (s + running if bit else running + s)).digest()
    return running


def test_the_documented_algorithm_and_example_agree_with_the_code():
    first = hashlib.sha256(b"first").digest()
    ours = bytes.fromhex("385bc6a005ae2ad1c0e60b3eec64735bafa37e37d6add85351ec8db37c99fd06")  # PROTOCOL.md §7
    nodes = store_of([first])
    root = smt.root(nodes.get)
    assert root == reference_root({first})
    proof = smt.prove(nodes.get, ours)
    assert proof["bitmap"] == bytes(31) + b"\x80" and len(proof["siblings"]) == 1
    assert doc_root_from_proof(ours, False, proof["bitmap"], proof["siblings"]) == root
    members = [hashlib.sha256(b"m %d" % i).digest() for i in range(20)] + [bytes(31) + bytes([i]) for i in range(4)]
    nodes = store_of(members)
    root = smt.root(nodes.get)
    for key in members[::5] + [hashlib.sha256(b"absent").digest(), bytes(31) + b"\x07"]:
        proof = smt.prove(nodes.get, key)
        assert doc_root_from_proof(key, key in members, proof["bitmap"], proof["siblings"]) == root
