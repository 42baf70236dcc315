"""node/wire.py alone: the encoders produce the public msgpack-RPC shapes, and the client's response
reader yields responses, skips notifications and refuses anything else with WireError, fed in any
cut of the stream."""

from __future__ import annotations

import msgpack
import pytest

from node import wire


def test_requests_are_the_spec_4_arrays_whether_packed_at_once_or_ahead():
    expected = msgpack.packb([0, 7, "submit", [b"\x01", {"wait": True}]], use_bin_type=True)
    assert wire.encode_request(7, "submit", [b"\x01", {"wait": True}]) == expected
    ahead = wire.encode_method_and_params("submit", [b"\x01", {"wait": True}])
    assert wire.encode_packed_request(7, ahead) == expected
    # msgids up to the spec's uint32 maximum take the wider encodings; the head stays [0, ...
    for msgid in (0, 127, 128, 65_536, wire.msgid_max):
        packed = wire.encode_packed_request(msgid, wire.encode_method_and_params("status", []))
        assert msgpack.unpackb(packed, raw=False) == [0, msgid, "status", []]


def test_responses_and_errors_are_the_spec_shapes():
    error = wire.error_map(wire.ERROR_BUSY, "retry")
    assert msgpack.unpackb(wire.encode_response(None, error, None), raw=False) == [
        1, None, {"code": "busy", "message": "retry"}, None]


def test_the_reader_yields_responses_from_any_cut_and_skips_notifications():
    stream = (wire.encode_response(1, None, {"height": 3}) + msgpack.packb([2, "event", []])
              + wire.encode_response(2, wire.error_map("not-found", "no"), None))
    for cut in range(len(stream) + 1):
        reader = wire.ResponseReader()
        got = []
        for part in (stream[:cut], stream[cut:]):
            reader.feed(part)
            got += list(reader.responses())
        assert got == [(1, None, {"height": 3}), (2, {"code": "not-found", "message": "no"}, None)]


@pytest.mark.parametrize("message", [
    [0, 1, "status", []],            # a request, not a response
    [1, 1, None],                    # three items
    [1, -1, None, None],             # msgid out of range
    [1, 2**32, None, None],
    [1, [1], None, None],            # msgid that cannot be a key
    {"not": "a list"},
])
def test_the_reader_refuses_what_is_not_a_response(message):
    reader = wire.ResponseReader()
    reader.feed(msgpack.packb(message, use_bin_type=True))
    with pytest.raises(wire.WireError):
        list(reader.responses())


def test_the_reader_refuses_bad_bytes_and_answers_over_its_limit():
    reader = wire.ResponseReader()
    reader.feed(b"\xc1")              # never used in msgpack
    with pytest.raises(wire.WireError) as bad:
        list(reader.responses())
    assert bad.value.reason == "malformed"
    small = wire.ResponseReader(bytes_max=1024)
    with pytest.raises(wire.WireError, match="exceeds 1024 bytes"):
        small.feed(wire.encode_response(1, None, b"x" * 2048))
