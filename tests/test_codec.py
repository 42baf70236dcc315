"""Canonical encoding and domain-separated signatures: the bytes every other layer signs and hashes."""

import msgpack
import nacl.signing
import pytest
from hypothesis import given, settings, strategies as st

from consensus import codec

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@given(values)
def test_pack_round_trips_and_is_canonical(value):
    data = codec.pack(value)
    assert codec.unpack_canonical(data) == codec.unpack(data)
    assert codec.pack(codec.unpack(data)) == data


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 1000), min_size=2, max_size=6))
def test_map_key_order_does_not_change_bytes(mapping):
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert codec.pack(mapping) == codec.pack(reversed_mapping)


def test_non_canonical_bytes_are_rejected():
    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(codec.EncodingError):
        codec.unpack_canonical(unsorted)
    wide_int = b"\xcd\x00\x05"  # 5 as uint16 instead of a fixint
    with pytest.raises(codec.EncodingError):
        codec.unpack_canonical(wide_int)
    with pytest.raises(codec.EncodingError):
        codec.unpack_canonical(codec.pack(1) + b"\x00")  # trailing bytes


any_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=6) | st.binary(max_size=8)
    | st.floats(allow_nan=False, width=32),   # packable as float 32 and 64
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=3) | st.integers(0, 3) | st.binary(max_size=2), children, max_size=4),
    max_leaves=12,
)


def _canonical_by_re_encoding(data: bytes) -> bool:
    """The definition: decode, encode canonically (sorting every map), compare."""
    try:
        return codec.pack(codec.unpack(data)) == data
    except codec.EncodingError:
        return False


@settings(max_examples=400)
@given(st.dictionaries(st.text(max_size=3), any_values, min_size=2, max_size=4) | any_values,
       st.booleans(), st.booleans(), st.sampled_from([b""] * 4 + [b"\x00", b"\xc0"]))
def test_check_canonical_agrees_with_re_encoding(value, use_bin_type, single_float, trailing):
    """Whatever bytes msgpack can hold (maps in any order, int or bin keys, floats, str for bin,
    trailing bytes), check_canonical accepts exactly those that re-encode to themselves."""
    data = msgpack.packb(value, use_bin_type=use_bin_type, use_single_float=single_float) + trailing
    try:
        decoded = codec.unpack(data)
    except codec.EncodingError:
        return   # not one msgpack value (trailing bytes): unpack_canonical refuses it before the check
    try:
        codec.check_canonical(decoded, data)
        accepted = True
    except codec.EncodingError:
        accepted = False
    assert accepted == _canonical_by_re_encoding(data)


def test_check_canonical_names_what_is_wrong():
    with pytest.raises(codec.EncodingError, match="ascending order"):
        codec.check_canonical({"b": 1, "a": 2}, msgpack.packb({"b": 1, "a": 2}))
    with pytest.raises(codec.EncodingError, match="not a string"):
        codec.check_canonical({1: "x"}, msgpack.packb({1: "x"}))
    with pytest.raises(codec.EncodingError, match="float"):
        codec.check_canonical([1.5], msgpack.packb([1.5]))
    with pytest.raises(codec.EncodingError, match="int width"):
        codec.check_canonical(5, b"\xcd\x00\x05")
    repeated_key = b"\x82\xa1a\x01\xa1a\x02"    # {"a": 1, "a": 2}: decodes to {"a": 2}
    with pytest.raises(codec.EncodingError, match="repeated map key"):
        codec.check_canonical(codec.unpack(repeated_key), repeated_key)
    codec.check_canonical({"a": [b"x", None]}, codec.pack({"a": [b"x", None]}))


def test_unsupported_values_are_refused():
    with pytest.raises(codec.EncodingError):
        codec.pack(1.5)
    with pytest.raises(codec.EncodingError):
        codec.pack({1: "int key"})
    with pytest.raises(codec.EncodingError):
        codec.unpack(b"\xc1")  # never-used msgpack byte
    with pytest.raises(codec.EncodingError):
        codec.unpack(b"\x01" * 10, max_bytes=9)


def test_signature_is_bound_to_domain_and_chain():
    key = nacl.signing.SigningKey(bytes(range(32)))
    public = key.verify_key.encode()
    sig = codec.sign(key, codec.DOMAIN_COMMIT, "chain-a", b"payload")
    assert codec.verify(public, sig, codec.DOMAIN_COMMIT, "chain-a", b"payload")
    assert not codec.verify(public, sig, codec.DOMAIN_PREPARE, "chain-a", b"payload")
    assert not codec.verify(public, sig, codec.DOMAIN_COMMIT, "chain-b", b"payload")
    assert not codec.verify(public, sig, codec.DOMAIN_COMMIT, "chain-a", b"payloae")
    assert not codec.verify(public[:31], sig, codec.DOMAIN_COMMIT, "chain-a", b"payload")
    assert not codec.verify(public, sig[:63], codec.DOMAIN_COMMIT, "chain-a", b"payload")


@given(st.dictionaries(st.text(max_size=6), st.none(), min_size=2, max_size=8))
def test_keys_are_ordered_by_their_utf8_bytes(mapping):
    decoded = codec.unpack(codec.pack(mapping))
    assert list(decoded) == sorted(mapping, key=lambda k: k.encode())


def test_subclasses_take_the_general_path():
    import collections
    import enum

    class Level(enum.IntEnum):
        HIGH = 7

    ordered = collections.OrderedDict([("b", Level.HIGH), ("a", bytearray(b"x"))])
    assert codec.pack(ordered) == codec.pack({"a": b"x", "b": 7})
