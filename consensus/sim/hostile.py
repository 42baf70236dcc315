"""Structured hostile msgpack: byte strings built to break decoders, from a `random.Random`.

Unstructured random bytes almost never get past a decoder's first byte. What
breaks decoders is structure: nesting as deep as msgpack allows, length
headers that declare far more than follows, values that are valid msgpack but
absurd for the field (integers at 2^64 - 1 and -2^63, views and heights at the
maximum, strings of 64 KiB), every msgpack format at every position, and all
of that inside an otherwise well-formed consensus message (a REQUESTS map
whose entry is 1,000 nested arrays, a PREPARE whose header_hash is a deep
array), then cut at any byte.

Everything here is a pure function of the `random.Random` it is given (no
clock, no global randomness, no set-order dependence), so the simulator
stays deterministic per seed. It knows msgpack and the *shape* of the wire
maps only; it does not import `consensus.messages` (`adapter` is the one
sim module that does), and it never builds a deep Python object: deep values
exist only as bytes, so generating them cannot hit the recursion limit
itself. `tests/support/hostile_msgpack.py` wraps these functions as hypothesis
strategies.

    category, data = generate(rng, template=honest_bytes)
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable

import msgpack

# The deepest nesting msgpack's C unpacker accepts: this many containers (1023 one-item arrays
# around an empty one); one more raises StackError. Python's default recursion limit (1000) is
# below it, so a recursive walk over what msgpack accepts can raise RecursionError.
MSGPACK_DEPTH_MAX = 1024
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Declared lengths: the format maxima and values just past what any data could hold.
DECLARED_LENGTHS = (2**32 - 1, 2**31, 2**31 - 1, 2**16 - 1, 2**16, 2**8 - 1, 2**24)
# Sizes just around the limits a decoder or the sim application uses (a request of 1 KiB in the
# sim, 64 KiB on the wire, 128-byte validator ids, 32-byte hashes, 64-byte signatures).
ABSURD_SIZES = (0, 1, 31, 33, 63, 65, 127, 128, 129, 255, 256, 1023, 1024, 1025, 65535, 65536, 65537)
ABSURD_INTS = (
    UINT64_MAX, UINT64_MAX - 1, 2**63, INT64_MAX, INT64_MAX - 1, INT64_MIN, INT64_MIN + 1, -1, 0, 1,
    2**32 - 1, 2**32, 2**31 - 1, -(2**31), 2**53 + 1, 255, 256, 65535, 65536,
)

# Categories, each a function (rng, template) -> bytes. `embedded` and `truncated` use the
# template (an encoded well-formed message) when there is one, else a built-in one.
CATEGORIES = ("deep_nesting", "huge_length", "absurd_value", "type_soup", "embedded", "truncated")


class Raw(bytes):
    """Already-encoded msgpack, spliced into `encode`'s output as it is."""


# -- encoding --------------------------------------------------------------------------


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 2**16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def _str_header(n: int) -> bytes:
    if n < 32:
        return bytes([0xA0 | n])
    if n < 2**8:
        return b"\xd9" + bytes([n])
    if n < 2**16:
        return b"\xda" + struct.pack(">H", n)
    return b"\xdb" + struct.pack(">I", n)


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return b"\xc4" + bytes([n])
    if n < 2**16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def encode(value: Any) -> bytes:
    """Canonical msgpack of `value` (maps with sorted str keys as they are given), with `Raw`
    parts spliced in unchanged. Recursive, for the shallow templates only."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, dict):
        keys = sorted(value) if all(isinstance(k, str) for k in value) else list(value)
        return _map_header(len(keys)) + b"".join(encode(k) + encode(value[k]) for k in keys)
    if isinstance(value, (list, tuple)):
        return _array_header(len(value)) + b"".join(encode(v) for v in value)
    return msgpack.packb(value, use_bin_type=True)


def bin_of(data: bytes) -> Raw:
    """`data` as a msgpack bin (how entries, hashes and signatures travel)."""
    return Raw(_bin_header(len(data)) + data)


# -- categories ------------------------------------------------------------------------


def nesting_depth(rng: random.Random) -> int:
    """Mostly just under msgpack's limit, where a recursive check overflows Python's stack."""
    roll = rng.random()
    if roll < 0.5:
        return rng.randint(900, MSGPACK_DEPTH_MAX)
    if roll < 0.7:
        return rng.choice((MSGPACK_DEPTH_MAX - 1, MSGPACK_DEPTH_MAX, MSGPACK_DEPTH_MAX + 1, 1000, 999))
    return rng.randint(1, MSGPACK_DEPTH_MAX + 64)


NESTING_STYLES = 5


def deep_nesting(rng: random.Random, depth: int | None = None, style: int | None = None) -> bytes:
    """`depth` nested containers as bytes: one-item arrays (style 0, one byte a level: the
    densest, which fits under a 1 KiB request limit), one-entry maps, non-canonical array
    widths, a mix of arrays and maps, or two-item arrays nesting in their last item; the
    innermost is empty or a scalar."""
    depth = nesting_depth(rng) if depth is None else depth
    style = rng.randrange(NESTING_STYLES) if style is None else style
    if style == 0:  # [[[...]]], the frame
        return b"\x91" * (depth - 1) + b"\x90"
    if style == 1:  # {"a": {"a": ...}}
        return b"\x81\xa1a" * (depth - 1) + b"\x80"
    if style == 2:  # array16/array32 headers of length 1 (non-canonical widths, same depth)
        return b"".join(rng.choice((b"\x91", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01")) for _ in range(depth - 1)) + b"\x90"
    if style == 3:  # a mix of arrays and str-keyed maps
        return b"".join(rng.choice((b"\x91", b"\x81\xa1k")) for _ in range(depth - 1)) + rng.choice((b"\x90", b"\x80", b"\xc0"))
    # [0, [0, [0, ...]]]: the nested item last, after a scalar, as a real field would sit
    return b"\x92\x00" * (depth - 1) + b"\x90"


def huge_length(rng: random.Random) -> bytes:
    """A header declaring far more than follows: bin32/str32/array32/map32/ext32 at 2^32 - 1 and
    friends, or a plausible length one past the data; or a container whose declared count
    really is large (65,536 nils: cheap to send, a big list to build)."""
    roll = rng.randrange(4)
    declared = rng.choice(DECLARED_LENGTHS) if roll else None
    kind = rng.choice(("bin", "str", "array", "map", "ext"))
    tail = rng.randbytes(rng.choice((0, 1, 8, 64)))
    if declared is None:  # one past the data that follows
        declared = len(tail) + 1
    if kind == "bin":
        head = b"\xc6" + struct.pack(">I", min(declared, 2**32 - 1)) if declared >= 2**16 else _bin_header(declared)
    elif kind == "str":
        head = b"\xdb" + struct.pack(">I", min(declared, 2**32 - 1)) if declared >= 2**16 else _str_header(declared)
    elif kind == "array":
        head = b"\xdd" + struct.pack(">I", min(declared, 2**32 - 1))
    elif kind == "map":
        head = b"\xdf" + struct.pack(">I", min(declared, 2**32 - 1))
    else:
        head = b"\xc9" + struct.pack(">I", min(declared, 2**32 - 1)) + b"\x01"
    if rng.random() < 0.2:
        # Really that many items, all nil: valid msgpack, absurd size.
        count = rng.choice((2**16, 2**16 - 1, 50_000))
        return (b"\xdd" + struct.pack(">I", count) + b"\xc0" * count) if rng.random() < 0.5 else (
            b"\xdf" + struct.pack(">I", count // 2) + b"\xc0\xc0" * (count // 2))
    return head + tail


def absurd_scalar(rng: random.Random) -> Any:
    """A valid msgpack scalar that no field should accept as it is."""
    roll = rng.randrange(6)
    if roll < 2:
        return rng.choice(ABSURD_INTS)
    if roll == 2:
        return "x" * rng.choice(ABSURD_SIZES)
    if roll == 3:
        return rng.randbytes(rng.choice(ABSURD_SIZES))
    if roll == 4:
        return rng.choice((True, False, None, "", b"", "\u0000", "\U0010ffff" * 3, "r0\x00", -0))
    return rng.choice((float("nan"), float("inf"), -0.0, 1e308, 0.5))


def absurd_value(rng: random.Random) -> bytes:
    """Valid msgpack, absurd content: a consensus-message map whose numbers sit at 2^64 - 1,
    -2^63 or the 2^63 - 1 maximum, whose strings are huge, or a bare absurd scalar."""
    if rng.random() < 0.25:
        return encode(absurd_scalar(rng))
    wire = dict(rng.choice(TEMPLATES)())
    for key in sorted(wire):
        if key == "type":
            continue
        if rng.random() < 0.6:
            wire[key] = absurd_scalar(rng)
    if rng.random() < 0.2:
        wire["type"] = rng.choice(("x" * 70_000, "", "PREPARE", "prepare ", 7))
    return encode(wire)


# Every msgpack format, by first byte, written out so each appears: fixint, fixmap, fixarray, fixstr,
# nil, (never used) 0xc1, false, true, bin8/16/32, ext8/16/32, float32/64, uint8..64, int8..64,
# fixext1..16, str8/16/32, array16/32, map16/32, negative fixint.
def _format_value(rng: random.Random, depth: int) -> bytes:
    roll = rng.randrange(30)
    small = rng.randbytes(rng.randrange(4))
    inner = (lambda: _format_value(rng, depth - 1)) if depth > 0 else (lambda: b"\xc0")
    if roll == 0:
        return bytes([rng.randrange(0x80)])                               # positive fixint
    if roll == 1:
        n = rng.randrange(3)
        return bytes([0x80 | n]) + b"".join(_key(rng) + inner() for _ in range(n))   # fixmap
    if roll == 2:
        n = rng.randrange(3)
        return bytes([0x90 | n]) + b"".join(inner() for _ in range(n))    # fixarray
    if roll == 3:
        return _str_header(len(small)) + small                             # fixstr (maybe not UTF-8)
    if roll == 4:
        return b"\xc0"                                                     # nil
    if roll == 5:
        return b"\xc1"                                                     # never used
    if roll == 6:
        return rng.choice((b"\xc2", b"\xc3"))                              # false, true
    if roll == 7:
        return b"\xc4" + bytes([len(small)]) + small                       # bin8
    if roll == 8:
        return b"\xc5" + struct.pack(">H", len(small)) + small             # bin16 (non-canonical width)
    if roll == 9:
        return b"\xc6" + struct.pack(">I", len(small)) + small             # bin32
    if roll == 10:
        return b"\xc7" + bytes([len(small)]) + bytes([rng.randrange(256)]) + small     # ext8
    if roll == 11:
        return b"\xc8" + struct.pack(">H", len(small)) + b"\x05" + small              # ext16
    if roll == 12:
        return b"\xc9" + struct.pack(">I", len(small)) + b"\xff" + small              # ext32 (timestamp type)
    if roll == 13:
        return b"\xca" + rng.randbytes(4)                                  # float32
    if roll == 14:
        return b"\xcb" + rng.randbytes(8)                                  # float64
    if roll in (15, 16, 17, 18):
        width = (1, 2, 4, 8)[roll - 15]                                    # uint8..uint64
        return bytes([0xCC + roll - 15]) + rng.choice((b"\xff" * width, b"\x00" * width, rng.randbytes(width)))
    if roll in (19, 20, 21, 22):
        width = (1, 2, 4, 8)[roll - 19]                                    # int8..int64
        return bytes([0xD0 + roll - 19]) + rng.choice((b"\x80" + b"\x00" * (width - 1), b"\xff" * width, rng.randbytes(width)))
    if roll == 23:
        width = rng.choice((1, 2, 4, 8, 16))                               # fixext1..16 (incl. timestamp -1)
        return bytes([0xD4 + (1, 2, 4, 8, 16).index(width)]) + rng.choice((b"\xff", bytes([rng.randrange(256)]))) + rng.randbytes(width)
    if roll == 24:
        return b"\xd9" + bytes([len(small)]) + small                       # str8
    if roll == 25:
        return b"\xda" + struct.pack(">H", len(small)) + small             # str16
    if roll == 26:
        return b"\xdb" + struct.pack(">I", len(small)) + small             # str32
    if roll == 27:
        n = rng.randrange(3)
        return rng.choice((b"\xdc" + struct.pack(">H", n), b"\xdd" + struct.pack(">I", n))) + b"".join(inner() for _ in range(n))
    if roll == 28:
        n = rng.randrange(3)
        head = rng.choice((b"\xde" + struct.pack(">H", n), b"\xdf" + struct.pack(">I", n)))
        return head + b"".join(_key(rng) + inner() for _ in range(n))      # map16/32, maybe non-str keys
    return bytes([0xE0 | rng.randrange(32)])                               # negative fixint


def _key(rng: random.Random) -> bytes:
    """A map key: usually a str, sometimes not (int, bin, nil, an array) or a repeated one."""
    roll = rng.random()
    if roll < 0.7:
        return encode(rng.choice(("type", "view", "height", "header_hash", "sender", "requests", "a", "")))
    return rng.choice((b"\x00", b"\xc4\x01k", b"\xc0", b"\x91\x00", b"\xcb" + bytes(8)))


def type_soup(rng: random.Random) -> bytes:
    """One value of any msgpack format, containers holding any format in turn."""
    return _format_value(rng, rng.randint(0, 4))


# -- well-formed message shapes, and hostile values inside them -----------------------


def _h(fill: int = 0) -> bytes:
    return bytes([fill]) * 32


def _sig() -> bytes:
    return bytes(64)


def _request() -> dict:
    return {"client": "client0", "seq": 1, "payload": b"\x00" * 8, "check": _h(7)}


def _header() -> dict:
    return {
        "chain_id": "bayledger-sim", "height": 1, "prev_hash": _h(), "time_ms": 1_700_000_000_000,
        "entries_hash": _h(1), "entry_count": 1, "tree_size": 1, "tree_root": _h(2), "results_hash": _h(3),
        "validator_set_hash": _h(4),
    }


def _entry() -> Raw:
    return bin_of(encode(_request()))


# The shapes of the consensus messages (field names as messages.py writes them), with plausible
# values. Not signed: they reach the field checks, not the signature check.
TEMPLATES: tuple[Callable[[], dict], ...] = (
    lambda: {"type": "requests", "requests": [_entry()]},
    lambda: {"type": "prepare", "view": 0, "height": 1, "header_hash": _h(5), "sender": "r0", "signature": _sig()},
    lambda: {"type": "commit", "view": 0, "height": 1, "header_hash": _h(5), "sender": "r1", "signature": _sig()},
    lambda: {"type": "checkpoint", "height": 2, "header_hash": _h(5), "sender": "r2", "signature": _sig()},
    lambda: {"type": "pre-prepare", "view": 0, "header": _header(), "entries": [_entry()], "sender": "r0",
             "signature": _sig()},
    lambda: {"type": "view-change", "view": 1, "sender": "r1", "signature": _sig(),
             "checkpoint": {"height": 0, "header_hash": _h(), "signatures": []},
             "prepared": [{"view": 0, "header": _header(), "prepares": [{"validator": "r0", "sig": _sig()}]}]},
    lambda: {"type": "block-request", "header_hashes": [_h(5), _h(6)]},
    lambda: {"type": "block-response", "header": _header(), "entries": [_entry()]},
    lambda: {"type": "catch-up-request", "from_height": 1, "to_height": 2},
    lambda: {"type": "catch-up-response", "blocks": [{
        "header": _header(), "entries": [_entry()],
        "certificate": {"view": 0, "height": 1, "header_hash": _h(5), "signatures": [{"validator": "r0", "sig": _sig()}]},
    }]},
)


def template_message(rng: random.Random) -> bytes:
    """A well-formed (unsigned) consensus message of a random type."""
    return encode(rng.choice(TEMPLATES)())


def positions(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a (shallow) decoded message: the paths of map values and list items,
    depth first, in order."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key in value:
            found.extend(positions(value[key], prefix + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(positions(item, prefix + (index,)))
    return found


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def embed_at(wire: Any, path: tuple, part: bytes, *, as_bin: bool = False) -> bytes:
    """`wire` encoded with the value at `path` replaced by the msgpack bytes `part` (or, with
    `as_bin`, by a bin holding them: how an entry, itself msgpack, travels)."""
    return encode(_replace(wire, path, bin_of(part) if as_bin else Raw(part)))


def _hostile_part(rng: random.Random) -> bytes:
    roll = rng.randrange(4)
    if roll == 0:
        return deep_nesting(rng)
    if roll == 1:
        return huge_length(rng)
    if roll == 2:
        return encode(absurd_scalar(rng))
    return type_soup(rng)


# Templates deeper than this are not walked (a hostile template must not make us recurse deeply).
template_depth_max = 32


def _shallow(value: Any, depth: int = 0) -> bool:
    if depth > template_depth_max:
        return False
    if isinstance(value, dict):
        return all(_shallow(k, depth + 1) and _shallow(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_shallow(v, depth + 1) for v in value)
    return True


def _decode_template(template: bytes | None, rng: random.Random) -> Any:
    if template is not None:
        try:
            value = msgpack.unpackb(template, raw=False, strict_map_key=False)
        except Exception:  # not msgpack itself: embed into a built-in shape instead
            value = None
        if isinstance(value, dict) and value and _shallow(value):
            return value
    return rng.choice(TEMPLATES)()


def embedded(rng: random.Random, template: bytes | None = None) -> bytes:
    """A well-formed message with one field (at any depth) replaced by hostile msgpack: a REQUESTS
    entry that is nested arrays (as bytes, which the entry check decodes, or as the array itself),
    a PREPARE whose header_hash is a deep array, a header field at 2^64 - 1, ..."""
    wire = _decode_template(template, rng)
    if rng.random() < 0.25:
        # The two shapes the issue names, whatever the template was.
        if rng.random() < 0.5:
            # An entry is checked after the message decodes, and only if it is small: dense nesting.
            entry = deep_nesting(rng, style=0)
            wire = {"type": "requests", "requests": [_entry(), bin_of(entry) if rng.random() < 0.7 else Raw(entry)]}
        else:
            wire = dict(TEMPLATES[1]())
            wire["header_hash"] = Raw(deep_nesting(rng))
        return encode(wire)
    paths = positions(wire)
    if not paths:
        return encode({**wire, "x": Raw(_hostile_part(rng))})
    path = rng.choice(paths)
    part = _hostile_part(rng)
    target: Any = wire
    for step in path:
        target = target[step]
    # A bytes field that is itself msgpack (an entry) gets the hostile bytes as its content.
    return embed_at(wire, path, part, as_bin=isinstance(target, bytes) and rng.random() < 0.5)


def truncated(rng: random.Random, template: bytes | None = None) -> bytes:
    """A message (the template, a hostile one, or one with a hostile field) cut at any byte."""
    roll = rng.randrange(3)
    if roll == 0 and template:
        data = template
    elif roll == 1:
        data = embedded(rng, template)
    else:
        data = rng.choice((deep_nesting, huge_length, absurd_value, type_soup))(rng)
    return data[: rng.randrange(len(data))] if data else data


def generate(rng: random.Random, template: bytes | None = None, category: str | None = None) -> tuple[str, bytes]:
    """(category, hostile bytes). `template` is a well-formed encoded message to embed hostile
    parts into or truncate (the honest message a Byzantine node was about to send)."""
    category = rng.choice(CATEGORIES) if category is None else category
    if category == "deep_nesting":
        data = deep_nesting(rng)
        if rng.random() < 0.3:  # as the value of a map, the way a frame would start
            data = _map_header(1) + encode("type") + data
        return category, data
    if category == "huge_length":
        return category, huge_length(rng)
    if category == "absurd_value":
        return category, absurd_value(rng)
    if category == "type_soup":
        return category, type_soup(rng)
    if category == "embedded":
        return category, embedded(rng, template)
    if category == "truncated":
        return category, truncated(rng, template)
    raise ValueError(f"unknown hostile category {category!r}")
