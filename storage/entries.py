"""Ledger entries: encoding, builders for clients, and the stateless check run before consensus.

An entry is the canonical msgpack map

    {"body": <bin: canonical msgpack map>, "sigs": [{"by": <str>, "sig": <bin 64>}, ...]}

with `sigs` sorted by `by`, no signer twice. The body always has `type`,
`chain_id`, `author`, `nonce` (per author: each (author, nonce) applies once)
and `time_ms` (the author's clock), plus by type:

- commit:  author_key, commitment (32 bytes), kind, jurisdiction, expires_ms (int or nil)
- revoke:  author_key (absent when author is "governance"), commitment, reason
- admit:   participant {id, jurisdiction, role, public_key}     (author "governance")
- suspend: participant_id                                         (author "governance")
- reconfigure: epoch, changes (storage/reconfiguration.py)       (author "governance")

A participant signs with the key it names in `author_key` (one signature,
by = author), so the stateless check can verify it without the registry;
apply then requires the registry to hold that same key for an active author.
Governance entries carry regulator signatures (by = governance key id) that
must meet the threshold of EACH jurisdiction in genesis. Every signature is
`codec.sign(DOMAIN_ENTRY, chain_id, body)`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterable

import nacl.signing

from consensus import codec
from consensus.validators import JURISDICTIONS

from consensus.epochs import Change, ReconfigurationError

from .genesis import (
    GOVERNANCE_AUTHOR, Genesis, GenesisError, Governance, Participant, check_participant_fields, is_name,
)
from .reconfiguration import SetGovernance, decode_reconfiguration, reconfiguration_wire

ENTRY_TYPES = ("commit", "revoke", "admit", "suspend", "reconfigure")
COMMITMENT_DOMAIN = b"bayledger/commitment/v1"
COMMITMENT_BYTES = 32
SALT_BYTES = 32
entry_bytes_max = 4096            # one signed entry, all signatures included
reason_bytes_max = 256            # revoke reason text, UTF-8
entry_signatures_max = 32         # governance entries: regulator signatures
uint_max = 2**63 - 1              # nonces, times: fit a signed 64-bit integer in any language

_COMMON = ("author", "chain_id", "nonce", "time_ms", "type")
_BODY_FIELDS = {
    "commit": frozenset(_COMMON + ("author_key", "commitment", "kind", "jurisdiction", "expires_ms")),
    "revoke": frozenset(_COMMON + ("author_key", "commitment", "reason")),
    "revoke-governance": frozenset(_COMMON + ("commitment", "reason")),
    "admit": frozenset(_COMMON + ("participant",)),
    "suspend": frozenset(_COMMON + ("participant_id",)),
    "reconfigure": frozenset(_COMMON + ("epoch", "changes")),
}


class EntryError(ValueError):
    """An entry that is not valid: `reason` is a stable code, the message says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True, eq=False)  # not frozen: a frozen dataclass's __init__ costs 3 us, apply makes a million
class Entry:
    """A decoded entry. `data` is its exact bytes (the Merkle leaf is SHA-256(0x00 || data))."""

    data: bytes
    body: bytes
    type: str
    chain_id: str
    author: str
    author_key: bytes | None
    nonce: int
    time_ms: int
    fields: dict            # the decoded body (the type's own fields by name; admit's participant as Participant,
                            # a reconfigure's changes as a reconfiguration.Reconfiguration)
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def is_governance(self) -> bool:
        return self.author == GOVERNANCE_AUTHOR

    @property
    def commitment(self) -> bytes | None:
        return self.fields.get("commitment")


def entry_id(data: bytes) -> bytes:
    """SHA-256 of the entry's bytes: how a submitter and a node name one entry."""
    return hashlib.sha256(data).digest()


# -- decoding -----------------------------------------------------------------------------------

def _fail(reason: str, message: str) -> EntryError:
    return EntryError(reason, message)


_names_seen: set[str] = set()   # strings already known to be valid names (ids, kinds)
names_seen_max = 100_000        # bound on that cache; cleared when full


def _is_name(value: Any) -> bool:
    """is_name, remembering valid strings: apply checks the same few author ids and kinds all day."""
    if type(value) is str and value in _names_seen:
        return True
    if not is_name(value):
        return False
    if len(_names_seen) >= names_seen_max:
        _names_seen.clear()
    _names_seen.add(value)
    return True


# What msgpack may build from an entry (and, separately, from its body): an entry is small and flat
# (entry -> sigs -> signature map; body -> participant map), so these bounds are generous for every
# valid entry and keep a hostile one (1,000-deep arrays, lengths past the data) a plain EntryError.
ENTRY_LIMITS = codec.DecodeLimits(
    bytes_max=entry_bytes_max, depth_max=8, array_len_max=entry_signatures_max, map_len_max=16,
    bin_len_max=entry_bytes_max, str_len_max=entry_bytes_max, items_max=entry_bytes_max,
)


def _unpackb(data: bytes) -> Any:
    """Decode within ENTRY_LIMITS; raises codec.EncodingError only."""
    return codec.unpack(data, limits=ENTRY_LIMITS)


def _canonical_failure(value: Any, data: bytes) -> str | None:
    """Why `data`, which msgpack decoded to `value`, is not its canonical encoding; None if it is."""
    try:
        codec.check_canonical(value, data, ENTRY_LIMITS.depth_max)
    except codec.EncodingError as exc:
        return str(exc)
    return None


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= uint_max


def decode_entry(data: bytes) -> Entry:
    """Parse and check the shape of an entry (no canonical-form or signature check; see validate_entry).

    Deterministic, so apply uses it too: a malformed entry is rejected the same
    way on every validator.
    """
    return _decode_entry(data, check_canonical=False)


def _decode_entry(data: bytes, check_canonical: bool) -> Entry:
    """decode_entry, and with `check_canonical` also the canonical-form check of the entry and its
    body, on the values decoded here (before anything below replaces a field), reported after the
    shape checks as validate_entry always has."""
    if not isinstance(data, bytes):
        raise _fail("entry-malformed", "entry must be bytes")
    if len(data) > entry_bytes_max:
        raise _fail("entry-too-large", f"entry of {len(data)} bytes exceeds {entry_bytes_max}")
    try:
        outer = _unpackb(data)
    except codec.EncodingError as exc:
        raise _fail("entry-malformed", f"entry is not msgpack: {exc}") from None
    not_canonical = None
    if check_canonical:
        not_canonical = _canonical_failure(outer, data)
    body_bytes, signatures = _envelope(outer)
    try:
        body = _unpackb(body_bytes)
    except codec.EncodingError as exc:
        raise _fail("entry-malformed", f"entry body is not msgpack: {exc}") from None
    if type(body) is not dict:
        raise _fail("entry-malformed", "entry body must be a map")
    if check_canonical and not_canonical is None:
        not_canonical = _canonical_failure(body, body_bytes)
    kind, author, author_key = _check_common_fields(body, signatures)
    _check_type_fields(kind, body)  # the whole body: the type's own fields are looked up by name
    if not_canonical is not None:
        raise _fail("entry-not-canonical", f"entry is not canonical msgpack: {not_canonical}")
    return Entry(
        data=data, body=body_bytes, type=kind, chain_id=body["chain_id"], author=author,
        author_key=author_key, nonce=body["nonce"], time_ms=body["time_ms"], fields=body,
        signatures=tuple(signatures),
    )


def _envelope(outer: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The body bytes and the (by, sig) signatures of a decoded entry map."""
    if type(outer) is not dict or len(outer) != 2 or "body" not in outer or "sigs" not in outer:
        raise _fail("entry-malformed", "entry must be a map of exactly body and sigs")
    body_bytes, sigs_raw = outer["body"], outer["sigs"]
    if type(body_bytes) is not bytes:
        raise _fail("entry-malformed", "entry body must be bin")
    if type(sigs_raw) is not list or not 1 <= len(sigs_raw) <= entry_signatures_max:
        raise _fail("entry-malformed", f"sigs must be a list of 1..{entry_signatures_max} signatures")
    signatures = []
    for s in sigs_raw:
        if type(s) is not dict or len(s) != 2:
            raise _fail("entry-malformed", "each signature must be a map of by (str) and sig (bin)")
        by, sig = s.get("by"), s.get("sig")
        if type(by) is not str or type(sig) is not bytes or len(sig) != 64:
            raise _fail("entry-malformed", "each signature must be a map of by (str) and sig (64-byte bin)")
        signatures.append((by, sig))
    if len(signatures) > 1:
        for (a, _), (b, _) in zip(signatures, signatures[1:]):
            if not a.encode() < b.encode():
                raise _fail("entry-malformed", "sigs must be sorted by signer id, each signer once")
    return body_bytes, signatures


def _check_common_fields(body: dict, signatures: list[tuple[str, bytes]]) -> tuple[str, Any, Any]:
    """The fields every body has, and who may sign it: (type, author, author_key)."""
    kind = body.get("type")
    if kind not in ENTRY_TYPES:
        raise _fail("unknown-type", f"entry type {kind!r} is not one of {', '.join(ENTRY_TYPES)}")
    author = body.get("author")
    if kind == "revoke" and author == GOVERNANCE_AUTHOR:
        expected = _BODY_FIELDS["revoke-governance"]
    else:
        expected = _BODY_FIELDS[kind]
    if body.keys() != expected:
        missing = sorted(expected - body.keys())
        extra = sorted(map(str, body.keys() - expected))
        raise _fail("entry-malformed", f"{kind} body: missing {missing or 'nothing'}, unknown {extra or 'nothing'}")
    chain_id = body["chain_id"]
    if type(chain_id) is not str or not chain_id or "\x00" in chain_id:
        raise _fail("entry-malformed", "chain_id must be a non-empty string")
    if not _uint(body["nonce"]) or not _uint(body["time_ms"]):
        raise _fail("entry-malformed", "nonce and time_ms must be integers in 0..2**63-1")
    if kind in ("admit", "suspend", "reconfigure"):
        if author != GOVERNANCE_AUTHOR:
            raise _fail("entry-malformed", f"{kind} must have author {GOVERNANCE_AUTHOR!r}")
    elif author != GOVERNANCE_AUTHOR and not _is_name(author):
        raise _fail("entry-malformed", "author must be a participant id")
    if kind == "commit" and author == GOVERNANCE_AUTHOR:
        raise _fail("entry-malformed", "governance does not commit")
    author_key = body.get("author_key")
    if author != GOVERNANCE_AUTHOR:
        if type(author_key) is not bytes or len(author_key) != codec.PUBLIC_KEY_BYTES:
            raise _fail("entry-malformed", "author_key must be 32 bytes")
        if len(signatures) != 1 or signatures[0][0] != author:
            raise _fail("entry-malformed", "a participant entry carries exactly one signature, by its author")
    return kind, author, author_key


def _check_type_fields(kind: str, fields: dict) -> None:
    """The fields of `kind`'s own (an admit's participant is replaced by its checked Participant)."""
    if kind in ("commit", "revoke"):
        commitment = fields["commitment"]
        if type(commitment) is not bytes or len(commitment) != COMMITMENT_BYTES:
            raise _fail("entry-malformed", "commitment must be 32 bytes")
    if kind == "commit":
        if not _is_name(fields["kind"]):
            raise _fail("entry-malformed", "kind must be a name")
        if fields["jurisdiction"] not in JURISDICTIONS:
            raise _fail("entry-malformed", f"jurisdiction must be one of {', '.join(JURISDICTIONS)}")
        expires = fields["expires_ms"]
        if expires is not None and not _uint(expires):
            raise _fail("entry-malformed", "expires_ms must be nil or an integer in 0..2**63-1")
    elif kind == "revoke":
        reason = fields["reason"]
        if type(reason) is not str or len(reason.encode()) > reason_bytes_max:
            raise _fail("entry-malformed", f"reason must be text of at most {reason_bytes_max} bytes")
    elif kind == "admit":
        try:
            fields["participant"] = check_participant_fields(fields["participant"], "participant")
        except GenesisError as exc:
            raise _fail("entry-malformed", str(exc)) from None
    elif kind == "suspend":
        if not is_name(fields["participant_id"]):
            raise _fail("entry-malformed", "participant_id must be a participant id")
    elif kind == "reconfigure":
        try:
            fields["changes"] = decode_reconfiguration(fields["epoch"], fields["changes"])
        except ReconfigurationError as exc:
            raise _fail(exc.reason, f"reconfigure: {exc}") from None


def validate_entry(data: bytes, genesis: Genesis | None = None, *, check_signatures: bool = True,
                   governance: Governance | None = None) -> Entry:
    """The full stateless check: shape, canonical bytes, signatures, and (given genesis) chain id,
    entry kinds and governance keys and thresholds. Raises EntryError.

    `check_signatures=False` checks everything but the Ed25519 verifications (a validator that lets
    others vouch for them, docs/CONSENSUS.md); which governance keys signed is still checked.
    `governance`: the regulator keys to check against (default: genesis's; they change with the epochs)."""
    entry = _decode_entry(data, check_canonical=True)
    if genesis is not None:
        if entry.chain_id != genesis.chain_id:
            raise _fail("wrong-chain", f"entry is for chain {entry.chain_id!r}, not {genesis.chain_id!r}")
        if entry.type == "commit" and entry.fields["kind"] not in genesis.entry_kinds:
            raise _fail("unknown-kind", f"kind {entry.fields['kind']!r} is not one of {', '.join(genesis.entry_kinds)}")
    if not entry.is_governance:
        by, sig = entry.signatures[0]
        if check_signatures and not codec.verify(entry.author_key, sig, codec.DOMAIN_ENTRY, entry.chain_id, entry.body):
            raise _fail("bad-signature", f"signature of {by!r} does not verify under author_key")
        return entry
    if genesis is None:
        # Without genesis the regulator keys are unknown: only the shape is checked here.
        return entry
    governance = genesis.governance if governance is None else governance
    signers: set[str] = set()
    for by, sig in entry.signatures:
        key = governance.by_id.get(by)
        if key is None:
            raise _fail("unknown-governance-key", f"signer {by!r} is not a regulator key of this epoch")
        if check_signatures and not codec.verify(key.public_key, sig, codec.DOMAIN_ENTRY, entry.chain_id, entry.body):
            raise _fail("bad-signature", f"signature of governance key {by!r} does not verify")
        signers.add(by)
    if not governance.meets_threshold(signers):
        need = ", ".join(f"{j}: {t}" for j, t in governance.thresholds.items())
        raise _fail("governance-threshold", f"signers {sorted(signers)} do not meet the threshold of each jurisdiction ({need})")
    return entry


def check_entry(data: bytes, genesis: Genesis | None = None) -> str | None:
    """Stateless validity before consensus: None if valid, else a reason code.

    Pass `genesis` to check the chain id, entry kinds and governance signatures
    (Ledger.check_entry does, through validate_entry); without it only shape, canonical
    form and participant signatures are checked.
    """
    try:
        validate_entry(data, genesis)
    except EntryError as exc:
        return exc.reason
    return None


# -- building (clients) -------------------------------------------------------------------------

def commitment_of(document_sha256: bytes, salt: bytes) -> bytes:
    """SHA-256(b"bayledger/commitment/v1" || salt (32) || SHA-256(document) (32))."""
    if len(document_sha256) != 32 or len(salt) != SALT_BYTES:
        raise ValueError("commitment_of needs a 32-byte document hash and a 32-byte salt")
    return hashlib.sha256(COMMITMENT_DOMAIN + salt + document_sha256).digest()


def commitment_of_document(document: bytes, salt: bytes) -> bytes:
    return commitment_of(hashlib.sha256(document).digest(), salt)


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def make_body(type: str, chain_id: str, author: str, nonce: int, time_ms: int, **fields: Any) -> bytes:
    """Canonical body bytes. Participant entries pass author_key=<32 bytes>."""
    body = {"type": type, "chain_id": chain_id, "author": author, "nonce": nonce, "time_ms": time_ms, **fields}
    if isinstance(body.get("participant"), Participant):
        body["participant"] = body["participant"].to_wire()
    return codec.pack(body)


def sign_entry(body: bytes, chain_id: str, signers: Iterable[tuple[str, nacl.signing.SigningKey]],
               existing: Iterable[tuple[str, bytes]] = ()) -> bytes:
    """Entry bytes: `body` with signatures by each (id, key) in `signers`, plus `existing` ones."""
    sigs = dict(existing)
    for signer_id, key in signers:
        sigs[signer_id] = codec.sign(key, codec.DOMAIN_ENTRY, chain_id, body)
    ordered = [{"by": by, "sig": sigs[by]} for by in sorted(sigs, key=str.encode)]
    return codec.pack({"body": body, "sigs": ordered})


def cosign(data: bytes, signer_id: str, key: nacl.signing.SigningKey) -> bytes:
    """Add one regulator's signature to a governance entry (signed in turn, HK then CN, or any order)."""
    entry = decode_entry(data)
    return sign_entry(entry.body, entry.chain_id, [(signer_id, key)], existing=entry.signatures)


def build_commit(key: nacl.signing.SigningKey, author: str, chain_id: str, commitment: bytes, kind: str,
                 jurisdiction: str, nonce: int, time_ms: int, expires_ms: int | None = None) -> bytes:
    body = make_body("commit", chain_id, author, nonce, time_ms, author_key=bytes(key.verify_key),
                     commitment=commitment, kind=kind, jurisdiction=jurisdiction, expires_ms=expires_ms)
    return sign_entry(body, chain_id, [(author, key)])


def build_revoke(key: nacl.signing.SigningKey, author: str, chain_id: str, commitment: bytes, reason: str,
                 nonce: int, time_ms: int) -> bytes:
    body = make_body("revoke", chain_id, author, nonce, time_ms, author_key=bytes(key.verify_key),
                     commitment=commitment, reason=reason)
    return sign_entry(body, chain_id, [(author, key)])


def build_governance_revoke(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str,
                            commitment: bytes, reason: str, nonce: int, time_ms: int) -> bytes:
    body = make_body("revoke", chain_id, GOVERNANCE_AUTHOR, nonce, time_ms, commitment=commitment, reason=reason)
    return sign_entry(body, chain_id, signers)


def build_admit(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, participant: Participant,
                nonce: int, time_ms: int) -> bytes:
    body = make_body("admit", chain_id, GOVERNANCE_AUTHOR, nonce, time_ms, participant=participant.to_wire())
    return sign_entry(body, chain_id, signers)


def build_suspend(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, participant_id: str,
                  nonce: int, time_ms: int) -> bytes:
    body = make_body("suspend", chain_id, GOVERNANCE_AUTHOR, nonce, time_ms, participant_id=participant_id)
    return sign_entry(body, chain_id, signers)


def build_reconfigure(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, epoch: int,
                      changes: Iterable[Change], addresses: dict[str, dict[str, str]], nonce: int,
                      time_ms: int, governance: Iterable[SetGovernance] = ()) -> bytes:
    """A reconfigure entry changing `epoch`; `addresses` gives each added validator's {"p2p", "rpc"};
    `governance`: regulator-key changes (reconfiguration.SetGovernance)."""
    body = make_body("reconfigure", chain_id, GOVERNANCE_AUTHOR, nonce, time_ms, epoch=epoch,
                     changes=reconfiguration_wire(tuple(changes), addresses, tuple(governance)))
    return sign_entry(body, chain_id, signers)
