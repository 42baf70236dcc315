"""The simulator's Application: trivial, deterministic, and strict about its inputs.

A sim request is the canonical msgpack map
`{"client": str, "seq": int, "payload": bytes, "check": bytes}` where `check`
is SHA-256 over a domain tag and the other three fields. The checksum stands
in for the author's signature: it lets the simulator make requests that are
well formed but invalid, which no honest replica may ever prepare.

`execute` derives the header fields from the parent header alone (a hash
chain over the entries), so it needs no speculative state: any in-flight
parent the replica accepted gives the same answer as the committed one.
"""

from __future__ import annotations

from consensus import codec
from consensus.application import ExecutionResult
from consensus.block import ZERO_HASH, BlockHeader
from consensus.epochs import EpochChange, EpochConfig, ReconfigurationError, decode_changes, encode_changes

REQUEST_DOMAIN = b"bayledger/sim-request/v1"
REQUEST_FIELDS = ("check", "client", "payload", "seq")
request_bytes_max = 1024
payload_bytes_max = 256


def request_checksum(client: str, seq: int, payload: bytes) -> bytes:
    return codec.sha256(REQUEST_DOMAIN, codec.pack({"client": client, "seq": seq, "payload": payload}))


def make_request(client: str, seq: int, payload: bytes, *, valid: bool = True) -> bytes:
    """A canonical sim request; `valid=False` gives a well-formed one whose checksum is wrong."""
    check = request_checksum(client, seq, payload)
    if not valid:
        check = codec.sha256(b"wrong", check)
    return codec.pack({"client": client, "seq": seq, "payload": payload, "check": check})


# The stand-in for the ledger's co-signed `reconfigure` entry: a valid request of this client whose
# payload is msgpack {"epoch", "changes"} (consensus.epochs wire form).
GOVERNANCE_CLIENT = "governance"


def make_reconfiguration(seq: int, epoch: int, changes) -> bytes:
    return make_request(GOVERNANCE_CLIENT, seq, codec.pack({"epoch": epoch, "changes": encode_changes(changes)}))


def reconfiguration_of(entries, epoch: int):
    """The changes of the first reconfiguration for `epoch` among `entries` that decodes, or None."""
    for entry in entries:
        if check_request(entry) is not None:
            continue
        value = codec.unpack(entry)
        if value["client"] != GOVERNANCE_CLIENT:
            continue
        try:
            body = codec.unpack(value["payload"])
            if isinstance(body, dict) and body.get("epoch") == epoch:
                return decode_changes(body.get("changes"))
        except (codec.EncodingError, ReconfigurationError):
            continue
    return None


def request_key(request: bytes) -> tuple[str, int] | None:
    """(client, seq) of a valid request, None for anything else."""
    if check_request(request) is not None:
        return None
    value = codec.unpack(request)
    return value["client"], value["seq"]


def check_request(request: bytes, *, check_signature: bool = True) -> str | None:
    """Stateless validity: None when valid, else a short reason code. The checksum stands in for
    the signature: `check_signature=False` checks everything else (check_request_shape)."""
    if not isinstance(request, bytes):
        return "request_not_bytes"
    if len(request) > request_bytes_max:
        return "request_too_large"
    try:
        value = codec.unpack_canonical(request)
    except codec.EncodingError:
        return "request_not_canonical"
    if not isinstance(value, dict) or tuple(sorted(value)) != REQUEST_FIELDS:
        return "request_fields"
    client, seq, payload, check = value["client"], value["seq"], value["payload"], value["check"]
    if not isinstance(client, str) or not client:
        return "request_client"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "request_seq"
    if not isinstance(payload, bytes) or len(payload) > payload_bytes_max:
        return "request_payload"
    if not isinstance(check, bytes):
        return "request_checksum"
    if check_signature and check != request_checksum(client, seq, payload):
        return "request_checksum"
    return None


class SimApplication:
    """check_request + check_request_applied + execute as the replica's Application interface asks.

    `applied` holds the (client, seq) of every valid request in the blocks its host applied (the
    host calls `record_applied`; a restarted host rebuilds it from its blocks): the sim's stand-in
    for the ledger's nonce windows, so a request that committed is refused before pooling however
    far back it committed."""

    def __init__(self, blocks=()) -> None:
        self.applied: set[tuple[str, int]] = set()
        for block in blocks:
            self.record_applied(block.entries)

    def record_applied(self, entries) -> None:
        for entry in entries:
            key = request_key(entry)
            if key is not None:
                self.applied.add(key)

    def check_request(self, request: bytes) -> str | None:
        return check_request(request)

    def check_request_applied(self, request: bytes) -> str | None:
        if check_request(request, check_signature=False) is not None:
            return None   # not a request: check_request's business
        value = codec.unpack(request)
        return "already-applied" if (value["client"], value["seq"]) in self.applied else None

    def check_request_shape(self, request: bytes) -> str | None:
        return check_request(request, check_signature=False)

    def reconfiguration(self, height: int, entries, latest: EpochConfig):
        changes = reconfiguration_of(entries, latest.epoch)
        return None if changes is None else EpochChange(changes)

    def execute(self, parent: BlockHeader | None, height: int, time_ms: int, entries) -> ExecutionResult | None:
        if parent is None:
            if height != 1:
                return None
            size, root = 0, ZERO_HASH
        else:
            if parent.height + 1 != height:
                return None
            size, root = parent.tree_size, parent.tree_root
        for entry in entries:
            root = codec.sha256(root, codec.sha256(entry))
        size += len(entries)
        results_hash = codec.sha256(b"sim-results", height.to_bytes(8, "big"), root)
        return ExecutionResult(tree_size=size, tree_root=root, results_hash=results_hash)


def expected_execution(parent: BlockHeader | None, header: BlockHeader, entries) -> ExecutionResult | None:
    """What a committed header's application fields must be (used by the checker)."""
    return SimApplication().execute(parent, header.height, header.time_ms, entries)
