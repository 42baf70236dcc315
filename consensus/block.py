"""Block headers and commit certificates: what storage keeps and match proofs carry.

A header is a canonical msgpack map; its hash is SHA-256 of those bytes. From
epoch 1 on the map also names its epoch (docs/PROTOCOL.md §4); epoch 0 leaves it out. A
commit certificate is the set of COMMIT signatures, all for one
(view, height, header_hash), whose signers form a quorum under
`ValidatorSet.is_quorum`. Verifying one needs only the genesis validator set.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec
from .validators import ValidatorSet

ZERO_HASH = bytes(32)
HEADER_FIELDS = (
    "chain_id", "height", "prev_hash", "time_ms", "entries_hash", "entry_count",
    "tree_size", "tree_root", "results_hash", "validator_set_hash",
)
# Written only from epoch 1 on, so an epoch-0 header's bytes and hash are what they always were.
EPOCH_FIELD = "epoch"


class CertificateError(ValueError):
    """A header or certificate that does not verify (the message names the check)."""


def entries_hash(entries: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Hash of a block body: SHA-256 of the canonical msgpack array of the entries' bytes (bin)."""
    return codec.sha256(codec.pack(list(entries)))


def _epoch_from_wire(wire: dict) -> int:
    """0 when the key is absent; present, it must be an integer >= 1 (epoch 0 has one encoding only)."""
    if EPOCH_FIELD not in wire:
        return 0
    value = wire[EPOCH_FIELD]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CertificateError(f"header field epoch, when present, must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class BlockHeader:
    chain_id: str
    height: int           # first block is 1
    prev_hash: bytes      # header hash of height - 1; 32 zero bytes for height 1
    time_ms: int          # proposer's clock, ms since the Unix epoch, never below the parent's
    entries_hash: bytes   # entries_hash() of the block's entries, in order
    entry_count: int
    tree_size: int        # ledger Merkle log size after applying this block
    tree_root: bytes      # RFC 6962 root of that log
    results_hash: bytes   # hash of {outcomes_hash, revoked_root} after this block (storage/smt.py)
    validator_set_hash: bytes
    epoch: int = 0        # the epoch whose validator set certifies it; on the wire only from epoch 1

    def __post_init__(self) -> None:
        for name in ("height", "time_ms", "entry_count", "tree_size", "epoch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CertificateError(f"header field {name} must be a non-negative integer")
        for name in ("prev_hash", "entries_hash", "tree_root", "results_hash", "validator_set_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != codec.HASH_BYTES:
                raise CertificateError(f"header field {name} must be 32 bytes")
        if not isinstance(self.chain_id, str) or not self.chain_id:
            raise CertificateError("header field chain_id must be a non-empty string")

    def to_wire(self) -> dict:
        wire = {name: getattr(self, name) for name in HEADER_FIELDS}
        if self.epoch:
            wire[EPOCH_FIELD] = self.epoch
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> "BlockHeader":
        if not isinstance(wire, dict):
            raise CertificateError("header must be a map")
        missing = [name for name in HEADER_FIELDS if name not in wire]
        if missing:
            raise CertificateError(f"header lacks {', '.join(missing)}")
        extra = sorted(map(str, set(wire) - set(HEADER_FIELDS) - {EPOCH_FIELD}))
        if extra:
            raise CertificateError(f"header has unknown fields {', '.join(extra)}")
        return cls(**{name: wire[name] for name in HEADER_FIELDS}, epoch=_epoch_from_wire(wire))

    def encode(self) -> bytes:
        return codec.pack(self.to_wire())

    def hash(self) -> bytes:
        return codec.sha256(self.encode())


def commit_vote_payload(view: int, height: int, header_hash: bytes) -> bytes:
    """The payload a COMMIT signature covers (under DOMAIN_COMMIT and the chain id)."""
    return codec.pack({"view": view, "height": height, "header_hash": header_hash})


@dataclass(frozen=True)
class CommitSignature:
    validator: str
    signature: bytes

    def to_wire(self) -> dict:
        return {"validator": self.validator, "sig": self.signature}


@dataclass(frozen=True)
class CommitCertificate:
    view: int
    height: int
    header_hash: bytes
    signatures: tuple[CommitSignature, ...]

    def to_wire(self) -> dict:
        return {
            "view": self.view,
            "height": self.height,
            "header_hash": self.header_hash,
            "signatures": [s.to_wire() for s in sorted(self.signatures, key=lambda s: s.validator)],
        }

    @classmethod
    def from_wire(cls, wire: object) -> "CommitCertificate":
        try:
            assert isinstance(wire, dict)
            signatures = tuple(
                CommitSignature(validator=s["validator"], signature=s["sig"]) for s in wire["signatures"]
            )
            cert = cls(view=wire["view"], height=wire["height"], header_hash=wire["header_hash"], signatures=signatures)
        except (AssertionError, KeyError, TypeError) as exc:
            raise CertificateError(f"malformed commit certificate: {exc!r}") from exc
        for name in ("view", "height"):
            value = getattr(cert, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CertificateError(f"certificate field {name} must be a non-negative integer")
        if not isinstance(cert.header_hash, bytes) or len(cert.header_hash) != codec.HASH_BYTES:
            raise CertificateError("certificate header_hash must be 32 bytes")
        return cert

    def verify(self, header: BlockHeader, validators: ValidatorSet) -> None:
        """Raise CertificateError naming the failed check; return None if the certificate holds."""
        if self.height != header.height:
            raise CertificateError(f"certificate is for height {self.height}, header is {header.height}")
        if self.header_hash != header.hash():
            raise CertificateError("certificate signs a different header hash")
        if header.validator_set_hash != validators.hash():
            raise CertificateError("header names a different validator set than the one given")
        payload = commit_vote_payload(self.view, self.height, self.header_hash)
        seen: set[str] = set()
        for sig in self.signatures:
            if sig.validator in seen:
                raise CertificateError(f"validator {sig.validator!r} signs twice")
            validator = validators.get(sig.validator)
            if validator is None:
                raise CertificateError(f"signer {sig.validator!r} is not a validator")
            if not codec.verify(validator.public_key, sig.signature, codec.DOMAIN_COMMIT, header.chain_id, payload):
                raise CertificateError(f"signature of validator {sig.validator!r} is invalid")
            seen.add(sig.validator)
        if not validators.is_quorum(seen):
            raise CertificateError(
                f"signers {sorted(seen)} are not a quorum: need {validators.quorum_size} and "
                f"at least {validators.min_signers_per_jurisdiction} per jurisdiction"
            )
