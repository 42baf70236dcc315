"""Consensus messages: frozen dataclasses, canonical msgpack on the wire, validated at the boundary.

Every message is a canonical msgpack map {"type": str, ...fields}. Votes and
protocol messages (PRE-PREPARE, PREPARE, COMMIT, CHECKPOINT, VIEW-CHANGE,
NEW-VIEW) carry their sender's validator id and an Ed25519 signature made
with `codec.sign(domain tag, chain id, payload)`. What the signature covers:

- PRE-PREPARE, PREPARE: pack({"view", "height", "header_hash"}) under their tags;
  the block body is bound through the header's entries_hash.
- COMMIT: `block.commit_vote_payload(view, height, header_hash)`, so 2f + 1
  COMMIT signatures of one view are the block's CommitCertificate as they are.
- CHECKPOINT: pack({"height", "header_hash"}).
- VIEW-CHANGE, NEW-VIEW: the canonical msgpack of the whole message without
  its "signature" field. Neither carries a block body: a prepared certificate
  is a header (which binds the entries through entries_hash and entry_count)
  and its PREPARE signatures; a replica fetches the bodies it lacks with
  BLOCK-REQUEST / BLOCK-RESPONSE and checks each against its header.

REQUESTS, CATCH-UP-REQUEST, CATCH-UP-RESPONSE, BLOCK-REQUEST and BLOCK-RESPONSE
are not signed by the validator: requests are signed by their authors (the
Application checks that), a catch-up response carries commit certificates that
the receiver verifies block by block, and a block response is only taken for a
header the receiver already holds certified, its body checked against it. The
host's peer links are authenticated.

`decode_message` never raises anything but `MessageError(reason, detail)`;
`reason` is a short stable code the replica reports in `Ready.rejected`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Union

import msgpack
import nacl.signing

from . import codec
from .block import BlockHeader, CertificateError, CommitCertificate, commit_vote_payload, entries_hash
from .validators import ValidatorSet

# Limits on what a peer may send. The replica's own config may be stricter.
MESSAGE_BYTES_MAX = 64 * 1024 * 1024   # the frame: a PRE-PREPARE, BLOCK-RESPONSE or CATCH-UP-RESPONSE of big blocks
REQUEST_BYTES_MAX = 64 * 1024          # one client request (a signed ledger entry)
BLOCK_REQUESTS_MAX = 4096              # entries in one block, whatever the config says
REQUESTS_PER_MESSAGE_MAX = 1024        # requests in one REQUESTS forward
PREPARED_CERTIFICATES_MAX = 1024       # prepared certificates in one VIEW-CHANGE (>= any watermark window)
CATCH_UP_BLOCKS_MAX = 64               # blocks in one CATCH-UP-RESPONSE (and one request's range)
BLOCK_REQUEST_HASHES_MAX = 64          # header hashes in one BLOCK-REQUEST
VALIDATOR_ID_BYTES_MAX = 128
VALIDATORS_MAX = 100                   # = storage.genesis.validators_max (consensus imports nothing from storage)
CHAIN_ID_BYTES_MAX = 64                # = storage.genesis.chain_id_bytes_max; only for the size arithmetic below
INTEGER_MAX = 2**63 - 1                # views, heights and times fit a signed 64-bit integer
MESSAGE_DEPTH_MAX = 16                 # nesting; the deepest message (NEW-VIEW) nests 7 levels
MESSAGE_ITEMS_MAX = 1_000_000          # array items + map entries in one message (bounds decoded memory)
MESSAGE_STR_BYTES_MAX = 1024           # any string: ids are <= 128 bytes, type names and chain ids shorter
MESSAGE_MAP_LEN_MAX = 32               # any map: every message map has a fixed, small key set

# Per-type byte caps, checked on every received message. Votes are a few hundred bytes; a
# REQUESTS forward holds at most REQUESTS_PER_MESSAGE_MAX entries and its sender splits
# larger ones; only messages that carry blocks may reach the frame's MESSAGE_BYTES_MAX.
VOTE_MESSAGE_BYTES_MAX = 1024          # PREPARE, COMMIT, CHECKPOINT, CATCH-UP-REQUEST
REQUESTS_MESSAGE_BYTES_MAX = 8 * 1024 * 1024
BLOCK_REQUEST_BYTES_MAX = 4096         # 64 hashes x 34 B + 37 B of map = 2,213 B (test_messages checks)
# VIEW-CHANGE and NEW-VIEW carry headers and signatures, never block bodies, so their size no longer
# grows with the blocks. The arithmetic (packed sizes, computed by `_sizes` and `_bounds` below, and
# checked by tests/consensus/test_messages.py and test_view_change_bodies.py):
#   header ............................. <= 399 B   (chain id <= CHAIN_ID_BYTES_MAX, integers 9 B, 5 hashes, epoch)
#   one signature {validator, sig} ..... <= 211 B   (id <= VALIDATOR_ID_BYTES_MAX = 128 B, 64-B signature)
#   prepared certificate {view, header, prepares}
#                                        <= 431 B + 211 B x signers, and an honest replica keeps a
#       minimal quorum of PREPAREs (`minimal_quorum`): 5 of n = 7 -> 1,486 B; 67 of n = 100 -> 14,570 B
#   VIEW-CHANGE ........................ <= ~280 B + checkpoint (64 B + 211 B x n) + window x certificate
#   NEW-VIEW ........................... <= ~100 B + minimal quorum x VIEW-CHANGE + 34 B x 1024 chosen
# n = 7, window = PREPARED_CERTIFICATES_MAX = 1024: VIEW-CHANGE 1.45 MiB, NEW-VIEW (5 of them) 7.3 MiB.
#   (Before, each certificate carried its block: at the default window of 16 and 1 MiB blocks a
#   VIEW-CHANGE was 16 MiB and a NEW-VIEW of 5 was 80 MiB, over the 64 MiB frame.)
# n = VALIDATORS_MAX = 100: VIEW-CHANGE 0.24 MiB and NEW-VIEW (67 of them) 16.3 MiB at window 16;
#   NEW-VIEW 31.2 MiB at window 32. 67 x 1024 x 67 signatures of 64 B are ~300 MiB whatever the
#   encoding, so no cap fits n = 100 with a 1024-block window: the caps are fixed, and a Replica
#   refuses a watermark_window whose worst-case honest VIEW-CHANGE or NEW-VIEW for its own validator
#   set and chain id would exceed them (`view_change_bytes_bound`, `new_view_bytes_bound`). Every
#   window up to 1024 fits n <= 16; n = 100 fits windows up to 32 (with 128-B ids; more with short ones).
VIEW_CHANGE_BYTES_MAX = 4 * 1024 * 1024
NEW_VIEW_BYTES_MAX = 32 * 1024 * 1024

# What decode_message lets msgpack build from a peer's bytes, before any field is looked at.
MESSAGE_LIMITS = codec.DecodeLimits(
    bytes_max=MESSAGE_BYTES_MAX, depth_max=MESSAGE_DEPTH_MAX,
    array_len_max=max(BLOCK_REQUESTS_MAX, REQUESTS_PER_MESSAGE_MAX, PREPARED_CERTIFICATES_MAX),
    map_len_max=MESSAGE_MAP_LEN_MAX, bin_len_max=REQUEST_BYTES_MAX, str_len_max=MESSAGE_STR_BYTES_MAX,
    items_max=MESSAGE_ITEMS_MAX,
)


@lru_cache(maxsize=4096)
def header_hash(header: BlockHeader) -> bytes:
    """BlockHeader.hash(), memoized: headers are frozen and hashed over and over (votes, chains, choices)."""
    return header.hash()


@lru_cache(maxsize=16)
def validator_set_hash(validators: ValidatorSet) -> bytes:
    return validators.hash()


class MessageError(ValueError):
    """A message rejected at the boundary: `reason` is a stable code, `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------
# Field validation helpers (raise MessageError("bad-field", ...))


def _fields(wire: dict, names: tuple[str, ...], kind: str) -> None:
    keys = set(wire)
    expected = set(names) | {"type"}
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(str(k) for k in keys - expected)
        raise MessageError("bad-field", f"{kind}: missing {missing} unknown {extra}")


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > INTEGER_MAX:
        raise MessageError("bad-field", f"{name} must be an integer in [{minimum}, 2^63)")
    return value


def _hash(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != codec.HASH_BYTES:
        raise MessageError("bad-field", f"{name} must be {codec.HASH_BYTES} bytes")
    return value


def _signature(value: Any, name: str = "signature") -> bytes:
    if not isinstance(value, bytes) or len(value) != codec.SIGNATURE_BYTES:
        raise MessageError("bad-field", f"{name} must be {codec.SIGNATURE_BYTES} bytes")
    return value


def _validator_id(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > VALIDATOR_ID_BYTES_MAX:
        raise MessageError("bad-field", f"{name} must be a validator id string")
    return value


def _list(value: Any, name: str, maximum: int) -> list:
    if not isinstance(value, list):
        raise MessageError("bad-field", f"{name} must be an array")
    if len(value) > maximum:
        raise MessageError("too-large", f"{name} has {len(value)} items, limit {maximum}")
    return value


def _requests(value: Any, name: str, maximum: int) -> tuple[bytes, ...]:
    items = _list(value, name, maximum)
    for item in items:
        if not isinstance(item, bytes) or not item:
            raise MessageError("bad-field", f"{name} items must be non-empty bytes")
        if len(item) > REQUEST_BYTES_MAX:
            raise MessageError("too-large", f"a request of {len(item)} bytes exceeds {REQUEST_BYTES_MAX}")
    return tuple(items)


def _header(value: Any, chain_id: str, name: str = "header") -> BlockHeader:
    try:
        header = BlockHeader.from_wire(value)
    except (CertificateError, TypeError) as exc:
        raise MessageError("bad-field", f"{name}: {exc}") from exc
    if header.chain_id != chain_id:
        raise MessageError("wrong-chain", f"{name} is for chain {header.chain_id!r}")
    if header.height < 1 or max(header.height, header.time_ms, header.epoch) > INTEGER_MAX:
        raise MessageError("bad-field", f"{name}: height, time or epoch out of range")
    return header


def _check_body(header: BlockHeader, entries: tuple[bytes, ...], name: str) -> None:
    if header.entry_count != len(entries) or header.entries_hash != entries_hash(entries):
        raise MessageError("bad-field", f"{name}: entries do not match the header's entries_hash/entry_count")


def _signer(validators: ValidatorSet, sender: str) -> bytes:
    validator = validators.get(sender)
    if validator is None:
        raise MessageError("unknown-sender", f"{sender!r} is not a validator")
    return validator.public_key


def _check_signature(
    validators: ValidatorSet, sender: str, signature: bytes, domain: str, chain_id: str, payload: bytes
) -> None:
    if not codec.verify(_signer(validators, sender), signature, domain, chain_id, payload):
        raise MessageError("bad-signature", f"signature of {sender!r} does not verify")


def slot_payload(view: int, height: int, header_hash: bytes) -> bytes:
    """What PRE-PREPARE and PREPARE signatures cover (under their own domain tags)."""
    return codec.pack({"view": view, "height": height, "header_hash": header_hash})


def checkpoint_payload(height: int, header_hash: bytes) -> bytes:
    return codec.pack({"height": height, "header_hash": header_hash})


# ---------------------------------------------------------------------------
# Parts that are not messages on their own


@dataclass(frozen=True)
class VoteSignature:
    """One validator's signature inside a certificate."""

    validator: str
    signature: bytes

    def to_wire(self) -> dict:
        return {"validator": self.validator, "sig": self.signature}

    @classmethod
    def from_wire(cls, wire: Any, name: str) -> "VoteSignature":
        if not isinstance(wire, dict) or set(wire) != {"validator", "sig"}:
            raise MessageError("bad-field", f"{name} must be a map of validator and sig")
        return cls(_validator_id(wire["validator"], f"{name}.validator"), _signature(wire["sig"], f"{name}.sig"))


def _signatures_to_wire(signatures: tuple[VoteSignature, ...]) -> list:
    return [s.to_wire() for s in sorted(signatures, key=lambda s: s.validator)]


def _signatures_from_wire(value: Any, name: str, signatures_max: int) -> tuple[VoteSignature, ...]:
    items = _list(value, name, signatures_max)
    signatures = tuple(VoteSignature.from_wire(item, f"{name}[]") for item in items)
    ids = [s.validator for s in signatures]
    if ids != sorted(set(ids)):
        raise MessageError("bad-field", f"{name} must list distinct validators in ascending order")
    return signatures


def _verify_quorum(
    signatures: tuple[VoteSignature, ...], validators: ValidatorSet, domain: str, chain_id: str, payload: bytes,
    name: str,
) -> None:
    for s in signatures:
        _check_signature(validators, s.validator, s.signature, domain, chain_id, payload)
    if not validators.is_quorum(s.validator for s in signatures):
        raise MessageError("no-quorum", f"{name} signers are not a quorum")


@dataclass(frozen=True)
class CheckpointCertificate:
    """A stable checkpoint: a quorum of CHECKPOINT signatures on (height, header_hash).

    Height 0 is the genesis checkpoint: header_hash is 32 zero bytes and it needs no signatures.
    """

    height: int
    header_hash: bytes
    signatures: tuple[VoteSignature, ...] = ()

    def to_wire(self) -> dict:
        return {"height": self.height, "header_hash": self.header_hash, "signatures": _signatures_to_wire(self.signatures)}

    @classmethod
    def from_wire(cls, wire: Any, validators: ValidatorSet) -> "CheckpointCertificate":
        if not isinstance(wire, dict) or set(wire) != {"height", "header_hash", "signatures"}:
            raise MessageError("bad-field", "checkpoint must be a map of height, header_hash, signatures")
        return cls(
            _int(wire["height"], "checkpoint.height"),
            _hash(wire["header_hash"], "checkpoint.header_hash"),
            _signatures_from_wire(wire["signatures"], "checkpoint.signatures", validators.n),
        )

    def verify(self, validators: ValidatorSet, chain_id: str, base: "CheckpointCertificate | None" = None) -> None:
        """`base`: the checkpoint the epoch starts from (GENESIS_CHECKPOINT in epoch 0), valid without
        signatures: every honest replica derives it from the committed chain (docs/CONSENSUS.md, epochs)."""
        base = GENESIS_CHECKPOINT if base is None else base
        if self.height < base.height:
            raise MessageError("bad-checkpoint", f"checkpoint {self.height} is below the epoch's base {base.height}")
        if self.height == base.height:
            if self.header_hash != base.header_hash or self.signatures:
                raise MessageError("bad-checkpoint", "the epoch's base checkpoint has its own hash and no signatures")
            return
        _verify_quorum(
            self.signatures, validators, codec.DOMAIN_CHECKPOINT, chain_id,
            checkpoint_payload(self.height, self.header_hash), "checkpoint",
        )


GENESIS_CHECKPOINT = CheckpointCertificate(0, bytes(codec.HASH_BYTES), ())


@dataclass(frozen=True)
class PreparedCertificate:
    """Proof that a block was prepared at (view, height): a quorum of PREPARE signatures.

    Every replica, the primary included, sends PREPARE, so the quorum of PREPARE
    signatures alone proves the block prepared. The certificate carries the header
    only: the header binds the block's entries (entries_hash, entry_count), and
    every honest replica in the quorum persisted them before it sent PREPARE, so a
    replica that lacks the body fetches it (BLOCK-REQUEST) and checks it against
    the header.
    """

    view: int
    header: BlockHeader
    prepares: tuple[VoteSignature, ...]

    @property
    def height(self) -> int:
        return self.header.height

    def to_wire(self) -> dict:
        return {"view": self.view, "header": self.header.to_wire(), "prepares": _signatures_to_wire(self.prepares)}

    @classmethod
    def from_wire(cls, wire: Any, validators: ValidatorSet, chain_id: str) -> "PreparedCertificate":
        if not isinstance(wire, dict) or set(wire) != {"view", "header", "prepares"}:
            raise MessageError("bad-field", "prepared certificate must be a map of view, header, prepares")
        header = _header(wire["header"], chain_id, "prepared.header")
        return cls(
            _int(wire["view"], "prepared.view"), header,
            _signatures_from_wire(wire["prepares"], "prepared.prepares", validators.n),
        )

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        _verify_quorum(
            self.prepares, validators, codec.DOMAIN_PREPARE, chain_id,
            slot_payload(self.view, self.height, header_hash(self.header)), "prepared certificate",
        )


@dataclass(frozen=True)
class CommittedBlock:
    """A block with its commit certificate, as delivered to the host and served in catch-up."""

    header: BlockHeader
    entries: tuple[bytes, ...]
    certificate: CommitCertificate

    def to_wire(self) -> dict:
        return {"header": self.header.to_wire(), "entries": list(self.entries), "certificate": self.certificate.to_wire()}

    @classmethod
    def from_wire(cls, wire: Any, validators: ValidatorSet, chain_id: str) -> "CommittedBlock":
        if not isinstance(wire, dict) or set(wire) != {"header", "entries", "certificate"}:
            raise MessageError("bad-field", "block must be a map of header, entries, certificate")
        header = _header(wire["header"], chain_id, "block.header")
        entries = _requests(wire["entries"], "block.entries", BLOCK_REQUESTS_MAX)
        cert_wire = wire["certificate"]
        if not isinstance(cert_wire, dict) or set(cert_wire) != {"view", "height", "header_hash", "signatures"}:
            raise MessageError("bad-field", "certificate must be a map of view, height, header_hash, signatures")
        # Bounded by any set's size, not the receiver's: catch-up carries blocks of later, larger epochs,
        # each certificate checked against its own epoch's set when the block is taken.
        _signatures_from_wire(cert_wire["signatures"], "certificate.signatures", VALIDATORS_MAX)
        try:
            certificate = CommitCertificate.from_wire(cert_wire)
        except (CertificateError, TypeError) as exc:
            raise MessageError("bad-field", f"certificate: {exc}") from exc
        for s in certificate.signatures:
            _validator_id(s.validator, "certificate signer")
            _signature(s.signature, "certificate signature")
        return cls(header, entries, certificate)

    def verify(self, validators: ValidatorSet) -> None:
        """Raise MessageError unless body, header and certificate agree and the certificate holds."""
        _check_body(self.header, self.entries, f"block {self.header.height}")
        try:
            self.certificate.verify(self.header, validators)
        except CertificateError as exc:
            raise MessageError("bad-certificate", str(exc)) from exc


# ---------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Requests:
    """Client requests forwarded by the validator that received them."""

    TYPE = "requests"
    requests: tuple[bytes, ...]

    def to_wire(self) -> dict:
        return {"type": self.TYPE, "requests": list(self.requests)}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "Requests":
        _fields(wire, ("requests",), "requests")
        return cls(_requests(wire["requests"], "requests", REQUESTS_PER_MESSAGE_MAX))

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        pass


@dataclass(frozen=True)
class PrePrepare:
    """The primary's proposal of a block (header + entries) at (view, height)."""

    TYPE = "pre-prepare"
    DOMAIN = codec.DOMAIN_PREPREPARE
    view: int
    header: BlockHeader
    entries: tuple[bytes, ...]
    sender: str
    signature: bytes = b""

    @property
    def height(self) -> int:
        return self.header.height

    def payload(self) -> bytes:
        return slot_payload(self.view, self.header.height, header_hash(self.header))

    def to_wire(self) -> dict:
        return {
            "type": self.TYPE, "view": self.view, "header": self.header.to_wire(), "entries": list(self.entries),
            "sender": self.sender, "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "PrePrepare":
        _fields(wire, ("view", "header", "entries", "sender", "signature"), "pre-prepare")
        header = _header(wire["header"], chain_id)
        entries = _requests(wire["entries"], "entries", BLOCK_REQUESTS_MAX)
        _check_body(header, entries, "pre-prepare")
        return cls(
            _int(wire["view"], "view"), header, entries, _validator_id(wire["sender"], "sender"),
            _signature(wire["signature"]),
        )

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        _check_signature(validators, self.sender, self.signature, self.DOMAIN, chain_id, self.payload())
        if validators.primary(self.view).id != self.sender:
            raise MessageError("not-primary", f"{self.sender!r} is not the primary of view {self.view}")


@dataclass(frozen=True)
class _SlotVote:
    view: int
    height: int
    header_hash: bytes
    sender: str
    signature: bytes = b""

    def payload(self) -> bytes:
        return slot_payload(self.view, self.height, self.header_hash)

    def to_wire(self) -> dict:
        return {
            "type": self.TYPE, "view": self.view, "height": self.height, "header_hash": self.header_hash,  # type: ignore[attr-defined]
            "sender": self.sender, "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str):
        _fields(wire, ("view", "height", "header_hash", "sender", "signature"), cls.TYPE)  # type: ignore[attr-defined]
        return cls(
            _int(wire["view"], "view"), _int(wire["height"], "height", 1), _hash(wire["header_hash"], "header_hash"),
            _validator_id(wire["sender"], "sender"), _signature(wire["signature"]),
        )

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        _check_signature(validators, self.sender, self.signature, self.DOMAIN, chain_id, self.payload())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Prepare(_SlotVote):
    TYPE = "prepare"
    DOMAIN = codec.DOMAIN_PREPARE


@dataclass(frozen=True)
class Commit(_SlotVote):
    TYPE = "commit"
    DOMAIN = codec.DOMAIN_COMMIT

    def payload(self) -> bytes:
        return commit_vote_payload(self.view, self.height, self.header_hash)


@dataclass(frozen=True)
class Checkpoint:
    TYPE = "checkpoint"
    DOMAIN = codec.DOMAIN_CHECKPOINT
    height: int
    header_hash: bytes
    sender: str
    signature: bytes = b""

    def payload(self) -> bytes:
        return checkpoint_payload(self.height, self.header_hash)

    def to_wire(self) -> dict:
        return {
            "type": self.TYPE, "height": self.height, "header_hash": self.header_hash,
            "sender": self.sender, "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "Checkpoint":
        _fields(wire, ("height", "header_hash", "sender", "signature"), "checkpoint")
        return cls(
            _int(wire["height"], "height", 1), _hash(wire["header_hash"], "header_hash"),
            _validator_id(wire["sender"], "sender"), _signature(wire["signature"]),
        )

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        _check_signature(validators, self.sender, self.signature, self.DOMAIN, chain_id, self.payload())


def _with_epoch(body: dict, epoch: int) -> dict:
    """A view-scoped message names its epoch from epoch 1 on (views restart in each epoch, so an old
    epoch's VIEW-CHANGE must not count in a new one); in epoch 0 the key is absent, as it always was."""
    if epoch:
        body["epoch"] = epoch
    return body


def _epoch_fields(wire: dict, names: tuple[str, ...]) -> tuple[str, ...]:
    return names + ("epoch",) if "epoch" in wire else names


def _epoch_from_wire(wire: dict) -> int:
    # Present means 1 or more: epoch 0 has one encoding only (the key absent).
    return _int(wire["epoch"], "epoch", 1) if "epoch" in wire else 0


def _unsigned_bytes(wire: dict) -> bytes:
    """The signed payload of a decoded VIEW-CHANGE or NEW-VIEW: its map without "signature".

    `wire` comes from bytes already checked canonical, so its maps are in canonical
    key order and plain msgpack of it is canonical: no second canonicalization
    of a message that can carry a window of blocks n times over.
    """
    return msgpack.packb({k: v for k, v in wire.items() if k != "signature"}, use_bin_type=True)


@dataclass(frozen=True)
class ViewChange:
    """A replica's move to `view`: its stable checkpoint and its prepared certificates above it."""

    TYPE = "view-change"
    DOMAIN = codec.DOMAIN_VIEW_CHANGE
    view: int
    checkpoint: CheckpointCertificate
    prepared: tuple[PreparedCertificate, ...]
    sender: str
    signature: bytes = b""
    signed_bytes: bytes | None = field(default=None, compare=False, repr=False)  # payload, when decoded
    epoch: int = 0   # on the wire only from epoch 1: epoch-0 bytes are as they always were

    def _body(self) -> dict:
        return _with_epoch({
            "type": self.TYPE, "view": self.view, "checkpoint": self.checkpoint.to_wire(),
            "prepared": [p.to_wire() for p in self.prepared], "sender": self.sender,
        }, self.epoch)

    def payload(self) -> bytes:
        if self.signed_bytes is not None:
            return self.signed_bytes
        return codec.pack(self._body())

    def to_wire(self) -> dict:
        return {**self._body(), "signature": self.signature}

    @classmethod
    def from_wire(cls, wire: Any, validators: ValidatorSet, chain_id: str) -> "ViewChange":
        if not isinstance(wire, dict) or wire.get("type") != cls.TYPE:
            raise MessageError("bad-field", "expected a view-change map")
        _fields(wire, _epoch_fields(wire, ("view", "checkpoint", "prepared", "sender", "signature")), "view-change")
        prepared = tuple(
            PreparedCertificate.from_wire(p, validators, chain_id)
            for p in _list(wire["prepared"], "prepared", PREPARED_CERTIFICATES_MAX)
        )
        return cls(
            _int(wire["view"], "view", 1), CheckpointCertificate.from_wire(wire["checkpoint"], validators), prepared,
            _validator_id(wire["sender"], "sender"), _signature(wire["signature"]), _unsigned_bytes(wire),
            _epoch_from_wire(wire),
        )

    def verify(self, validators: ValidatorSet, chain_id: str, base: CheckpointCertificate | None = None) -> None:
        """Signature, checkpoint proof (`base`: the epoch's base checkpoint), and every prepared certificate
        (above the checkpoint, below the view)."""
        _check_signature(validators, self.sender, self.signature, self.DOMAIN, chain_id, self.payload())
        self.checkpoint.verify(validators, chain_id, base)
        heights = [p.height for p in self.prepared]
        if heights != sorted(set(heights)):
            raise MessageError("bad-field", "prepared certificates must have distinct ascending heights")
        for p in self.prepared:
            if p.height <= self.checkpoint.height:
                raise MessageError("bad-field", "prepared certificate at or below the checkpoint")
            if p.view >= self.view:
                raise MessageError("bad-field", "prepared certificate from a view not below the new view")
            if p.header.validator_set_hash != validator_set_hash(validators):
                raise MessageError("bad-field", "prepared block names another validator set")
            p.verify(validators, chain_id)


@dataclass(frozen=True)
class NewView:
    """The new primary's start of `view`: the quorum of VIEW-CHANGEs and the blocks it re-proposes.

    `chosen` lists the header hashes re-proposed at heights checkpoint+1,
    checkpoint+2, ... where checkpoint is the highest one among the
    VIEW-CHANGEs; every receiver recomputes the choice (`choose_blocks`).
    """

    TYPE = "new-view"
    DOMAIN = codec.DOMAIN_NEW_VIEW
    view: int
    view_changes: tuple[ViewChange, ...]
    chosen: tuple[bytes, ...]
    sender: str
    signature: bytes = b""
    signed_bytes: bytes | None = field(default=None, compare=False, repr=False)  # payload, when decoded
    epoch: int = 0   # on the wire only from epoch 1, as in VIEW-CHANGE

    def _body(self) -> dict:
        return _with_epoch({
            "type": self.TYPE, "view": self.view, "view_changes": [v.to_wire() for v in self.view_changes],
            "chosen": list(self.chosen), "sender": self.sender,
        }, self.epoch)

    def payload(self) -> bytes:
        if self.signed_bytes is not None:
            return self.signed_bytes
        return codec.pack(self._body())

    def to_wire(self) -> dict:
        return {**self._body(), "signature": self.signature}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "NewView":
        _fields(wire, _epoch_fields(wire, ("view", "view_changes", "chosen", "sender", "signature")), "new-view")
        view_changes = tuple(
            ViewChange.from_wire(v, validators, chain_id) for v in _list(wire["view_changes"], "view_changes", validators.n)
        )
        chosen = tuple(_hash(h, "chosen[]") for h in _list(wire["chosen"], "chosen", PREPARED_CERTIFICATES_MAX))
        return cls(
            _int(wire["view"], "view", 1), view_changes, chosen, _validator_id(wire["sender"], "sender"),
            _signature(wire["signature"]), _unsigned_bytes(wire), _epoch_from_wire(wire),
        )

    def verify(self, validators: ValidatorSet, chain_id: str, base: CheckpointCertificate | None = None) -> None:
        """Signature by the view's primary, a quorum of valid VIEW-CHANGEs for this view and epoch, and the
        same choice."""
        _check_signature(validators, self.sender, self.signature, self.DOMAIN, chain_id, self.payload())
        if validators.primary(self.view).id != self.sender:
            raise MessageError("not-primary", f"{self.sender!r} is not the primary of view {self.view}")
        senders = [v.sender for v in self.view_changes]
        if len(set(senders)) != len(senders):
            raise MessageError("bad-field", "two VIEW-CHANGEs from one validator")
        for vc in self.view_changes:
            if vc.view != self.view:
                raise MessageError("bad-field", "a VIEW-CHANGE for another view")
            if vc.epoch != self.epoch:
                raise MessageError("bad-field", "a VIEW-CHANGE of another epoch")
            vc.verify(validators, chain_id, base)
        if not validators.is_quorum(senders):
            raise MessageError("no-quorum", "VIEW-CHANGE senders are not a quorum")
        checkpoint, blocks = choose_blocks(self.view_changes)
        if tuple(header_hash(p.header) for p in blocks) != self.chosen:
            raise MessageError("bad-new-view", "re-proposed blocks differ from the choice the VIEW-CHANGEs dictate")


def choose_blocks(view_changes: tuple[ViewChange, ...] | list[ViewChange]) -> tuple[CheckpointCertificate, list[PreparedCertificate]]:
    """The deterministic NEW-VIEW choice from a quorum of (verified) VIEW-CHANGEs.

    Start at the highest stable checkpoint; for each next height take the
    prepared certificate with the highest view (ties: lowest header hash, which
    only matters if more than f validators are faulty); stop at the first
    height with no certificate or whose block does not chain onto the previous.
    """
    checkpoint = max((vc.checkpoint for vc in view_changes), key=lambda c: (c.height, c.header_hash))
    by_height: dict[int, PreparedCertificate] = {}
    for vc in view_changes:
        for p in vc.prepared:
            best = by_height.get(p.height)
            if best is None or (p.view, _neg(header_hash(p.header))) > (best.view, _neg(header_hash(best.header))):
                by_height[p.height] = p
    chosen: list[PreparedCertificate] = []
    previous = checkpoint.header_hash
    height = checkpoint.height + 1
    while height in by_height:
        p = by_height[height]
        if p.header.prev_hash != previous:
            break
        chosen.append(p)
        previous = header_hash(p.header)
        height += 1
    return checkpoint, chosen


def _neg(data: bytes) -> bytes:
    """Order key that makes the lowest hash win a max()."""
    return bytes(255 - b for b in data)


@dataclass(frozen=True)
class CatchUpRequest:
    """Ask a peer for committed blocks from_height..to_height (inclusive) with their certificates."""

    TYPE = "catch-up-request"
    from_height: int
    to_height: int

    def to_wire(self) -> dict:
        return {"type": self.TYPE, "from_height": self.from_height, "to_height": self.to_height}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "CatchUpRequest":
        _fields(wire, ("from_height", "to_height"), "catch-up-request")
        first = _int(wire["from_height"], "from_height", 1)
        last = _int(wire["to_height"], "to_height", 1)
        if last < first or last - first + 1 > CATCH_UP_BLOCKS_MAX:
            raise MessageError("bad-field", f"range {first}..{last} is empty or longer than {CATCH_UP_BLOCKS_MAX}")
        return cls(first, last)

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        pass


@dataclass(frozen=True)
class CatchUpResponse:
    TYPE = "catch-up-response"
    blocks: tuple[CommittedBlock, ...]

    def to_wire(self) -> dict:
        return {"type": self.TYPE, "blocks": [b.to_wire() for b in self.blocks]}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "CatchUpResponse":
        _fields(wire, ("blocks",), "catch-up-response")
        blocks = tuple(
            CommittedBlock.from_wire(b, validators, chain_id) for b in _list(wire["blocks"], "blocks", CATCH_UP_BLOCKS_MAX)
        )
        return cls(blocks)

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        pass  # each block is verified against the receiver's chain, in order


@dataclass(frozen=True)
class BlockRequest:
    """Ask a peer for the bodies of blocks named (by header hash) in a NEW-VIEW's choice."""

    TYPE = "block-request"
    header_hashes: tuple[bytes, ...]

    def to_wire(self) -> dict:
        return {"type": self.TYPE, "header_hashes": list(self.header_hashes)}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "BlockRequest":
        _fields(wire, ("header_hashes",), "block-request")
        hashes = tuple(
            _hash(h, "header_hashes[]") for h in _list(wire["header_hashes"], "header_hashes", BLOCK_REQUEST_HASHES_MAX)
        )
        if not hashes or len(set(hashes)) != len(hashes):
            raise MessageError("bad-field", "header_hashes must be distinct and not empty")
        return cls(hashes)

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        pass


@dataclass(frozen=True)
class BlockResponse:
    """One block body, with its header: taken only for a header the receiver asked for.

    The decoder checks the entries against the header's entries_hash and entry_count
    (reason `bad-body`); the receiver checks that the header is one it holds certified.
    """

    TYPE = "block-response"
    header: BlockHeader
    entries: tuple[bytes, ...]

    def to_wire(self) -> dict:
        return {"type": self.TYPE, "header": self.header.to_wire(), "entries": list(self.entries)}

    @classmethod
    def from_wire(cls, wire: dict, validators: ValidatorSet, chain_id: str) -> "BlockResponse":
        _fields(wire, ("header", "entries"), "block-response")
        header = _header(wire["header"], chain_id)
        entries = _requests(wire["entries"], "entries", BLOCK_REQUESTS_MAX)
        if header.entry_count != len(entries) or header.entries_hash != entries_hash(entries):
            raise MessageError("bad-body", "entries do not match the header's entries_hash/entry_count")
        return cls(header, entries)

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        pass


Message = Union[
    Requests, PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView, CatchUpRequest, CatchUpResponse,
    BlockRequest, BlockResponse,
]
MESSAGE_TYPES: dict[str, Any] = {
    cls.TYPE: cls
    for cls in (Requests, PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView, CatchUpRequest, CatchUpResponse,
                BlockRequest, BlockResponse)
}
SIGNED_TYPES = (PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView)
# Signed for one height: judged with the set of that height's epoch (decode_message's validators_at).
HEIGHT_SCOPED_TYPES = (PrePrepare, Prepare, Commit, Checkpoint)
MESSAGE_BYTES_MAX_BY_TYPE: dict[Any, int] = {
    Prepare: VOTE_MESSAGE_BYTES_MAX, Commit: VOTE_MESSAGE_BYTES_MAX, Checkpoint: VOTE_MESSAGE_BYTES_MAX,
    CatchUpRequest: VOTE_MESSAGE_BYTES_MAX, Requests: REQUESTS_MESSAGE_BYTES_MAX,
    BlockRequest: BLOCK_REQUEST_BYTES_MAX,
    ViewChange: VIEW_CHANGE_BYTES_MAX, NewView: NEW_VIEW_BYTES_MAX,
    PrePrepare: MESSAGE_BYTES_MAX, BlockResponse: MESSAGE_BYTES_MAX, CatchUpResponse: MESSAGE_BYTES_MAX,
}


# ---------------------------------------------------------------------------
# Minimal quorums and the honest size bounds of VIEW-CHANGE and NEW-VIEW


def minimal_quorum(validators: ValidatorSet, signers) -> tuple[str, ...]:
    """A smallest quorum taken from `signers`, preferring them in the order given: first
    `min_signers_per_jurisdiction` of every jurisdiction, then the others up to quorum_size.
    Its size is at most minimal_quorum_size(validators). All of `signers` (deduplicated) if
    they are no quorum."""
    ids = [s for s in dict.fromkeys(signers) if s in validators]
    if not validators.is_quorum(ids):
        return tuple(ids)
    need = validators.min_signers_per_jurisdiction
    picked: dict[str, None] = {}
    per_jurisdiction: dict[str, int] = {}
    for s in ids:
        jurisdiction = validators.get(s).jurisdiction
        if per_jurisdiction.get(jurisdiction, 0) < need:
            per_jurisdiction[jurisdiction] = per_jurisdiction.get(jurisdiction, 0) + 1
            picked[s] = None
    for s in ids:
        if len(picked) >= validators.quorum_size:
            break
        picked.setdefault(s, None)
    return tuple(picked)


def minimal_quorum_size(validators: ValidatorSet) -> int:
    return max(validators.quorum_size, validators.min_signers_per_jurisdiction * len(validators.jurisdiction_sizes))


def _array_header_bytes(count: int) -> int:
    return 1 if count < 16 else 3 if count < 2**16 else 5


def _packed_list_bytes(item_bytes: int, count: int) -> int:
    return _array_header_bytes(count) + item_bytes * count


@lru_cache(maxsize=64)
def _sizes(chain_id_bytes: int, id_bytes: int) -> tuple[int, int, int]:
    """(header, one signature, certificate without signatures) packed sizes at their worst."""
    worst = BlockHeader("x" * chain_id_bytes, INTEGER_MAX, bytes(32), INTEGER_MAX, bytes(32), INTEGER_MAX, INTEGER_MAX,
                        bytes(32), bytes(32), bytes(32), epoch=INTEGER_MAX)
    header = len(codec.pack(worst.to_wire()))
    signature = len(codec.pack(VoteSignature("x" * id_bytes, bytes(codec.SIGNATURE_BYTES)).to_wire()))
    bare = len(codec.pack({"view": INTEGER_MAX, "header": worst.to_wire(), "prepares": []})) - 1
    return header, signature, bare


def prepared_certificate_bytes_bound(signers: int, chain_id_bytes: int = CHAIN_ID_BYTES_MAX,
                                     id_bytes: int = VALIDATOR_ID_BYTES_MAX) -> int:
    _, signature, bare = _sizes(chain_id_bytes, id_bytes)
    return bare + _packed_list_bytes(signature, signers)


def _bounds(n: int, quorum: int, window: int, chain_id_bytes: int, id_bytes: int) -> tuple[int, int]:
    _, signature, _ = _sizes(chain_id_bytes, id_bytes)
    checkpoint = len(codec.pack({"height": INTEGER_MAX, "header_hash": bytes(32), "signatures": []})) - 1 \
        + _packed_list_bytes(signature, n)
    certificate = prepared_certificate_bytes_bound(quorum, chain_id_bytes, id_bytes)
    sender = "x" * id_bytes
    view_change = len(codec.pack({
        "type": ViewChange.TYPE, "view": INTEGER_MAX, "checkpoint": {}, "prepared": [], "sender": sender,
        "signature": bytes(codec.SIGNATURE_BYTES), "epoch": INTEGER_MAX,
    })) - 2 + checkpoint + _packed_list_bytes(certificate, window)
    new_view = len(codec.pack({
        "type": NewView.TYPE, "view": INTEGER_MAX, "view_changes": [], "chosen": [], "sender": sender,
        "signature": bytes(codec.SIGNATURE_BYTES), "epoch": INTEGER_MAX,
    })) - 2 + _packed_list_bytes(view_change, quorum) + _packed_list_bytes(2 + codec.HASH_BYTES, PREPARED_CERTIFICATES_MAX)
    return view_change, new_view


def view_change_bytes_bound(validators: ValidatorSet, window: int, chain_id: str) -> int:
    """The largest VIEW-CHANGE an honest replica of `validators` with this watermark window sends: its
    checkpoint certificate (up to n signatures) and up to `window` prepared certificates of a minimal
    quorum each."""
    return _set_bounds(validators, window, chain_id)[0]


def new_view_bytes_bound(validators: ValidatorSet, window: int, chain_id: str) -> int:
    """The largest NEW-VIEW an honest primary sends once it holds a minimal quorum of honest VIEW-CHANGEs
    (it picks the smallest it holds, see Replica._check_view_change_quorum)."""
    return _set_bounds(validators, window, chain_id)[1]


def _set_bounds(validators: ValidatorSet, window: int, chain_id: str) -> tuple[int, int]:
    id_bytes = max(len(v.id.encode()) for v in validators.validators)
    return _bounds(validators.n, minimal_quorum_size(validators), window, len(chain_id.encode()), id_bytes)


def encode(message: Message) -> bytes:
    return codec.pack(message.to_wire())


def sign(message: Any, signing_key: nacl.signing.SigningKey, chain_id: str) -> Any:
    """A copy of `message` with its signature filled in."""
    fields = {f: getattr(message, f) for f in message.__dataclass_fields__}
    if "signed_bytes" in fields:
        fields["signed_bytes"] = None  # a decoded-then-edited message signs its current fields
        message = type(message)(**fields)
    signature = codec.sign(signing_key, message.DOMAIN, chain_id, message.payload())
    return type(message)(**{**fields, "signature": signature})


def decode_message(
    data: bytes, validators: ValidatorSet, chain_id: str, *, verify: bool = True, epoch: int = 0,
    base_checkpoint: CheckpointCertificate | None = None,
    validators_at: Callable[[int], ValidatorSet] | None = None, known_through_height: int | None = None,
) -> Message:
    """Parse and validate one message; raise MessageError(reason) for anything wrong with it.

    `epoch` and `base_checkpoint`: the receiver's epoch and the checkpoint it started from; a VIEW-CHANGE
    or NEW-VIEW of another epoch is refused ("wrong-epoch"). `validators_at(height)`: the set a message
    signed for one height is judged with (else `validators`). `known_through_height`: the last height
    whose set the receiver knows for certain; a vote or proposal above it that its best-known set cannot
    verify (or whose sender leads the view only in another set) may come from a set it has not learned
    yet: "unknown-epoch", not a forgery.

    Total: whatever the bytes, the only exception that leaves is MessageError. Decoding is
    bounded by MESSAGE_LIMITS (depth, lengths, items), then each type by its byte cap.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise MessageError("bad-encoding", "message is not bytes")
    try:
        wire = codec.unpack_canonical(bytes(data), limits=MESSAGE_LIMITS)
    except codec.EncodingError as exc:
        reason = "too-large" if exc.reason in ("too-large", "too-long", "too-many-items") else "bad-encoding"
        raise MessageError(reason, str(exc)) from None
    if not isinstance(wire, dict):
        raise MessageError("bad-encoding", "message is not a map")
    kind = wire.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError("bad-type", f"unknown message type {str(kind)[:40]!r}")
    bytes_max = MESSAGE_BYTES_MAX_BY_TYPE[cls]
    if len(data) > bytes_max:
        raise MessageError("too-large", f"a {kind} message of {len(data)} bytes exceeds {bytes_max}")
    try:
        message = cls.from_wire(wire, validators, chain_id)
        if isinstance(message, HEIGHT_SCOPED_TYPES) and validators_at is not None:
            _verify_height_scoped(message, validators_at, chain_id, verify, known_through_height)
            return message
        # Another epoch's view-scoped message first: its signer may be in no set of ours (an honest peer
        # still in the old epoch relays the NEW-VIEW of a removed primary).
        if isinstance(message, (ViewChange, NewView)) and message.epoch != epoch:
            raise MessageError("wrong-epoch", f"a {kind} of epoch {message.epoch}; this is epoch {epoch}")
        if isinstance(message, SIGNED_TYPES) and message.sender not in validators:
            raise MessageError("unknown-sender", f"{message.sender!r} is not a validator")
        if isinstance(message, (ViewChange, NewView)):
            if verify:
                message.verify(validators, chain_id, base_checkpoint)
        elif verify:
            message.verify(validators, chain_id)
    except MessageError:
        raise
    except Exception as exc:
        # Defensive: a shape no validator above anticipated is still the peer's fault, not ours.
        raise MessageError("bad-field", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return message


def _verify_height_scoped(message, validators_at: Callable[[int], ValidatorSet], chain_id: str, verify: bool,
                          known_through_height: int | None) -> None:
    try:
        validators = validators_at(max(message.height, 1))
        if message.sender not in validators:
            raise MessageError("unknown-sender", f"{message.sender!r} is not a validator")
        if verify:
            message.verify(validators, chain_id)
    except MessageError as exc:
        if known_through_height is not None and message.height > known_through_height and exc.reason in (
                "unknown-sender", "bad-signature", "not-primary"):
            raise MessageError("unknown-epoch", f"height {message.height} is past the heights whose validator set "
                               f"this replica knows ({known_through_height}): {exc}") from None
        raise


def encode_catch_up_response(blocks: list[CommittedBlock] | tuple[CommittedBlock, ...]) -> bytes:
    """What a host sends for a `Ready.serve_catch_up` entry: blocks read from storage, in height order."""
    if len(blocks) > CATCH_UP_BLOCKS_MAX:
        raise ValueError(f"at most {CATCH_UP_BLOCKS_MAX} blocks per catch-up response")
    return encode(CatchUpResponse(tuple(blocks)))


@dataclass(frozen=True)
class Evidence:
    """Two conflicting messages signed by the same validator (encoded, ready to log or publish)."""

    validator: str
    kind: str
    view: int
    height: int
    first: bytes
    second: bytes = field(repr=False, default=b"")
