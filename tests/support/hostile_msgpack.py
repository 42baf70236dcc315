"""Hypothesis strategies for structured hostile msgpack, for every decoder's property test.

    from hypothesis import given
    from tests.support.hostile_msgpack import hostile_msgpack, every_truncation

    @given(hostile_msgpack())
    def test_decoder_is_total(data):
        try:
            decode(data)
        except DocumentedError:
            pass

The building blocks live in `consensus/sim/hostile.py` (plain functions of a
`random.Random`, which the simulator's Byzantine garbage uses; `consensus/`
must not import `tests/`). Here they become strategies, with the sizes that
matter (nesting depth, declared length, where a hostile part goes, where a
message is cut) drawn by hypothesis so that failures shrink to them:

- `deep_nesting()`: nesting up to msgpack's limit (`MSGPACK_DEPTH_MAX`, 1024
  containers) and a little past it, in every nesting style;
- `huge_length()`: bin/str/array/map/ext headers declaring up to 2^32 - 1
  with little or no data after them, and containers that really hold 65,536 nils;
- `absurd_values()`: valid msgpack with integers at 2^64 - 1 and -2^63,
  views and heights at the 2^63 - 1 maximum, huge strings and bytes, floats, nil;
- `any_msgpack()`: every msgpack format (fixint to map32, ext, the never-used
  0xc1, non-canonical widths, non-str and repeated keys) at every position of
  nested containers;
- `embedded()`: a well-formed consensus message (`templates()`) with one
  value at any position replaced by any of the above (a REQUESTS entry that is
  nested arrays, a PREPARE whose header_hash is a deep array, ...);
- `truncated(strategy)`: a value of `strategy` cut at any byte;
- `hostile_msgpack()`: all of these; `from_random(category)`: the simulator's
  own generator, category by category.

`every_truncation(data)` and `every_position(wire)` enumerate exhaustively,
for tests that want every byte and every field rather than a sample.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Iterator

from hypothesis import strategies as st

from consensus.sim import hostile
from consensus.sim.hostile import (  # noqa: F401  (re-exported for tests)
    ABSURD_INTS, CATEGORIES, DECLARED_LENGTHS, INT64_MAX, INT64_MIN, MSGPACK_DEPTH_MAX, TEMPLATES, UINT64_MAX,
    Raw, embed_at, encode, positions,
)

_randoms = st.randoms(use_true_random=False)


def from_random(category: str | None = None, template: bytes | None = None) -> st.SearchStrategy[bytes]:
    """The simulator's generator (`hostile.generate`) driven by a hypothesis-controlled Random."""
    return _randoms.map(lambda rng: hostile.generate(rng, template=template, category=category)[1])


def depths(max_depth: int = MSGPACK_DEPTH_MAX + 8) -> st.SearchStrategy[int]:
    """Nesting depths, weighted to the edges: msgpack's limit and Python's recursion limit."""
    edges = [d for d in (MSGPACK_DEPTH_MAX - 1, MSGPACK_DEPTH_MAX, MSGPACK_DEPTH_MAX + 1, 999, 1000, 1001)
             if d <= max_depth]
    return st.one_of(st.sampled_from(edges), st.integers(1, max_depth)) if edges else st.integers(1, max_depth)


def deep_nesting(max_depth: int = MSGPACK_DEPTH_MAX + 8) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda depth, style, rng: hostile.deep_nesting(rng, depth, style),
        depths(max_depth), st.integers(0, hostile.NESTING_STYLES - 1), _randoms,
    )


_LENGTH_HEADERS = {
    "bin32": b"\xc6", "str32": b"\xdb", "array32": b"\xdd", "map32": b"\xdf", "ext32": b"\xc9",
}


@st.composite
def huge_length(draw) -> bytes:
    """A 32-bit length header declaring `declared` (up to 2^32 - 1), followed by less data."""
    if draw(st.integers(0, 9)) == 0:
        count = draw(st.sampled_from((2**16 - 1, 2**16)))
        return b"\xdd" + struct.pack(">I", count) + b"\xc0" * count        # really that many nils
    kind = draw(st.sampled_from(sorted(_LENGTH_HEADERS)))
    tail = draw(st.binary(max_size=64))
    declared = draw(st.one_of(st.sampled_from(DECLARED_LENGTHS), st.integers(len(tail) + 1, 2**32 - 1)))
    head = _LENGTH_HEADERS[kind] + struct.pack(">I", declared) + (b"\x01" if kind == "ext32" else b"")
    return head + tail


def absurd_scalars() -> st.SearchStrategy[Any]:
    sizes = st.sampled_from(hostile.ABSURD_SIZES)
    return st.one_of(
        st.sampled_from(ABSURD_INTS),
        st.integers(INT64_MIN, UINT64_MAX),
        sizes.map(lambda n: "x" * n),
        sizes.map(lambda n: b"\x00" * n),
        st.sampled_from((True, False, None, "", b"", "\x00", "r0\x00")),
        st.floats(allow_nan=True, allow_infinity=True),
    )


@st.composite
def absurd_values(draw) -> bytes:
    """Valid msgpack: a consensus message shape with some fields at absurd values, or a bare one."""
    if draw(st.booleans()):
        return encode(draw(absurd_scalars()))
    wire = draw(st.sampled_from(TEMPLATES))()
    for key in sorted(wire):
        if key != "type" and draw(st.booleans()):
            wire[key] = draw(absurd_scalars())
    return encode(wire)


def _scalar_formats() -> st.SearchStrategy[bytes]:
    """Every non-container msgpack format, by its first byte, with any payload."""
    small = st.binary(max_size=8)
    return st.one_of(
        st.integers(0x00, 0x7F).map(lambda b: bytes([b])),                              # positive fixint
        st.integers(0xE0, 0xFF).map(lambda b: bytes([b])),                              # negative fixint
        st.sampled_from((b"\xc0", b"\xc1", b"\xc2", b"\xc3")),                          # nil, never used, false, true
        small.map(lambda s: bytes([0xA0 | len(s)]) + s),                                # fixstr (maybe not UTF-8)
        small.map(lambda s: b"\xd9" + bytes([len(s)]) + s),                             # str8
        small.map(lambda s: b"\xda" + struct.pack(">H", len(s)) + s),                   # str16
        small.map(lambda s: b"\xdb" + struct.pack(">I", len(s)) + s),                   # str32
        small.map(lambda s: b"\xc4" + bytes([len(s)]) + s),                             # bin8
        small.map(lambda s: b"\xc5" + struct.pack(">H", len(s)) + s),                   # bin16
        small.map(lambda s: b"\xc6" + struct.pack(">I", len(s)) + s),                   # bin32
        st.tuples(st.integers(0, 255), small).map(lambda t: b"\xc7" + bytes([len(t[1]), t[0]]) + t[1]),  # ext8
        st.tuples(st.integers(0, 255), small).map(
            lambda t: b"\xc8" + struct.pack(">H", len(t[1])) + bytes([t[0]]) + t[1]),   # ext16
        st.tuples(st.integers(0, 255), small).map(
            lambda t: b"\xc9" + struct.pack(">I", len(t[1])) + bytes([t[0]]) + t[1]),   # ext32
        st.binary(min_size=4, max_size=4).map(lambda s: b"\xca" + s),                  # float32
        st.binary(min_size=8, max_size=8).map(lambda s: b"\xcb" + s),                  # float64
        st.sampled_from(((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)))
        .flatmap(lambda f: st.binary(min_size=f[1], max_size=f[1]).map(lambda s: bytes([f[0]]) + s)),  # (u)int8..64
        st.sampled_from(((0xD4, 1), (0xD5, 2), (0xD6, 4), (0xD7, 8), (0xD8, 16)))
        .flatmap(lambda f: st.binary(min_size=f[1] + 1, max_size=f[1] + 1).map(lambda s: bytes([f[0]]) + s)),  # fixext
    )


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(children, max_size=3)
    array_head = st.sampled_from(("fix", "16", "32"))
    keys = st.one_of(st.sampled_from(("type", "view", "height", "header_hash", "requests", "a", "")).map(encode),
                     children)

    def array(head: str, parts: list[bytes]) -> bytes:
        n = len(parts)
        prefix = {"fix": bytes([0x90 | n]), "16": b"\xdc" + struct.pack(">H", n), "32": b"\xdd" + struct.pack(">I", n)}
        return prefix[head] + b"".join(parts)

    def map_(head: str, pairs: list[tuple[bytes, bytes]]) -> bytes:
        n = len(pairs)
        prefix = {"fix": bytes([0x80 | n]), "16": b"\xde" + struct.pack(">H", n), "32": b"\xdf" + struct.pack(">I", n)}
        return prefix[head] + b"".join(k + v for k, v in pairs)

    return st.one_of(
        st.builds(array, array_head, items),
        st.builds(map_, array_head, st.lists(st.tuples(keys, children), max_size=3)),
    )


def any_msgpack(max_leaves: int = 20) -> st.SearchStrategy[bytes]:
    """Every msgpack format at every position: scalars of each format inside arrays and maps of
    each width (keys of any format), nested."""
    return st.recursive(_scalar_formats(), _containers, max_leaves=max_leaves)


def templates() -> st.SearchStrategy[Any]:
    """Well-formed (unsigned) consensus message maps, decoded (dicts with `Raw` entries)."""
    return st.sampled_from(TEMPLATES).map(lambda make: make())


def hostile_parts() -> st.SearchStrategy[bytes]:
    return st.one_of(deep_nesting(), huge_length(), absurd_scalars().map(encode), any_msgpack(8))


@st.composite
def embedded(draw, parts: st.SearchStrategy[bytes] | None = None, messages: st.SearchStrategy[Any] | None = None) -> bytes:
    """A well-formed message with the value at one position replaced by a hostile part (as the
    value itself, or as a bin holding it: how an entry, itself msgpack, travels)."""
    wire = draw(messages if messages is not None else templates())
    path = draw(st.sampled_from(positions(wire)))
    part = draw(parts if parts is not None else hostile_parts())
    return embed_at(wire, path, part, as_bin=draw(st.booleans()))


def requests_with_deep_entry() -> st.SearchStrategy[bytes]:
    """The issue's second shape: a REQUESTS message whose entry is nested arrays (as a bin, or bare)."""
    return st.builds(
        lambda depth, as_bin: encode({"type": "requests", "requests": [
            hostile.bin_of(b"\x91" * (depth - 1) + b"\x90") if as_bin else Raw(b"\x91" * (depth - 1) + b"\x90")]}),
        depths(), st.booleans(),
    )


def prepare_with_deep_hash() -> st.SearchStrategy[bytes]:
    """A PREPARE whose header_hash is a deep array."""
    return st.builds(lambda part: embed_at(TEMPLATES[1](), ("header_hash",), part), deep_nesting())


def truncated(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A value of `strategy` cut at any byte (a proper prefix, possibly empty)."""
    return strategy.filter(bool).flatmap(lambda data: st.integers(0, len(data) - 1).map(lambda cut: data[:cut]))


def hostile_msgpack() -> st.SearchStrategy[bytes]:
    """Any of the above."""
    well_formed = st.builds(encode, templates())
    return st.one_of(
        deep_nesting(), huge_length(), absurd_values(), any_msgpack(), embedded(),
        requests_with_deep_entry(), prepare_with_deep_hash(),
        truncated(st.one_of(well_formed, embedded(), absurd_values())),
        from_random(),
    )


def every_truncation(data: bytes) -> Iterator[bytes]:
    """Every proper prefix of `data`, the empty one included."""
    for cut in range(len(data)):
        yield data[:cut]


def every_position(wire: Any, part: bytes) -> Iterator[bytes]:
    """`wire` with `part` at each of its positions in turn, as the value and as a bin."""
    for path in positions(wire):
        yield embed_at(wire, path, part)
        yield embed_at(wire, path, part, as_bin=True)


def random_hostile(seed: int, count: int, template: bytes | None = None) -> Iterator[tuple[str, bytes]]:
    """`count` (category, bytes) from the simulator's generator, for a plain loop over a seed."""
    rng = random.Random(seed)
    for _ in range(count):
        yield hostile.generate(rng, template=template)
