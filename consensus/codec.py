"""Canonical msgpack encoding, hashing and Ed25519 signing shared by every layer.

Canonical form (what every hashed or signed byte string uses):
- msgpack with the bin type for bytes and the str type (UTF-8) for text;
- integers in their shortest encoding, no floats, no extension types;
- maps have str keys, written in ascending order of their UTF-8 bytes.
`unpack_canonical` rejects input that is not the canonical encoding of what it
decodes to (`check_canonical`), so one value has exactly one byte string and a
signature over it is unambiguous.

Signatures never cover a bare payload: `signing_bytes` prefixes a domain tag
and the chain id, so a vote cannot be replayed as an entry or on another chain.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32


class EncodingError(ValueError):
    """Bytes that are not canonical Bayledger msgpack, or a value that cannot be encoded.

    The one error every decoder of outside bytes raises. `reason` is a stable code:
    "too-large" (input bytes over the limit), "too-deep" (nesting), "too-long" (an array,
    map, bin or str over its length limit), "too-many-items" (the whole value holds more
    array items and map entries than allowed), "malformed" (not msgpack: truncated, bad
    type byte, trailing bytes, an extension type), "not-canonical", "unencodable".
    """

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one decoded msgpack value; every decoder of outside bytes names its own.

    `items_max` bounds memory: msgpack's C decoder allocates each array and map as it reads
    it, so the sum of all lengths (map entries count twice) caps the objects built, whatever
    the shape (a frame of 4 M empty arrays is refused at the first 1 M). `depth_max` keeps
    every recursive consumer of the value far from Python's recursion limit.
    """

    bytes_max: int
    depth_max: int
    array_len_max: int
    map_len_max: int
    bin_len_max: int
    str_len_max: int
    items_max: int

    def __post_init__(self) -> None:
        assert 1 <= self.depth_max <= DEPTH_MAX_CEILING, "depth bound must stay far below the recursion limit"
        assert min(self.bytes_max, self.array_len_max, self.map_len_max, self.bin_len_max,
                   self.str_len_max, self.items_max) >= 0


# No decoder may allow more nesting than this: well below msgpack's own stack (1,024) and
# Python's recursion limit (1,000), so a recursive consumer of a decoded value cannot overflow.
DEPTH_MAX_CEILING = 64

# For bytes we wrote ourselves (our own disk) and callers that set no limits of their own.
DEFAULT_LIMITS = DecodeLimits(
    bytes_max=256 * 1024 * 1024, depth_max=32, array_len_max=1_000_000, map_len_max=100_000,
    bin_len_max=256 * 1024 * 1024, str_len_max=16 * 1024 * 1024, items_max=1_000_000,
)


class _ItemBudget:
    """msgpack hooks that count the items of every array and map as it is built and stop the
    decode once the value holds more than the limit (the overshoot is one container)."""

    __slots__ = ("left",)

    def __init__(self, items_max: int):
        self.left = items_max

    def array(self, value: list) -> list:
        self.left -= len(value)
        if self.left < 0:
            raise _OverBudget
        return value

    def map(self, value: dict) -> dict:
        self.left -= 2 * len(value)
        if self.left < 0:
            raise _OverBudget
        return value


class _OverBudget(Exception):
    pass


def _refuse_extension(code: int, data: bytes) -> Any:
    raise EncodingError(f"extension type {code} has no meaning here", "malformed")


# Types msgpack packs as they are; checked by exact type first because this runs on every message.
_SCALAR_TYPES = frozenset({bytes, str, int, bool, type(None)})


def _canonicalize(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value
    if kind is list or kind is tuple:
        return [v if type(v) in _SCALAR_TYPES else _canonicalize(v) for v in value]
    if kind is dict:
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                raise EncodingError(f"map key {key!r} is not a string", "unencodable")
        # Python compares str by code point, which orders the same as UTF-8 bytes.
        keys.sort()
        return {k: (value[k] if type(value[k]) in _SCALAR_TYPES else _canonicalize(value[k])) for k in keys}
    # Subclasses (IntEnum, OrderedDict, bytearray, ...) take the slow, general path.
    if isinstance(value, dict):
        return _canonicalize(dict(value))
    if isinstance(value, (list, tuple)):
        return _canonicalize(list(value))
    if isinstance(value, bool) or value is None or isinstance(value, (int, str, bytes)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise EncodingError(f"type {type(value).__name__} has no canonical encoding", "unencodable")


# One Packer for every call: msgpack.packb builds one per call, 4x the cost of packing a small value.
# Sharing it between threads is safe: pack() runs in C under the GIL from start to finish (the
# canonical values have no Python hooks), and it resets its buffer after a failed pack.
_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of `value` (dict keys sorted, bytes as bin)."""
    try:
        return _packer.pack(_canonicalize(value))
    except EncodingError:
        raise
    except (OverflowError, ValueError, TypeError, RecursionError) as exc:
        raise EncodingError(f"{type(exc).__name__}: {exc}", "unencodable") from None


def unpack(data: bytes, *, max_bytes: int | None = None, limits: DecodeLimits | None = None) -> Any:
    """Decode msgpack within `limits` without requiring canonical form (for RPC and wire framing).

    Total: for any input, returns a value or raises EncodingError, never anything else.
    `max_bytes`, when given, tightens `limits.bytes_max`.
    """
    return _unpack_bounded(data, max_bytes, limits or DEFAULT_LIMITS, canonical=False)


def _unpack_bounded(data: bytes, max_bytes: int | None, limits: DecodeLimits, canonical: bool) -> Any:
    """The value, or EncodingError; with `canonical`, the one walk over it also checks map key order
    and leaf types (the byte comparison is the caller's)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError(f"expected bytes, got {type(data).__name__}", "malformed")
    bytes_max = limits.bytes_max if max_bytes is None else min(max_bytes, limits.bytes_max)
    if len(data) > bytes_max:
        raise EncodingError(f"message of {len(data)} bytes exceeds limit of {bytes_max}", "too-large")
    budget = _ItemBudget(limits.items_max)
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True,
            max_str_len=limits.str_len_max, max_bin_len=limits.bin_len_max,
            max_array_len=limits.array_len_max, max_map_len=limits.map_len_max, max_ext_len=0,
            list_hook=budget.array, object_hook=budget.map, ext_hook=_refuse_extension,
        )
    except EncodingError:
        raise
    except _OverBudget:
        raise EncodingError(f"more than {limits.items_max} array items and map entries", "too-many-items") from None
    except msgpack.StackError:
        raise EncodingError(f"nested deeper than {limits.depth_max}", "too-deep") from None
    except ValueError as exc:
        if "exceeds max_" in str(exc):
            # "N exceeds max_array_len(M)": over the limit, or (when the input cannot even hold N
            # items or bytes) a declared length past the data, which is malformed whatever the limit.
            # An extension type (max_ext_len is 0) has no meaning here at any length: malformed too.
            declared = str(exc).split(" ", 1)[0]
            past_data = declared.isdigit() and int(declared) > len(data)
            reason = "malformed" if past_data or "max_ext_len" in str(exc) else "too-long"
            raise EncodingError(f"not valid msgpack: {exc}", reason) from None
        raise EncodingError(f"not valid msgpack: {type(exc).__name__}: {exc}", "malformed") from None
    except Exception as exc:  # msgpack raises several unrelated types (and MemoryError is not ours to hide)
        if isinstance(exc, MemoryError):
            raise
        raise EncodingError(f"not valid msgpack: {type(exc).__name__}: {exc}", "malformed") from None
    _walk(value, limits.depth_max, canonical)
    return value


def check_depth(value: Any, depth_max: int) -> None:
    """Raise EncodingError("too-deep") if `value` (as a streaming Unpacker built it) nests deeper
    than `depth_max`; for decoders that cannot call `unpack`."""
    _walk(value, depth_max, canonical=False)


def unpacker_limits(limits: DecodeLimits) -> dict[str, int]:
    """Keyword arguments that bound a streaming msgpack.Unpacker's lengths as `unpack` does
    (pair it with `check_depth` on each value it returns)."""
    return {"max_buffer_size": limits.bytes_max, "max_str_len": limits.str_len_max,
            "max_bin_len": limits.bin_len_max, "max_array_len": limits.array_len_max,
            "max_map_len": limits.map_len_max, "max_ext_len": 0}


def _walk(value: Any, depth_max: int, canonical: bool) -> None:
    """Check nesting (and with `canonical`, that every map has str keys in ascending order and
    every leaf has a canonical type) without recursion.

    A container at the top is at depth 1. Iterative, so no input can exhaust the Python stack.
    """
    kind = type(value)
    if kind is not list and kind is not dict:
        if canonical and kind not in _SCALAR_TYPES:
            raise EncodingError(f"type {kind.__name__} has no canonical encoding", "not-canonical")
        return
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > depth_max:
            raise EncodingError(f"nested deeper than {depth_max}", "too-deep")
        if type(node) is dict:
            if canonical:
                keys = list(node)
                for key in keys:
                    if type(key) is not str:
                        raise EncodingError(f"map key {str(key)[:40]!r} is not a string", "not-canonical")
                if keys != sorted(keys):    # str order by code point is UTF-8 byte order
                    raise EncodingError("map keys are not in ascending order", "not-canonical")
            items = node.values()
        else:
            items = node
        for item in items:
            item_kind = type(item)
            if item_kind is list or item_kind is dict:
                stack.append((item, depth + 1))
            elif canonical and item_kind not in _SCALAR_TYPES:
                raise EncodingError(f"type {item_kind.__name__} has no canonical encoding", "not-canonical")


def check_canonical(value: Any, data: bytes, depth_max: int = DEFAULT_LIMITS.depth_max) -> None:
    """Raise EncodingError unless `data` is the canonical encoding of `value`, the value msgpack
    decoded from it.

    The same test as re-encoding `value` with `pack` and comparing, without copying it first:
    a value whose maps are in order and whose leaves are canonical types packs as it is, and
    msgpack writes every integer in its shortest form, so the bytes differ exactly when `data`
    had a wider integer, a repeated map key or trailing bytes.
    """
    _walk(value, depth_max, canonical=True)
    _check_same_bytes(value, data)


def _check_same_bytes(value: Any, data: bytes) -> None:
    """The second half of check_canonical, for a value whose walk has been done."""
    try:
        again = _packer.pack(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise EncodingError(str(exc), "not-canonical") from exc
    if again != data:
        raise EncodingError("the bytes differ from its encoding (int width, repeated map key or trailing bytes)",
                            "not-canonical")


def unpack_canonical(data: bytes, *, max_bytes: int | None = None, limits: DecodeLimits | None = None) -> Any:
    """Decode bytes that must be in canonical form, within `limits`; raise EncodingError otherwise."""
    try:
        # One walk over the value checks its depth and its canonical form together.
        value = _unpack_bounded(data, max_bytes, limits or DEFAULT_LIMITS, canonical=True)
        _check_same_bytes(value, bytes(data))
    except EncodingError as exc:
        if exc.reason != "not-canonical":
            raise
        raise EncodingError(f"not canonical: {exc}", exc.reason) from None
    return value


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def signing_bytes(domain: str, chain_id: str, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers: domain || 0x00 || chain_id || 0x00 || payload."""
    if "\x00" in domain or "\x00" in chain_id:
        raise EncodingError("domain and chain id must not contain NUL", "unencodable")
    return domain.encode() + b"\x00" + chain_id.encode() + b"\x00" + payload


def sign(signing_key: nacl.signing.SigningKey, domain: str, chain_id: str, payload: bytes) -> bytes:
    return signing_key.sign(signing_bytes(domain, chain_id, payload)).signature


# Ed25519 verifications run in this process, for the metric bayledger_signature_checks_total (the
# bench divides it by commitments: how many checks each one costs). A metric only: no decision
# depends on it. itertools.count because next() on it is one C call, atomic under the GIL, and
# verify also runs in worker threads (blocks are applied off the event loop).
_signature_checks = itertools.count()
_COUNT_REPR_PREFIX = "count("


def signature_checks_total() -> int:
    """Ed25519 verifications `verify` has attempted in this process (valid or not) so far."""
    # count() has no read-only accessor; its repr is "count(N)" with N the next value, i.e. the total.
    return int(repr(_signature_checks)[len(_COUNT_REPR_PREFIX):-1])


def verify(public_key: bytes, signature: bytes, domain: str, chain_id: str, payload: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature by `public_key` over the tagged payload."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    next(_signature_checks)
    try:
        # The binding VerifyKey.verify calls, without building a VerifyKey per signature.
        nacl.bindings.crypto_sign_open(signature + signing_bytes(domain, chain_id, payload), public_key)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False


# Domain tags: one per kind of signed object. Listed here so no two collide.
DOMAIN_ENTRY = "bayledger/entry/v1"
DOMAIN_QUERY = "bayledger/query/v1"
DOMAIN_PREPREPARE = "bayledger/preprepare/v1"
DOMAIN_PREPARE = "bayledger/prepare/v1"
DOMAIN_COMMIT = "bayledger/commit/v1"
DOMAIN_CHECKPOINT = "bayledger/checkpoint/v1"
DOMAIN_VIEW_CHANGE = "bayledger/view-change/v1"
DOMAIN_NEW_VIEW = "bayledger/new-view/v1"
DOMAIN_HEADER = "bayledger/header/v1"
DOMAIN_HANDSHAKE = "bayledger/handshake/v1"
