"""The LevelDB key layout of a Bayledger store: every key prefix, and the helpers that build keys.

One prefix byte a kind of record; integers in keys are unsigned big-endian, so keys sort by
number. These bytes are the on-disk format: tests/storage/test_keys.py pins each of them, and
changing one means a new FORMAT_VERSION.

A committed block is written in ONE WriteBatch with sync=True (entries, nodes, indexes,
registry, nonces, block record, header, certificate, new height and frontier, revoked-set
nodes), so after a crash the store is exactly at a block boundary.
"""

from __future__ import annotations

import struct

FORMAT_VERSION = 3                   # 2: results_hash commits to the revoked-set root (smt.py)
                                     # 3: nonce windows stored as runs (a flat list was 56 % of the bytes written),
                                     #    and Merkle nodes from level 2 up (was 3): proofs rehash 4 entries, not 8

U64 = struct.Struct(">Q")            # heights and leaf indexes in keys, and the stored height

# meta: one key a name, below.
META_PREFIX = b"m"
META_FORMAT = META_PREFIX + b"format"              # FORMAT_VERSION, msgpack int
META_CHAIN_ID = META_PREFIX + b"chain_id"          # genesis chain id, UTF-8
META_GENESIS_HASH = META_PREFIX + b"genesis_hash"  # Genesis.hash() of the genesis the store was made for
META_HEIGHT = META_PREFIX + b"height"              # applied height, U64
META_FRONTIER = META_PREFIX + b"frontier"          # Merkle log frontier, msgpack [size, [hash, ...]]
META_EPOCHS = META_PREFIX + b"epochs"              # LedgerEpochs.pack(); absent until the first reconfiguration
# h<height:8>: block header, canonical msgpack (BlockHeader.encode()).
HEADER_PREFIX = b"h"
# c<height:8>: commit certificate, canonical msgpack of CommitCertificate.to_wire().
CERTIFICATE_PREFIX = b"c"
# b<height:8>: block record, a msgpack array with one item per entry in block order:
# the leaf index (int) if accepted, [reason, entry bytes] if rejected.
BLOCK_RECORD_PREFIX = b"b"
# e<leaf:8>: accepted entry bytes, by Merkle leaf index.
ENTRY_PREFIX = b"e"
# n<level:1><index:8>: hash of the complete subtree (level, index), levels >= 2; the lower levels
# are rehashed from the (at most 4) entries of one aligned group (point reads).
MERKLE_NODE_PREFIX = b"n"
# k<commitment:32>: commitment index, msgpack [leaf index, height], or [leaf index, height,
# revoke leaf index, revoke height] once revoked. Author, kind and expiry are in the entry.
COMMITMENT_PREFIX = b"k"
# p<participant id>: the registry, msgpack {id, jurisdiction, role, public_key, status}.
PARTICIPANT_PREFIX = b"p"
# w<author>: the replay window of an author (participant id or "governance"): its most recent
# nonces as runs of consecutive nonces, msgpack [first, count, first, count, ...] (NonceWindow).
NONCE_WINDOW_PREFIX = b"w"
# r<depth:2><prefix>: revoked-set SMT node (storage/smt.py node id): its 32-byte hash if two or
# more revoked commitments lie below it, hash || commitment (64 bytes) for the highest node with
# one below it; empty nodes and those under a one-commitment node are not stored; root: r\x00\x00.
SMT_NODE_PREFIX = b"r"
# x<key>: the consensus replica's persisted state (opaque to storage).
CONSENSUS_PREFIX = b"x"


def header_key(height: int) -> bytes:
    return HEADER_PREFIX + U64.pack(height)


def certificate_key(height: int) -> bytes:
    return CERTIFICATE_PREFIX + U64.pack(height)


def block_record_key(height: int) -> bytes:
    return BLOCK_RECORD_PREFIX + U64.pack(height)


def entry_key(leaf_index: int) -> bytes:
    return ENTRY_PREFIX + U64.pack(leaf_index)


def merkle_node_key(level: int, index: int) -> bytes:
    return MERKLE_NODE_PREFIX + bytes((level,)) + U64.pack(index)


def commitment_key(commitment: bytes) -> bytes:
    return COMMITMENT_PREFIX + commitment


def participant_key(participant_id: str) -> bytes:
    return PARTICIPANT_PREFIX + participant_id.encode()


def nonce_window_key(author: str) -> bytes:
    return NONCE_WINDOW_PREFIX + author.encode()


def smt_node_key(node_id: bytes) -> bytes:
    return SMT_NODE_PREFIX + node_id


def consensus_key(key: bytes) -> bytes:
    return CONSENSUS_PREFIX + key
