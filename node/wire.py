"""msgpack-RPC on the wire: message shapes, stable constants, encoders and the client's response reader.

One module for both sides, so the server (node/rpc.py) and every client (node/client.py, the CLI
through it, testnet/rpc.py, testnet/loadgen.py) agree by construction, not by copied constants.
The format is the public msgpack-RPC one (docs/PROTOCOL.md §8): a stream of msgpack values, back
to back, no length prefix.

    request       [0, msgid, method, params]   msgid: uint32, method: str, params: array
    response      [1, msgid, error, result]    error: nil or {"code": str, "message": str}
    notification  [2, method, params]

The server's request reader, with its limits on what a stranger may send, is `node.rpc.RequestReader`.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgpack

from consensus import codec

MESSAGE_REQUEST = 0
MESSAGE_RESPONSE = 1
MESSAGE_NOTIFICATION = 2
msgid_max = 2**32 - 1               # the spec's msgid is a 32-bit unsigned integer

# The `type` field of a signed match query's body (docs/PROTOCOL.md §8, match).
QUERY_TYPE = "match-query"

# Stable error codes (docs/PROTOCOL.md §8 lists what each means). Other-language clients match on
# these strings: never rename one.
ERROR_PARSE = "parse-error"
ERROR_TOO_LARGE = "message-too-large"
ERROR_INVALID_REQUEST = "invalid-request"
ERROR_METHOD_NOT_FOUND = "method-not-found"
ERROR_INVALID_PARAMS = "invalid-params"
ERROR_NOT_FOUND = "not-found"
ERROR_BAD_ENTRY = "bad-entry"                   # submit: the entry fails a check; the message gives the reason
ERROR_ALREADY_COMMITTED = "already-committed"   # submit: these exact bytes are on the ledger
ERROR_UNAUTHORIZED = "unauthorized"
ERROR_BAD_SIGNATURE = "bad-signature"
ERROR_REPLAYED = "replayed"
ERROR_STALE = "stale-query"
ERROR_BUSY = "busy"
ERROR_MEMPOOL_FULL = "mempool-full"     # submit: the pool of waiting entries, or the participant's share, is full
ERROR_TIMEOUT = "timeout"
ERROR_SHUTTING_DOWN = "shutting-down"   # the node drains before it stops: another node can take the call
ERROR_INTERNAL = "internal"
ERROR_TLS_REQUIRED = "tls-required"     # a client without TLS at a TLS node, answered in plain msgpack-RPC

read_chunk_bytes_max = 65_536                # one read from a socket, either side
response_bytes_max = 64 * 1024 * 1024        # one answer a client accepts: a block of many entries is the largest

_packer = msgpack.Packer(use_bin_type=True)  # reused: packb would build one per message
_uint_packer = msgpack.Packer()              # a msgid alone, for requests packed ahead (encode_packed_request)
# A request is the 4-array [0, msgid, method, params]: fixarray 4 (0x94), then the positive fixint 0.
_REQUEST_HEAD = bytes([0x94, MESSAGE_REQUEST])


class WireError(codec.EncodingError):
    """Bytes from the other side that are not the msgpack-RPC messages expected here (a ValueError;
    `reason` as codec.EncodingError's)."""


def is_msgid(value: Any) -> bool:
    return type(value) is int and 0 <= value <= msgid_max


def error_map(code: str, message: str) -> dict:
    """The error of a response: a stable `code` and a human `message`."""
    return {"code": code, "message": message}


def encode_request(msgid: int, method: str, params: list) -> bytes:
    return _packer.pack([MESSAGE_REQUEST, msgid, method, list(params)])


def encode_method_and_params(method: str, params: list) -> bytes:
    """The method and params of a request, encoded once so a load generator can send them many times."""
    return _packer.pack(method) + _packer.pack(params)


def encode_packed_request(msgid: int, method_and_params: bytes) -> bytes:
    """A request whose method and params are already encoded (`encode_method_and_params`)."""
    return _REQUEST_HEAD + _uint_packer.pack(msgid) + method_and_params


def encode_response(msgid: int | None, error: dict | None, result: Any) -> bytes:
    return _packer.pack([MESSAGE_RESPONSE, msgid, error, result])


def unpacked(unpacker: msgpack.Unpacker) -> Iterator[Any]:
    """Each complete message in the unpacker's buffer, until it needs more bytes; WireError for
    bytes that are not msgpack (reason "too-deep" past the unpacker's nesting limit, else "malformed")."""
    while True:
        try:
            message = unpacker.unpack()
        except msgpack.OutOfData:
            return
        except Exception as exc:  # msgpack raises several unrelated types for bad bytes
            if isinstance(exc, MemoryError):
                raise
            reason = "too-deep" if isinstance(exc, msgpack.StackError) else "malformed"
            raise WireError(f"{type(exc).__name__}: {exc}", reason) from None
        yield message


class ResponseReader:
    """A client connection's bytes cut into responses (msgid, error, result); no I/O.

    `feed` what arrives, then iterate `responses()`. A response with msgid nil is the node
    refusing the whole connection (busy, tls-required, parse-error) before it closes it.
    Notifications are skipped (the spec lets a server send them; ours sends none). Anything
    else, or more than `bytes_max` unread, raises WireError: the stream cannot be trusted.
    """

    def __init__(self, bytes_max: int = response_bytes_max) -> None:
        self.bytes_max = bytes_max
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=bytes_max, strict_map_key=False)

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise WireError(f"an answer exceeds {self.bytes_max} bytes", "too-large") from None

    def responses(self) -> Iterator[tuple[Any, Any, Any]]:
        for message in unpacked(self._unpacker):
            if (isinstance(message, list) and len(message) == 4 and message[0] == MESSAGE_RESPONSE
                    and (message[1] is None or is_msgid(message[1]))):
                yield message[1], message[2], message[3]
            elif not (isinstance(message, list) and len(message) == 3 and message[0] == MESSAGE_NOTIFICATION):
                raise WireError(f"not a msgpack-RPC response: {message!r}"[:200])
