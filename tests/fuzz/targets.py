"""Every decoder that reads bytes from outside, as a fuzz target: bytes in, only the documented error out.

One table, two users: tests/test_hostile_decoders.py drives each target with
hypothesis over structured hostile msgpack (tests/support/hostile_msgpack.py), and
`make fuzz` (tests/fuzz/run.py) drives them with atheris, coverage-guided.

A target returns normally when the decoder accepted the bytes or refused them
with its documented error; anything else (RecursionError, KeyError, a
MemoryError from an unbounded allocation...) propagates, and the driver
reports it as a finding.
"""

from __future__ import annotations

import functools
from typing import Callable

from consensus import codec
from consensus.messages import MessageError, decode_message
from consensus.validators import Validator, ValidatorSet
from node import rpc, transport
from storage.entries import EntryError, validate_entry
from storage.genesis import Genesis, GenesisError
from storage.proofs import verify_match_proof

import nacl.signing

CHAIN_ID = "bayledger-fuzz"
_KEYS = {f"v{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)}
VALIDATORS = ValidatorSet(tuple(
    Validator(f"v{i}", _KEYS[f"v{i}"].verify_key.encode(), jurisdiction)
    for i, jurisdiction in enumerate(["HK", "HK", "CN", "CN"])))


@functools.lru_cache(maxsize=1)
def _example():
    """The PROTOCOL.md example (a real genesis, entry and match proof), built once per process."""
    from tests.support.protocol_example import build, example_genesis
    return example_genesis(), build()


def consensus_message(data: bytes) -> None:
    try:
        decode_message(data, VALIDATORS, CHAIN_ID)
    except MessageError:
        pass


def peer_frame(data: bytes) -> None:
    try:
        transport.decode_frame(data)
    except transport.FrameError:
        pass


def handshake_frame(data: bytes) -> None:
    try:
        transport.parse_auth_frame(data)
    except transport.FrameError:
        pass


def entry(data: bytes) -> None:
    genesis, _ = _example()
    try:
        validate_entry(data, genesis)
    except EntryError:
        pass


def proof(data: bytes) -> None:
    genesis, example = _example()
    verdict = verify_match_proof(data, genesis, example["commitment"])
    assert verdict.status in ("match", "invalid"), verdict


def signed_query(data: bytes) -> None:
    try:
        rpc.decode_query(data, CHAIN_ID, "hk-1")
    except rpc.ApiError:
        pass


def rpc_stream(data: bytes) -> None:
    """The RPC server's reader: the bytes of a connection, cut into messages within RpcLimits."""
    reader = rpc.RequestReader(rpc.RpcLimits())
    try:
        reader.feed(data)
        for _ in reader.messages():
            pass
    except codec.EncodingError:
        pass


def genesis(data: bytes) -> None:
    try:
        Genesis.from_json(data)
    except GenesisError:
        pass


def msgpack_value(data: bytes) -> None:
    for decode in (codec.unpack, codec.unpack_canonical):
        try:
            decode(data)
        except codec.EncodingError:
            pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "handshake-frame": handshake_frame,
    "peer-frame": peer_frame,
    "consensus-message": consensus_message,
    "entry": entry,
    "rpc-request": rpc_stream,
    "signed-query": signed_query,
    "proof": proof,
    "genesis": genesis,
    "msgpack": msgpack_value,
}


def seeds(name: str) -> list[bytes]:
    """Valid inputs for a target, so that fuzzing starts deep inside the format."""
    _, example = _example()
    from consensus.sim import hostile
    messages = [hostile.encode(template()) for template in hostile.TEMPLATES]
    by_target = {
        "consensus-message": messages,
        "peer-frame": [transport.encode_frame(transport.FRAME_KIND_CONSENSUS, m) for m in messages[:4]],
        "handshake-frame": [codec.pack({"id": "v1", "public_key": bytes(32), "sig": bytes(64)})],
        "entry": [example["entry"]],
        "proof": [example["match_proof"]],
        "signed-query": [],
        "rpc-request": [codec.pack([0, 1, "status", []]), codec.pack([0, 2, "submit", [b"x" * 40, True, 100]])],
        "genesis": [b'{"chain_id": "c", "genesis_time_ms": 1, "validators": [], "governance": {}}'],
        "msgpack": messages[:4],
    }
    return [s for s in by_target.get(name, []) if isinstance(s, bytes)]
