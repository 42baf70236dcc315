"""The on-disk key layout: every prefix and key helper of storage/keys.py is pinned to its bytes, so
a rename or a slip cannot silently change the format an existing store was written in."""

from __future__ import annotations

from storage import keys

PINNED = {
    "META_PREFIX": b"m",
    "META_FORMAT": b"mformat",
    "META_CHAIN_ID": b"mchain_id",
    "META_GENESIS_HASH": b"mgenesis_hash",
    "META_HEIGHT": b"mheight",
    "META_FRONTIER": b"mfrontier",
    "META_EPOCHS": b"mepochs",
    "HEADER_PREFIX": b"h",
    "CERTIFICATE_PREFIX": b"c",
    "BLOCK_RECORD_PREFIX": b"b",
    "ENTRY_PREFIX": b"e",
    "MERKLE_NODE_PREFIX": b"n",
    "COMMITMENT_PREFIX": b"k",
    "PARTICIPANT_PREFIX": b"p",
    "NONCE_WINDOW_PREFIX": b"w",
    "SMT_NODE_PREFIX": b"r",
    "CONSENSUS_PREFIX": b"x",
}


def test_every_key_constant_is_pinned():
    """Each bytes constant of keys.py has its pinned value, and a new one must be pinned here too."""
    constants = {name: value for name, value in vars(keys).items() if name.isupper() and type(value) is bytes}
    assert constants == PINNED


def test_format_version():
    assert keys.FORMAT_VERSION == 3


def test_prefixes_are_distinct_single_bytes():
    prefixes = [value for name, value in PINNED.items() if name.endswith("_PREFIX")]
    assert all(len(p) == 1 for p in prefixes)
    assert len(set(prefixes)) == len(prefixes)


def test_key_helpers_build_the_pinned_bytes():
    """Integers are unsigned 8-byte big-endian (keys sort by number); names are UTF-8."""
    assert keys.header_key(258) == b"h\x00\x00\x00\x00\x00\x00\x01\x02"
    assert keys.certificate_key(1) == b"c\x00\x00\x00\x00\x00\x00\x00\x01"
    assert keys.block_record_key(2**64 - 1) == b"b" + b"\xff" * 8
    assert keys.entry_key(0) == b"e" + b"\x00" * 8
    assert keys.merkle_node_key(3, 5) == b"n\x03\x00\x00\x00\x00\x00\x00\x00\x05"
    assert keys.commitment_key(b"\xab" * 32) == b"k" + b"\xab" * 32
    assert keys.participant_key("hk-bureau") == b"phk-bureau"
    assert keys.nonce_window_key("governance") == b"wgovernance"
    assert keys.smt_node_key(b"\x00\x00") == b"r\x00\x00"
    assert keys.consensus_key(b"view") == b"xview"
    assert keys.U64.pack(1) == b"\x00\x00\x00\x00\x00\x00\x00\x01"  # the stored height's value too
