"""RFC 6962 hashing, proofs and verifiers: the public vectors and hypothesis over every small tree."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from storage import merkle

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "rfc6962"


def _b64(value):
    return base64.b64decode(value) if value is not None else None


def _cases(kind):
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors under {VECTORS}"
    return [pytest.param(json.loads(p.read_text()), id=str(p.relative_to(VECTORS))) for p in files]


@pytest.mark.parametrize("case", _cases("inclusion"))
def test_inclusion_vector(case):
    """Every good inclusion vector verifies and every corrupted one is rejected."""
    proof = [_b64(p) for p in case["proof"] or []]
    ok = merkle.verify_inclusion(
        _b64(case["leafHash"]) or b"", case["leafIdx"], case["treeSize"], proof, _b64(case["root"]) or b""
    )
    assert ok is (not case["wantErr"]), case["desc"]


@pytest.mark.parametrize("case", _cases("consistency"))
def test_consistency_vector(case):
    """Every good consistency vector verifies and every corrupted one is rejected."""
    proof = [_b64(p) for p in case["proof"] or []]
    ok = merkle.verify_consistency(
        case["size1"], case["size2"], _b64(case["root1"]) or b"", _b64(case["root2"]) or b"", proof
    )
    assert ok is (not case["wantErr"]), case["desc"]


def test_vector_counts():
    """The copied vector set is complete (guards against a partial copy silently passing)."""
    assert len(list((VECTORS / "inclusion").rglob("*.json"))) == 98
    assert len(list((VECTORS / "consistency").rglob("*.json"))) == 98
    assert (VECTORS / "LICENSE").is_file() and (VECTORS / "README.md").is_file()


def test_known_roots():
    """Roots of the RFC 6962 reference leaves (transparency-dev testonly) for sizes 0, 1, 8."""
    leaves = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f"]]
    tree = merkle.MemoryTree(merkle.leaf_hash(x) for x in leaves)
    assert merkle.root(tree.node, 0).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert tree.root(1).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert tree.root(8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


SIZES_MAX = 300
_full = merkle.MemoryTree(merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(SIZES_MAX))
_leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(SIZES_MAX)]


def test_every_leaf_of_every_size_proves():
    """Exhaustive: for every size up to SIZES_MAX, every leaf's path verifies against the RFC root."""
    for size in range(1, SIZES_MAX + 1):
        expected = merkle.root_from_leaf_hashes(_leaves[:size])
        assert _full.root(size) == expected
        for index in range(size):
            path = _full.inclusion_path(index, size)
            assert merkle.verify_inclusion(_leaves[index], index, size, path, expected)


def test_frontier_root_matches_every_size():
    frontier = merkle.Frontier()
    for size in range(1, SIZES_MAX + 1):
        frontier = frontier.extend([_leaves[size - 1]])
        assert frontier.root() == merkle.root_from_leaf_hashes(_leaves[:size])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_tampered_inclusion_fails(data):
    """A flipped bit, wrong index, wrong size or truncated/extended path never verifies."""
    size = data.draw(st.integers(1, SIZES_MAX))
    index = data.draw(st.integers(0, size - 1))
    path = _full.inclusion_path(index, size)
    good_root = _full.root(size)
    leaf = _leaves[index]
    assert merkle.verify_inclusion(leaf, index, size, path, good_root)
    if path:
        which = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(path[which])
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = list(path)
        bad[which] = bytes(flipped)
        assert not merkle.verify_inclusion(leaf, index, size, bad, good_root)
        assert not merkle.verify_inclusion(leaf, index, size, path[:-1], good_root)
    assert not merkle.verify_inclusion(leaf, index, size, path + [bytes(32)], good_root)
    other_index = data.draw(st.integers(0, size))
    if other_index != index:
        assert not merkle.verify_inclusion(leaf, other_index, size, path, good_root)
    other_size = data.draw(st.integers(1, SIZES_MAX))
    if other_size != size and index < other_size:
        # The size only fixes the path's shape (the root binds the rest, and a
        # match proof takes both from one certified header), so a wrong size
        # must fail against that size's own root unless the proofs coincide.
        if _full.inclusion_path(index, other_size) != path:
            assert not merkle.verify_inclusion(leaf, index, other_size, path, _full.root(other_size))
        if len(_full.inclusion_path(index, other_size)) != len(path):
            assert not merkle.verify_inclusion(leaf, index, other_size, path, good_root)
    bit = data.draw(st.integers(0, 255))
    bad_leaf = bytearray(leaf)
    bad_leaf[bit // 8] ^= 1 << (bit % 8)
    assert not merkle.verify_inclusion(bytes(bad_leaf), index, size, path, good_root)


def test_every_consistency_pair_proves():
    """Exhaustive up to size 130: every (size1, size2) consistency proof verifies."""
    for size2 in range(0, 131):
        root2 = _full.root(size2)
        for size1 in range(1, size2 + 1):
            proof = _full.consistency_proof(size1, size2)
            assert merkle.verify_consistency(size1, size2, _full.root(size1), root2, proof), (size1, size2)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_tampered_consistency_fails(data):
    size2 = data.draw(st.integers(2, SIZES_MAX))
    size1 = data.draw(st.integers(1, size2 - 1))
    proof = _full.consistency_proof(size1, size2)
    root1, root2 = _full.root(size1), _full.root(size2)
    assert merkle.verify_consistency(size1, size2, root1, root2, proof)
    which = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    flipped = bytearray(proof[which])
    flipped[bit // 8] ^= 1 << (bit % 8)
    bad = list(proof)
    bad[which] = bytes(flipped)
    assert not merkle.verify_consistency(size1, size2, root1, root2, bad)
    assert not merkle.verify_consistency(size1, size2, root1, root2, proof[:-1])
    if size2 < SIZES_MAX and _full.consistency_proof(size1, size2 + 1) != proof:
        assert not merkle.verify_consistency(size1, size2 + 1, root1, _full.root(size2 + 1), proof)
    if _full.consistency_proof(size1 + 1, size2) != proof:
        assert not merkle.verify_consistency(size1 + 1, size2, _full.root(size1 + 1), root2, proof)
    assert not merkle.verify_consistency(size1, size2, root2, root1, proof)


def test_bad_types_rejected_not_raised():
    """Hostile shapes (negative, bool, huge, non-bytes) are rejected, never raise."""
    h = bytes(32)
    assert not merkle.verify_inclusion(h, -1, 1, [], h)
    assert not merkle.verify_inclusion(h, True, 2, [h], h)
    assert not merkle.verify_inclusion(h, 0, merkle.tree_size_max, [h], h)
    assert not merkle.verify_inclusion(h, 0, 2, ["x"], h)
    assert not merkle.verify_inclusion(h, 0, 2, None, h)
    assert not merkle.verify_consistency(1, 2, h, h, "abc")
    assert not merkle.verify_consistency(merkle.tree_size_max, merkle.tree_size_max + 1, h, h, [h])
