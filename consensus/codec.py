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
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32


class EncodingError(ValueError):
    """Bytes that are not canonical Bayledger msgpack, or a value that cannot be encoded."""


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
                raise EncodingError(f"map key {key!r} is not a string")
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
    raise EncodingError(f"type {type(value).__name__} has no canonical encoding")


# One Packer for every call: msgpack.packb builds one per call, 4x the cost of packing a small value.
# Sharing it between threads is safe: pack() runs in C under the GIL from start to finish (the
# canonical values have no Python hooks), and it resets its buffer after a failed pack.
_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of `value` (dict keys sorted, bytes as bin)."""
    try:
        return _packer.pack(_canonicalize(value))
    except (OverflowError, ValueError, TypeError) as exc:
        raise EncodingError(str(exc)) from exc


def unpack(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Decode msgpack without requiring canonical form (for RPC and wire framing)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise EncodingError(f"message of {len(data)} bytes exceeds limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise EncodingError(f"not valid msgpack: {exc}") from exc


def _check_canonical_tree(value: Any) -> None:
    """Raise EncodingError unless every map in `value` (as msgpack decodes it) has str keys in
    ascending order and every other leaf has a type with a canonical encoding."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _SCALAR_TYPES:
                _check_canonical_tree(item)
        return
    if kind is dict:
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                raise EncodingError(f"map key {key!r} is not a string")
        if keys != sorted(keys):    # str order by code point is UTF-8 byte order
            raise EncodingError("map keys are not in ascending order")
        for item in value.values():
            if type(item) not in _SCALAR_TYPES:
                _check_canonical_tree(item)
        return
    raise EncodingError(f"type {kind.__name__} has no canonical encoding")


def check_canonical(value: Any, data: bytes) -> None:
    """Raise EncodingError unless `data` is the canonical encoding of `value`, the value msgpack
    decoded from it.

    The same test as re-encoding `value` with `pack` and comparing, without copying it first:
    a value whose maps are in order and whose leaves are canonical types packs as it is, and
    msgpack writes every integer in its shortest form, so the bytes differ exactly when `data`
    had a wider integer, a repeated map key or trailing bytes.
    """
    _check_canonical_tree(value)
    try:
        again = _packer.pack(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise EncodingError(str(exc)) from exc
    if again != data:
        raise EncodingError("the bytes differ from its encoding (int width, repeated map key or trailing bytes)")


def unpack_canonical(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Decode bytes that must be in canonical form; raise EncodingError otherwise."""
    value = unpack(data, max_bytes=max_bytes)
    try:
        check_canonical(value, data)
    except EncodingError as exc:
        raise EncodingError(f"not canonical: {exc}") from exc
    return value


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def signing_bytes(domain: str, chain_id: str, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers: domain || 0x00 || chain_id || 0x00 || payload."""
    if "\x00" in domain or "\x00" in chain_id:
        raise EncodingError("domain and chain id must not contain NUL")
    return domain.encode() + b"\x00" + chain_id.encode() + b"\x00" + payload


def sign(signing_key: nacl.signing.SigningKey, domain: str, chain_id: str, payload: bytes) -> bytes:
    return signing_key.sign(signing_bytes(domain, chain_id, payload)).signature


def verify(public_key: bytes, signature: bytes, domain: str, chain_id: str, payload: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature by `public_key` over the tagged payload."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
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
