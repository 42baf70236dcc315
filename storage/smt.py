"""The revoked set: a sparse Merkle tree (SMT) of depth 256 over commitments. No plyvel: client code uses this.

Every possible 32-byte commitment c has a leaf, reached from the root by c's
bits, most significant bit of c[0] first (bit 0 = left). The tree holds the
commitments that have been revoked (docs/PROTOCOL.md §3):

    E(0)       = 32 zero bytes                       an empty leaf
    E(h + 1)   = SHA-256(0x01 || E(h) || E(h))       an empty subtree of height h + 1
    leaf(c)    = SHA-256(0x02 || c)                  the leaf of a revoked commitment
    node(l, r) = SHA-256(0x01 || l || r)             an inner node
    root of the empty set = E(256)

The 0x02 tag keeps a leaf from ever being read as an inner node (whose input
starts 0x01 and is 65 bytes) or as an RFC 6962 leaf of the log (0x00).

A proof for c (of membership or of non-membership, the same shape) lists the
256 siblings of c's path, compressed: `bitmap` (32 bytes) has bit h set iff
the sibling at height h (h = 0: the leaf's sibling; h = 255: a child of the
root) is not the empty subtree E(h); bit h is (bitmap[h // 8] >> (h % 8)) & 1.
`siblings` lists the non-empty ones in increasing h (leaf side first, as RFC
9162 paths). A listed sibling equal to E(h) is refused, so each proof has one
encoding.

Nodes are named by (depth, path prefix): depth 0 is the root, 256 a leaf; the
node id is depth (2 bytes, big-endian) || the first ceil(depth / 8) bytes of
any key below it, with the bits past `depth` zero. A store (storage/ledger.py,
prefix `r`) keeps a node with two or more members below it as its hash (32
bytes), and the highest node with exactly ONE member below it as hash || that
member (64 bytes); empty nodes and the descendants of a one-member node are not
stored (they follow from the member). So a revoke writes about log2(n) + 2
nodes for n revoked, and a proof reads about 2 log2(n).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Callable

from consensus import codec

DEPTH = 256
KEY_BYTES = 32
BITMAP_BYTES = DEPTH // 8
single_chain_cache_keys_max = 256  # members whose 257-hash chains stay in memory (~17 KB each)
_TAG_NODE = b"\x01"
_TAG_LEAF = b"\x02"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _empty_hashes() -> tuple[bytes, ...]:
    hashes = [bytes(32)]
    for _ in range(DEPTH):
        hashes.append(_sha256(_TAG_NODE + hashes[-1] + hashes[-1]))
    return tuple(hashes)


EMPTY: tuple[bytes, ...] = _empty_hashes()  # EMPTY[h]: an empty subtree of height h
EMPTY_ROOT = EMPTY[DEPTH]

NodeReader = Callable[[bytes], "bytes | None"]  # node id -> stored value (32 or 64 bytes), None if not stored


def leaf_hash(commitment: bytes) -> bytes:
    return _sha256(_TAG_LEAF + commitment)


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(_TAG_NODE + left + right)


def key_bit(key: bytes, index: int) -> int:
    """Bit `index` of the key (0 = most significant bit of key[0]): the branch taken below depth `index`."""
    return (key[index >> 3] >> (7 - (index & 7))) & 1


def node_id(key: bytes, depth: int) -> bytes:
    """The id of the node at `depth` on key's path."""
    length = (depth + 7) >> 3
    prefix = bytearray(key[:length])
    if depth & 7:
        prefix[-1] &= (0xFF << (8 - (depth & 7))) & 0xFF
    return depth.to_bytes(2, "big") + bytes(prefix)


def sibling_id(key: bytes, depth: int) -> bytes:
    """The id of the sibling of the node at `depth` (>= 1) on key's path."""
    length = (depth + 7) >> 3
    prefix = bytearray(key[:length])
    if depth & 7:
        prefix[-1] &= (0xFF << (8 - (depth & 7))) & 0xFF
    prefix[(depth - 1) >> 3] ^= 0x80 >> ((depth - 1) & 7)
    return depth.to_bytes(2, "big") + bytes(prefix)


ROOT_ID = node_id(bytes(KEY_BYTES), 0)


def root(read: NodeReader) -> bytes:
    found = read(ROOT_ID)
    return EMPTY_ROOT if found is None else found[:32]


@functools.lru_cache(maxsize=single_chain_cache_keys_max)
def _single_chain(key: bytes) -> tuple[bytes, ...]:
    """Hashes of the subtrees of height 0..256 on key's path that hold key alone (256 hashes, cached)."""
    chain = [leaf_hash(key)]
    for height in range(DEPTH):
        below = chain[-1]
        if key_bit(key, DEPTH - 1 - height):
            chain.append(node_hash(EMPTY[height], below))
        else:
            chain.append(node_hash(below, EMPTY[height]))
    return tuple(chain)


def single_hash(key: bytes, depth: int) -> bytes:
    """Hash of the node at `depth` on key's path when key is the only member below it."""
    return _single_chain(key)[DEPTH - depth]


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first bit (most significant first) where two different keys differ."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return DEPTH - x.bit_length()


def _walk(read: NodeReader, key: bytes) -> tuple[list[tuple[int, bytes]], int, bytes | None]:
    """Follow key's path down through nodes with >= 2 members.

    Returns the non-empty siblings met, as (depth, hash), root side first; the
    depth where the path ends; and, if it ends at a node holding ONE member,
    that member's key (None if the path ends at an empty subtree). About
    2 log2(n) reads for n members.
    """
    found = []
    depth = 0
    node = read(ROOT_ID)
    while node is not None and len(node) == 32:  # >= 2 members below: go on
        depth += 1
        sibling = read(sibling_id(key, depth))
        if sibling is not None:
            found.append((depth, sibling[:32]))
        node = read(node_id(key, depth))
    return found, depth, None if node is None else node[32:]


def update(read: NodeReader, key: bytes) -> list[tuple[bytes, bytes]]:
    """The stored-node changes that put `key` in the set, (node id, value), deepest first (none if it is in).

    Values: a 32-byte hash for a node with >= 2 members below; hash || member key
    (64 bytes) for the highest node holding ONE member, whose descendants are not
    stored. The hashes are those of the full 256-deep tree (module docstring);
    only the storage is compact: a revoke stores about log2(n) + 2 nodes, not 257.
    """
    assert len(key) == KEY_BYTES, "SMT keys are 32 bytes"
    siblings, depth, single = _walk(read, key)
    if single == key:
        return []
    changes = []
    if single is None:  # the path ends at an empty subtree: key alone below `depth`
        current = single_hash(key, depth)
        changes.append((node_id(key, depth), current + key))
    else:  # a node holding one other member: both part at bit `split`, each alone below it
        split = _first_difference(key, single)
        assert split >= depth, "a node's members share its path"
        mine, theirs = single_hash(key, split + 1), single_hash(single, split + 1)
        changes.append((node_id(key, split + 1), mine + key))
        changes.append((node_id(single, split + 1), theirs + single))
        current = node_hash(theirs, mine) if key_bit(key, split) else node_hash(mine, theirs)
        changes.append((node_id(key, split), current))
        for d in range(split, depth, -1):  # same path for both down to the split: empty siblings
            current = node_hash(EMPTY[DEPTH - d], current) if key_bit(key, d - 1) else node_hash(current, EMPTY[DEPTH - d])
            changes.append((node_id(key, d - 1), current))
    met = dict(siblings)
    for d in range(depth, 0, -1):
        sibling = met.get(d, EMPTY[DEPTH - d])
        current = node_hash(sibling, current) if key_bit(key, d - 1) else node_hash(current, sibling)
        changes.append((node_id(key, d - 1), current))
    return changes


def prove(read: NodeReader, key: bytes) -> dict:
    """{"bitmap": bin 32, "siblings": [bin 32, ...]} for key, membership or not (see the module docstring)."""
    assert len(key) == KEY_BYTES, "SMT keys are 32 bytes"
    siblings, depth, single = _walk(read, key)
    if single is not None and single != key:  # one other member below: its subtree is a sibling where they part
        split = _first_difference(key, single)
        siblings.append((split + 1, single_hash(single, split + 1)))
    bitmap = bytearray(BITMAP_BYTES)
    listed = []
    for depth, sibling in reversed(siblings):  # leaf side first
        height = DEPTH - depth
        bitmap[height >> 3] |= 1 << (height & 7)
        listed.append(sibling)
    return {"bitmap": bytes(bitmap), "siblings": listed}


class ProofError(ValueError):
    """A malformed SMT proof (the message says what is wrong)."""


def root_from_proof(key: bytes, present: bool, bitmap: object, siblings: object) -> bytes:
    """The root that the proof gives for key in (present) or out of the set; ProofError if malformed."""
    if not isinstance(bitmap, bytes) or len(bitmap) != BITMAP_BYTES:
        raise ProofError(f"bitmap must be {BITMAP_BYTES} bytes")
    if not isinstance(siblings, list) or len(siblings) > DEPTH:
        raise ProofError(f"siblings must be a list of at most {DEPTH} hashes")
    if sum(bin(b).count("1") for b in bitmap) != len(siblings):
        raise ProofError("siblings listed differ from the bitmap's count of non-empty siblings")
    current = leaf_hash(key) if present else EMPTY[0]
    listed = iter(siblings)
    for height in range(DEPTH):
        if (bitmap[height >> 3] >> (height & 7)) & 1:
            sibling = next(listed)
            if not isinstance(sibling, bytes) or len(sibling) != 32:
                raise ProofError("a sibling is not a 32-byte hash")
            if sibling == EMPTY[height]:
                raise ProofError(f"sibling at height {height} is the empty subtree but is listed")
        else:
            sibling = EMPTY[height]
        if key_bit(key, DEPTH - 1 - height):
            current = node_hash(sibling, current)
        else:
            current = node_hash(current, sibling)
    return current


def results_hash(outcomes_hash: bytes, revoked_root: bytes) -> bytes:
    """A header's results_hash: SHA-256 of the canonical msgpack map {"outcomes_hash", "revoked_root"}."""
    return codec.sha256(codec.pack({"outcomes_hash": outcomes_hash, "revoked_root": revoked_root}))
