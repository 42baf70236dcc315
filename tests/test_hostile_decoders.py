"""Every decoder of outside bytes is bounded and total under structured hostile input.

For each target of tests/fuzz/targets.py (handshake frame, peer frame,
consensus message, entry, RPC stream, signed query, proof, genesis, plain
msgpack), hypothesis draws from tests/support/hostile_msgpack.py: nesting up to
msgpack's limit and past Python's recursion limit, every msgpack type at
every position of a well-formed message, declared lengths past the data,
absurd values, and truncation at every byte. A target raises only when the
decoder let out something other than its documented error.

Then the limits themselves, each tested at its edge: a value exactly at a
bound decodes, one past it is refused with the bound's reason code.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus import codec
from consensus.messages import (
    MESSAGE_DEPTH_MAX, MESSAGE_LIMITS, REQUESTS_MESSAGE_BYTES_MAX, VOTE_MESSAGE_BYTES_MAX, MessageError,
    decode_message,
)
from tests.fuzz import targets
from tests.support.hostile_msgpack import deep_nesting, every_truncation, hostile_msgpack

# Sized to keep this file near 30 s in `make test`; `make fuzz` searches for as long as it is given.
HOSTILE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NESTED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@HOSTILE
@given(data=hostile_msgpack())
def test_target_lets_out_only_its_documented_error(name, data):
    targets.TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@NESTED
@given(data=deep_nesting())
def test_target_survives_nesting_to_msgpack_limit(name, data):
    targets.TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target_survives_truncation_of_its_seeds_at_every_byte(name):
    for seed in targets.seeds(name):
        targets.TARGETS[name](seed)     # a valid input is accepted, or refused with the documented error
        for cut in every_truncation(seed):
            targets.TARGETS[name](cut)


# --- the limits at their edges ----------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """`depth` one-item arrays around nil."""
    return b"\x91" * depth + b"\xc0"


def _reason(data: bytes, limits: codec.DecodeLimits) -> str | None:
    try:
        codec.unpack(data, limits=limits)
    except codec.EncodingError as exc:
        return exc.reason
    return None


EDGE = codec.DecodeLimits(bytes_max=64, depth_max=4, array_len_max=6, map_len_max=2, bin_len_max=5,
                          str_len_max=5, items_max=8)


def test_depth_bound_at_its_edge():
    assert _reason(_nested(4), EDGE) is None
    assert _reason(_nested(5), EDGE) == "too-deep"


def test_length_bounds_at_their_edges():
    assert _reason(b"\x96" + b"\xc0" * 6, EDGE) is None
    assert _reason(b"\x97" + b"\xc0" * 7, EDGE) == "too-long"
    assert _reason(b"\x82\xa1a\xc0\xa1b\xc0", EDGE) is None
    assert _reason(b"\x83\xa1a\xc0\xa1b\xc0\xa1c\xc0", EDGE) == "too-long"
    assert _reason(b"\xc4\x05" + b"x" * 5, EDGE) is None
    assert _reason(b"\xc4\x06" + b"x" * 6, EDGE) == "too-long"
    assert _reason(b"\xa5" + b"x" * 5, EDGE) is None
    assert _reason(b"\xa6" + b"x" * 6, EDGE) == "too-long"


def test_item_budget_at_its_edge():
    # [[nil x 3], [nil x 3]]: 2 + 3 + 3 = 8 items; one more nil makes 9.
    assert _reason(b"\x92" + b"\x93" + b"\xc0" * 3 + b"\x93" + b"\xc0" * 3, EDGE) is None
    assert _reason(b"\x92" + b"\x93" + b"\xc0" * 3 + b"\x94" + b"\xc0" * 4, EDGE) == "too-many-items"


def test_byte_bound_at_its_edge():
    exactly = b"\xc4\x03abc"
    limits = codec.DecodeLimits(bytes_max=len(exactly), depth_max=4, array_len_max=6, map_len_max=2,
                                bin_len_max=5, str_len_max=5, items_max=8)
    assert _reason(exactly, limits) is None
    assert _reason(b"\xc4\x04abcd", limits) == "too-large"


def test_declared_lengths_past_the_data_are_malformed_not_allocated():
    # Past the data and past the limit alike: the bytes cannot hold what they declare, so the
    # reason is "malformed", not "too-long" (a consensus peer's random bytes are bad-encoding).
    for header in (b"\xc6", b"\xdb", b"\xdd", b"\xdf"):
        data = header + b"\xff\xff\xff\xff" + b"\x00" * 8
        assert _reason(data, codec.DEFAULT_LIMITS) == "malformed"
    assert _reason(b"\x97" + b"\xc0" * 3, EDGE) == "malformed"      # 7 declared, over the limit, 4 bytes
    assert _reason(b"\xd4\x01\x00", EDGE) == "malformed"             # an extension type, at any length


def test_a_frame_of_empty_arrays_stops_at_the_item_budget():
    # The 4 MB frame of empty arrays (280 MB of lists): refused, never built whole.
    data = b"\xdc\xff\xff" + b"\x90" * 65535
    flood = b"\xdc\x00\x40" + data * 64
    assert _reason(flood, MESSAGE_LIMITS) in ("too-many-items", "too-long")


def test_nesting_past_python_recursion_limit_is_too_deep_in_canonical_decode():
    for depth in (codec.DEFAULT_LIMITS.depth_max + 1, 999, 1000, 1023, 1024, 5000):
        with pytest.raises(codec.EncodingError) as caught:
            codec.unpack_canonical(_nested(depth))
        assert caught.value.reason == "too-deep"


def test_every_limit_of_messages_is_below_the_frame():
    assert MESSAGE_LIMITS.depth_max <= codec.DEPTH_MAX_CEILING
    assert VOTE_MESSAGE_BYTES_MAX < REQUESTS_MESSAGE_BYTES_MAX < MESSAGE_LIMITS.bytes_max


@pytest.mark.parametrize("depth", [MESSAGE_DEPTH_MAX, MESSAGE_DEPTH_MAX + 1, 1000])
def test_consensus_message_nesting_is_a_message_error(depth):
    with pytest.raises(MessageError) as caught:
        decode_message(_nested(depth), targets.VALIDATORS, targets.CHAIN_ID)
    assert caught.value.reason in ("bad-encoding", "too-large")


def test_a_vote_over_its_byte_cap_is_too_large():
    # A PREPARE-shaped map padded past VOTE_MESSAGE_BYTES_MAX with a long (but allowed) sender string.
    wire = {"type": "prepare", "view": 0, "height": 1, "header_hash": bytes(32), "sender": "v" * 1000,
            "signature": bytes(64)}
    data = codec.pack(wire)
    assert len(data) > VOTE_MESSAGE_BYTES_MAX
    with pytest.raises(MessageError) as caught:
        decode_message(data, targets.VALIDATORS, targets.CHAIN_ID)
    assert caught.value.reason == "too-large"


@given(st.integers(0, 2**64 - 1) | st.integers(-(2**63), -1))
def test_absurd_integers_in_a_vote_are_refused_cleanly(value):
    wire = {"type": "commit", "view": value, "height": value, "header_hash": bytes(32), "sender": "v1",
            "signature": bytes(64)}
    try:
        decode_message(codec.pack(wire), targets.VALIDATORS, targets.CHAIN_ID)
    except MessageError:
        pass
