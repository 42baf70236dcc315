"""RFC 6962 / RFC 9162 Merkle Tree Hash, proofs and their verifiers. Pure: no plyvel, no I/O.

Hashing: leaf = SHA-256(0x00 || entry bytes); node = SHA-256(0x01 || left || right);
the root of the empty tree is SHA-256 of nothing. A tree of n > 1 leaves splits at
k, the largest power of two below n.

Storage model. A *complete subtree* at (level, index) covers leaves
[index * 2**level, (index + 1) * 2**level); its hash never changes once the
leaves are there. Every other subtree the RFC recursion needs (only those on
the right edge of a tree size) is the fold of at most log2(n) complete ones,
so roots, inclusion paths and consistency proofs at any size take O(log n)
reads of complete subtree hashes through a `NodeSource`, never a rehash of the
log. `Frontier` is the compact range of a growing log: the complete subtrees
matching the binary digits of its size; appending a leaf returns the new
complete subtree hashes to store.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Sizes and indices are unsigned 64-bit in RFC 9162; anything larger is bad input.
tree_size_max = 2**63

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# A NodeSource returns the hash of the complete subtree at (level, index).
NodeSource = Callable[[int, int], bytes]


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, straight from the RFC definition (for tests and small trees)."""
    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = _largest_power_of_two_below(len(hashes))
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


def subtree_hash(node: NodeSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) where D[start:end] is a subtree of some RFC 6962 tree.

    `start` is aligned to the largest power of two <= end - start, as every
    subtree the RFC recursion visits is, so this is at most log2(n) reads.
    """
    size = end - start
    assert size > 0, "empty subtree"
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        assert start % size == 0, "unaligned complete subtree"
        return node(level, start >> level)
    k = _largest_power_of_two_below(size)
    return node_hash(subtree_hash(node, start, start + k), subtree_hash(node, start + k, end))


def root(node: NodeSource, size: int) -> bytes:
    return EMPTY_ROOT if size == 0 else subtree_hash(node, 0, size)


def inclusion_path(node: NodeSource, index: int, size: int,
                   edge: Callable[[int, int], bytes] | None = None) -> list[bytes]:
    """PATH(index, D[0:size]) from RFC 6962 §2.1.1, leaf side first (RFC 9162 order).

    Bottom-up, as transparency-dev/merkle computes it: with inner = bit length
    of index XOR (size - 1), the path is the complete siblings at levels below
    inner - 1, then the sibling at level inner - 1 (the right edge of the
    tree, possibly incomplete), then the left siblings at each higher level
    where index has a 1 bit. `edge(start, size)`, if given, computes that
    right-edge subtree hash (default `subtree_hash(node, start, size)`), so a
    caller can reuse it across leaves.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not below tree size {size}")
    inner = (index ^ (size - 1)).bit_length()
    path = [node(level, (index >> level) ^ 1) for level in range(inner - 1)]
    if inner:
        level = inner - 1
        start = ((index >> level) ^ 1) << level
        path.append(edge(start, size) if edge is not None else subtree_hash(node, start, size))
    for level in range(inner, size.bit_length()):
        if index >> level & 1:
            path.append(node(level, (index >> level) ^ 1))
    return path


def consistency_proof(node: NodeSource, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[0:size2]) from RFC 6962 §2.1.2 (empty when size1 equals size2; size1 >= 1)."""
    if not 1 <= size1 <= size2:
        raise ValueError(f"consistency needs 1 <= size1 <= size2, got {size1} and {size2}")
    if size1 == size2:
        return []
    proof: list[bytes] = []
    start, end, m, whole = 0, size2, size1, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                proof.append(subtree_hash(node, start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            proof.append(subtree_hash(node, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(node, start, start + k))
            start, m, whole = start + k, m - k, False
    proof.reverse()
    return proof


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does `path` prove leaf hash `leaf` at `index` in the tree `expected_root` of `size`?"""
    if not _is_count(index) or not _is_count(size) or index >= size:
        return False
    if not _are_hashes(path) or not _is_hash(leaf) or not _is_hash(expected_root):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does `proof` show the tree (size2, root2) extends (size1, root1)?"""
    if not _is_count(size1) or not _is_count(size2) or size1 > size2:
        return False
    if not isinstance(proof, (list, tuple)):
        return False
    if size1 == 0:
        # Every tree extends the empty one, so there is nothing to verify; like
        # transparency-dev/merkle (and its vectors) we reject the request.
        return False
    if size1 == size2:
        # Nothing to prove: the trees are the same iff the roots are.
        return len(proof) == 0 and isinstance(root1, bytes) and root1 == root2
    if not proof or not _are_hashes(proof) or not _is_hash(root1) or not _is_hash(root2):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < tree_size_max


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_BYTES


def _are_hashes(values: object) -> bool:
    return isinstance(values, (list, tuple)) and all(_is_hash(v) for v in values)


class Frontier:
    """The compact range of a log: complete-subtree hashes for the set bits of its size, left to right.

    Immutable in use: `append` returns a new Frontier, so a speculative block
    can branch from its parent's frontier without copying the log.
    """

    __slots__ = ("size", "hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"frontier of size {size} needs {bin(size).count('1')} hashes, got {len(hashes)}")
        self.size = size
        self.hashes = tuple(hashes)

    def levels(self) -> list[int]:
        """Level of each frontier hash, left to right (the set bits of size, high to low)."""
        return [bit for bit in range(self.size.bit_length() - 1, -1, -1) if self.size >> bit & 1]

    def extend(self, leaves: Iterable[bytes], new_nodes: list[tuple[int, int, bytes]] | None = None) -> "Frontier":
        """Append leaf hashes; if `new_nodes` is given, add every new complete subtree (level, index, hash)."""
        stack = list(self.hashes)
        size = self.size
        for leaf in leaves:
            h = leaf
            level = 0
            if new_nodes is not None:
                new_nodes.append((0, size, h))
            n = size
            # Each trailing 1 bit of the old size merges one frontier hash into a bigger subtree.
            while n & 1:
                h = node_hash(stack.pop(), h)
                level += 1
                n >>= 1
                if new_nodes is not None:
                    new_nodes.append((level, (size + 1 >> level) - 1, h))
            stack.append(h)
            size += 1
        return Frontier(size, stack)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h

    def node_source(self, stored: NodeSource) -> NodeSource:
        """A NodeSource that answers the frontier's own subtrees from memory and the rest from `stored`."""
        own = {}
        start = 0
        for level, h in zip(self.levels(), self.hashes):
            own[(level, start >> level)] = h
            start += 1 << level
        own_get = own.get  # bound once: proofs call this for every node they read

        def source(level: int, index: int) -> bytes:
            found = own_get((level, index))
            return found if found is not None else stored(level, index)

        return source


class MemoryTree:
    """A whole log in memory (every complete subtree hash); for clients, tests and small logs."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.frontier = Frontier()
        self.append_leaf_hashes(leaf_hashes)

    def append_leaf_hashes(self, leaves: Iterable[bytes]) -> None:
        new_nodes: list[tuple[int, int, bytes]] = []
        self.frontier = self.frontier.extend(leaves, new_nodes)
        for level, index, h in new_nodes:
            self.nodes[(level, index)] = h

    def append(self, entry: bytes) -> int:
        """Append an entry; return its leaf index."""
        index = self.frontier.size
        self.append_leaf_hashes([leaf_hash(entry)])
        return index

    @property
    def size(self) -> int:
        return self.frontier.size

    def node(self, level: int, index: int) -> bytes:
        return self.nodes[(level, index)]

    def root(self, size: int | None = None) -> bytes:
        return root(self.node, self.size if size is None else size)

    def inclusion_path(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_path(self.node, index, self.size if size is None else size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(self.node, size1, self.size if size2 is None else size2)
