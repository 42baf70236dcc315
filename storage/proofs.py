"""Match proofs and consistency proofs, and their offline verifiers. No plyvel: client code uses this.

A MatchProof is the canonical msgpack map

    {"version": 2,
     "entry": <bin: the commit entry's exact bytes, as hashed into the leaf>,
     "leaf_index": <int>, "tree_size": <int>,
     "inclusion_path": [<bin 32>, ...],        # RFC 9162 order, leaf side first
     "header": <map: every BlockHeader field>,  # the block that appended the entry
     "certificate": <map: CommitCertificate.to_wire()>,
     "revocation": {entry, leaf_index, tree_size, inclusion_path, header, certificate},  # only if revoked
     "status": {"header": <map>, "certificate": <map>,      # the serving node's latest block
                "outcomes_hash": <bin 32>, "revoked_root": <bin 32>,
                "revoked_path": {"bitmap": <bin 32>, "siblings": [<bin 32>, ...]}},
     "epochs": [{entry, leaf_index, tree_size, inclusion_path, header, certificate}, ...]}  # only from epoch 1

`epochs` walks the validator-set epochs from genesis (issue 17): step e (e = 1..k, k the highest
epoch any header of the proof names) is the reconfigure entry that scheduled epoch e, proven in the
block that committed it. The ledger never appends a refused entry, so an included reconfigure was
accepted, and the verifier recomputes the set it made (LedgerEpochs.judge). Every header is then
checked against the set of its own height under the epochs walked, and must name that epoch and
that set's hash. Absent while the chain is in epoch 0 (those proofs are byte-identical to before).

Each proven entry carries the header of the block that appended it (and that
block's commit certificate), so the verdict says exactly when the commitment
was recorded and, if revoked, when the revocation was. An append-only log
cannot prove that a revoke does NOT exist, so the `status` section does: the
header's results_hash commits to the root of the revoked set (a sparse Merkle
tree, smt.py), and `revoked_path` proves the commitment in or out of that set
as of the status block. A "match" verdict thus means "recorded by both
jurisdictions' validators and not revoked as of height status_height at
status_time_ms"; the caller judges whether that is fresh enough (`max_status_age_ms`).

Decoding is exact (docs/PROTOCOL.md §1, §5): one encoding per value (canonical msgpack), no key
beyond those above in the proof, revocation, status, certificate and signature maps, certificate
signatures strictly ascending by validator id, headers of height >= 1, a commit kind in genesis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack

from consensus import codec
from consensus.block import BlockHeader, CertificateError, CommitCertificate
from consensus.epochs import EpochConfig, EpochScheduleError, ReconfigurationError

from . import merkle, smt
from .entries import EntryError, validate_entry
from .genesis import GOVERNANCE_AUTHOR, Genesis, Governance
from .reconfiguration import RECONFIGURE_TYPE, LedgerEpochs

# 2: the status section (proof of non-revocation). The optional `epochs` key keeps version 2: an
# epoch-0 proof is unchanged, and a version-2 verifier that predates it refuses it (unknown key)
# rather than misread it, which is what a version bump would buy.
MATCH_PROOF_VERSION = 2
proof_base_bytes_max = 65_536       # a proof without epoch steps: ~3 KB with a revocation at a billion leaves
# One epoch step at most: a 4096-byte entry (entries.entry_bytes_max), a header (~400 bytes with a
# 64-byte chain id), a certificate of VALIDATORS_MAX signatures with 64-byte ids (~14.8 KB) and 64
# path hashes (~2.2 KB): 21,548 bytes, rounded up (tests/storage/test_epoch_proofs.py builds the worst).
epoch_step_bytes_max = 24_576
# Epochs a proof may walk: one reconfiguration a week for almost 20 years. A chain that needs more
# needs a checkpointed trust root, not a longer walk (docs/PROTOCOL.md §5).
epoch_steps_max = 1024
proof_bytes_max = proof_base_bytes_max + epoch_steps_max * epoch_step_bytes_max   # 25,231,360 bytes
inclusion_path_hashes_max = 64      # tree sizes are below 2**63
# What msgpack may build from a proof file before any field is looked at: a proof nests 6 levels
# (proof -> epochs -> step -> certificate -> signatures -> signature) and is at most
# proof_bytes_max, so every length and the item count are bounded by that too.
PROOF_LIMITS = codec.DecodeLimits(
    bytes_max=proof_bytes_max, depth_max=12, array_len_max=max(1024, epoch_steps_max), map_len_max=32,
    bin_len_max=proof_bytes_max, str_len_max=4096, items_max=proof_bytes_max,
)

_PROVEN_FIELDS = ("entry", "leaf_index", "tree_size", "inclusion_path", "header", "certificate")
_STATUS_FIELDS = ("header", "certificate", "outcomes_hash", "revoked_root", "revoked_path")
_CERTIFICATE_FIELDS = ("header_hash", "height", "signatures", "view")
_SIGNATURE_FIELDS = ("sig", "validator")
# A status older than this is no news about revocation: the CLI's default bound (the library has
# none unless asked). Minutes, not days: a node that hides a fresh revocation must be caught soon.
MAX_STATUS_AGE_MS_DEFAULT = 10 * 60 * 1000

STATUS_MATCH = "match"
STATUS_REVOKED = "revoked"
STATUS_EXPIRED = "expired"
STATUS_INVALID = "invalid"
STATUS_STALE = "stale"              # a match whose status section is older than the caller allows


@dataclass(frozen=True)
class Verdict:
    """`status` is match, revoked, expired, stale or invalid; for invalid, `check` names the failed
    check and `message` says what was wrong; for stale, `check` is "status.age" and `message` says
    how old the status is. `details` describe the commitment when the proof holds."""

    status: str
    check: str | None = None
    message: str = ""
    details: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.status != STATUS_INVALID


class _Invalid(Exception):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


class Encoded(bytes):
    """A value already in canonical msgpack (e.g. a header or certificate as stored): used as is."""


# Packs exactly as codec.pack does for values that are already canonical (bytes as bin, ints in
# their shortest form, str keys); shared, as codec's is: pack() runs in C under the GIL.
_packer = msgpack.Packer(use_bin_type=True)
_CANONICAL_AS_IS = frozenset({bytes, int, str})


def _encode(value: Any, parts: list[bytes]) -> None:
    """Append codec.pack(value) to `parts`, except that Encoded parts are copied instead of decoded
    and canonicalized again. Match proofs are built this way on every query."""
    kind = type(value)
    if kind is Encoded:
        parts.append(value)
    elif kind in _CANONICAL_AS_IS or (kind is list and all(type(v) is bytes for v in value)):
        parts.append(_packer.pack(value))
    elif kind is dict and all(type(k) is str for k in value):
        parts.append(_packer.pack_map_header(len(value)))
        for key in sorted(value):        # str order by code point is UTF-8 byte order, as codec sorts
            parts.append(_packer.pack(key))
            _encode(value[key], parts)
    else:
        parts.append(codec.pack(value))


def build_match_proof(proven: dict, revocation: dict | None, status: dict, epochs: Any = None) -> bytes:
    """Encode a MatchProof from proven-leaf maps, the status section and the epoch steps (a list of
    proven-leaf maps, or its Encoded form; None or empty in epoch 0: the key is then absent), see the
    module docstring; values may be Encoded. The bytes are exactly codec.pack of the decoded map."""
    proof = {"version": MATCH_PROOF_VERSION, **proven, "status": status}
    if revocation is not None:
        proof["revocation"] = revocation
    if epochs:
        proof["epochs"] = epochs
    parts: list[bytes] = []
    _encode(proof, parts)
    return b"".join(parts)


def encode_epoch_steps(steps: Sequence[dict]) -> Encoded:
    """The `epochs` list encoded once (a node keeps it for every proof until the next epoch)."""
    parts: list[bytes] = [_packer.pack_array_header(len(steps))]
    for step in steps:
        _encode(step, parts)
    return Encoded(b"".join(parts))


def verify_header(header_wire: Any, certificate_wire: Any, genesis: Genesis, where: str = "",
                  epochs: LedgerEpochs | None = None) -> BlockHeader:
    """A header of this chain, naming the epoch of its height and that epoch's set, with a commit
    certificate that holds under that set. `epochs` are those walked from genesis so far (default:
    genesis's alone, so any header of a later epoch is refused)."""
    try:
        header = BlockHeader.from_wire(header_wire)
    except (CertificateError, TypeError) as exc:
        raise _Invalid(f"{where}header", f"header is malformed: {exc}") from None
    if header.height < 1:
        raise _Invalid(f"{where}header", f"header height {header.height}: the first block is height 1")
    if header.chain_id != genesis.chain_id:
        raise _Invalid(f"{where}chain", f"header is for chain {header.chain_id!r}, not {genesis.chain_id!r}")
    config = _epoch_of(header, epochs if epochs is not None else LedgerEpochs.genesis(genesis), where)
    _check_certificate_shape(certificate_wire, f"{where}certificate")
    try:
        certificate = CommitCertificate.from_wire(certificate_wire)
        certificate.verify(header, config.validators)
    except (CertificateError, TypeError, AttributeError) as exc:
        raise _Invalid(f"{where}certificate", f"commit certificate does not hold: {exc}") from None
    return header


def _epoch_of(header: BlockHeader, epochs: LedgerEpochs, where: str) -> EpochConfig:
    """The epoch of header's height under `epochs`; the header must name its number (check `epoch`)
    and its set (check `certificate`, as for a header of another chain's set).

    Checked before the certificate so that a proof missing an epoch step is named for that: its later
    headers name an epoch the walk has not reached."""
    config = epochs.schedule.config_at(header.height)
    if header.epoch != config.epoch:
        missing = " (the proof lacks the step to it)" if header.epoch > config.epoch else ""
        raise _Invalid(f"{where}epoch", f"header of height {header.height} names epoch {header.epoch}; the epochs "
                                        f"walked from genesis put that height in epoch {config.epoch}{missing}")
    if header.validator_set_hash != config.validators.hash():
        # Named as before epochs: a header of another set (another genesis) is a certificate that fails.
        raise _Invalid(f"{where}certificate", f"header of height {header.height} names validator set "
                                        f"{header.validator_set_hash.hex()[:16]}…, not epoch {config.epoch}'s "
                                        f"({config.validators.hash().hex()[:16]}…)")
    return config


def _check_keys(value: Any, required: Sequence[str], check: str, what: str, optional: Sequence[str] = ()) -> None:
    """`value` is a map with every required key and no other than the optional ones."""
    if type(value) is not dict:
        raise _Invalid(check, f"{what} is not a map")
    missing = [k for k in required if k not in value]
    if missing:
        raise _Invalid(check, f"{what} lacks {', '.join(missing)}")
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        # Unknown keys are refused, not skipped: a verifier must see every byte it is asked to trust.
        names = ", ".join(repr(str(k)[:40]) for k in unknown[:5])
        raise _Invalid(check, f"{what} has unknown key(s) {names}")


def _check_certificate_shape(wire: Any, check: str) -> None:
    """Exactly the certificate's four keys and each signature's two, signatures strictly ascending
    by the UTF-8 bytes of the validator id (so each validator once, and one encoding per set)."""
    _check_keys(wire, _CERTIFICATE_FIELDS, check, "commit certificate")
    signatures = wire["signatures"]
    if type(signatures) is not list:
        raise _Invalid(check, "certificate signatures are not a list")
    previous: bytes | None = None
    for signature in signatures:
        _check_keys(signature, _SIGNATURE_FIELDS, check, "certificate signature")
        validator = signature["validator"]
        if type(validator) is not str:
            raise _Invalid(check, "certificate signature's validator is not a string")
        name = validator.encode()
        if previous is not None and name <= previous:
            raise _Invalid(check, f"certificate signatures are not sorted by validator id, each once "
                                  f"({validator[:40]!r} after {previous.decode()[:40]!r})")
        previous = name


# Entry reason codes (storage/entries.py) -> the proof check they fail; any other is `entry`.
_ENTRY_CHECKS = {"wrong-chain": "chain", "unknown-kind": "kind", "unknown-governance-key": "signature",
                 "governance-threshold": "signature"}


def _verify_proven_leaf(item: Any, genesis: Genesis, where: str, epochs: LedgerEpochs):
    missing = [k for k in _PROVEN_FIELDS if k not in item]
    if missing:
        raise _Invalid(f"{where}format", f"proof lacks {', '.join(missing)}")
    data = item["entry"]
    try:
        # The full stateless check but the Ed25519 verifications (_verify_signatures, after inclusion):
        # shape, canonical bytes, chain, a kind genesis lists, known governance keys and thresholds, the
        # regulator keys being those of the height the header claims (verified right after).
        entry = validate_entry(data, genesis, check_signatures=False,
                               governance=epochs.governance_at(_claimed_height(item["header"])))
    except EntryError as exc:
        check = _ENTRY_CHECKS.get(exc.reason, "entry")
        raise _Invalid(f"{where}{check}", f"entry is refused ({exc.reason}): {exc}") from None
    header = verify_header(item["header"], item["certificate"], genesis, where, epochs)
    leaf_index, tree_size, path = item["leaf_index"], item["tree_size"], item["inclusion_path"]
    if tree_size != header.tree_size or type(tree_size) is not int:
        raise _Invalid(f"{where}tree-size", f"proof tree_size {tree_size!r} differs from the header's {header.tree_size}")
    if type(leaf_index) is not int or not 0 <= leaf_index < tree_size:
        raise _Invalid(f"{where}leaf-index", f"leaf index {leaf_index!r} is not inside the tree of size {tree_size}")
    if (type(path) is not list or len(path) > inclusion_path_hashes_max
            or not all(type(h) is bytes and len(h) == codec.HASH_BYTES for h in path)):
        raise _Invalid(f"{where}inclusion", f"inclusion_path must be a list of at most {inclusion_path_hashes_max} "
                                            "32-byte hashes")
    if not merkle.verify_inclusion(merkle.leaf_hash(data), leaf_index, tree_size, path, header.tree_root):
        raise _Invalid(f"{where}inclusion", "inclusion path does not lead from the entry to the header's tree root")
    return entry, header


def _claimed_height(header_wire: Any) -> int:
    """The height a header map says it has, or 1 if it says none: only to pick the regulator keys the
    entry is checked with before the header itself is verified."""
    height = header_wire.get("height") if type(header_wire) is dict else None
    return height if type(height) is int and height >= 1 else 1


_ABSENT = object()   # a key not in the map (nil is a value, refused where the format has none)


def _walk_epochs(steps: Any, genesis: Genesis) -> LedgerEpochs:
    """The epochs from genesis through each step in turn (module docstring); `steps` is the proof's
    `epochs` value, _ABSENT when the key is absent."""
    epochs = LedgerEpochs.genesis(genesis)
    if steps is _ABSENT:
        return epochs
    if type(steps) is not list or not 1 <= len(steps) <= epoch_steps_max:
        raise _Invalid("epochs.format", f"epochs must be a list of 1..{epoch_steps_max} steps, or absent")
    for number, step in enumerate(steps, 1):
        try:
            epochs = _walk_step(step, genesis, epochs)
        except _Invalid as exc:
            raise _Invalid(exc.check, f"epoch step {number} (to epoch {number}): {exc}") from None
    return epochs


def _walk_step(step: Any, genesis: Genesis, epochs: LedgerEpochs) -> LedgerEpochs:
    """`epochs` after the reconfigure `step` proves: its header certified by the set of its height
    under `epochs`, its entry a reconfigure included in that block (so accepted), co-signed by
    governance, and applying to `epochs` by the ledger's own rule."""
    _check_keys(step, _PROVEN_FIELDS, "epochs.format", "epoch step")
    entry, header = _verify_proven_leaf(step, genesis, "epochs.", epochs)
    if entry.type != RECONFIGURE_TYPE:
        raise _Invalid("epochs.entry", f"proven entry is a {entry.type}, not a {RECONFIGURE_TYPE}")
    _verify_signatures(entry, epochs.governance_at(header.height), "epochs.")
    try:
        return epochs.judge(entry.fields["changes"], header.height, step["leaf_index"])
    except (ReconfigurationError, EpochScheduleError, ValueError) as exc:
        # ValueError: a commit height before the latest epoch's predecessor (schedule's caller bug).
        reason = getattr(exc, "reason", type(exc).__name__)
        raise _Invalid("epochs.reconfigure", f"the reconfiguration does not apply ({reason}): {exc}") from None


def _check_no_extra_steps(steps: Any, headers: Sequence[BlockHeader]) -> None:
    """Exactly the steps to the highest epoch a header of the proof names: one proof, one form."""
    highest = max(header.epoch for header in headers)
    count = 0 if steps is _ABSENT else len(steps)
    if count > highest:
        raise _Invalid("epochs.extra", f"{count} epoch steps, but the proof's highest header is of epoch {highest}")


def _verify_signatures(entry, governance: Governance, where: str) -> None:
    """Entry signatures, so a proof's details (author, kind...) are the author's own words; a governance
    entry's under `governance`, the regulator keys of its block's height."""
    if entry.author != GOVERNANCE_AUTHOR:
        by, sig = entry.signatures[0]
        if not codec.verify(entry.author_key, sig, codec.DOMAIN_ENTRY, entry.chain_id, entry.body):
            raise _Invalid(f"{where}signature", f"entry signature of {by!r} does not verify")
        return
    signers = set()
    for by, sig in entry.signatures:
        key = governance.by_id.get(by)
        if key is None or not codec.verify(key.public_key, sig, codec.DOMAIN_ENTRY, entry.chain_id, entry.body):
            raise _Invalid(f"{where}signature", f"governance signature of {by!r} does not verify")
        signers.add(by)
    if not governance.meets_threshold(signers):
        raise _Invalid(f"{where}signature", "governance signatures do not meet each jurisdiction's threshold")


def verify_match_proof(proof: bytes | dict, genesis: Genesis, commitment: bytes, now_ms: int | None = None, *,
                       max_status_age_ms: int | None = None) -> Verdict:
    """Verify a MatchProof offline against genesis and the commitment the caller computed.

    `now_ms` (default: this machine's clock) decides expiry and the status section's age.
    With `max_status_age_ms`, a proof that would be a match is `stale` (check "status.age") when
    now minus the status header's time_ms exceeds it: the proof holds, but says nothing about a
    revocation since. Revoked and expired are final whatever the age. Never raises on bad input:
    returns Verdict(status="invalid", check=<which check failed>, message=...).
    """
    # The caller's own arguments are not proof bytes: a wrong one is the caller's bug, raised.
    if max_status_age_ms is not None and (type(max_status_age_ms) is not int or max_status_age_ms <= 0):
        raise ValueError(f"max_status_age_ms must be a positive int (milliseconds), not {max_status_age_ms!r}")
    if now_ms is not None and type(now_ms) is not int:
        raise ValueError(f"now_ms must be an int (milliseconds since the epoch), not {now_ms!r}")
    try:
        return _verify(proof, genesis, commitment, now_ms, max_status_age_ms)
    except _Invalid as exc:
        return Verdict(status=STATUS_INVALID, check=exc.check, message=str(exc))
    except Exception as exc:
        # Total: a shape no check above anticipated is still a bad proof, never a crash of the verifier.
        return Verdict(status=STATUS_INVALID, check="format",
                       message=f"proof has an unexpected shape: {type(exc).__name__}: {str(exc)[:200]}")


def stale_message(status_height: int, status_age_ms: int) -> str:
    """What a stale verdict says (the CLI prints it after "STALE: "); whole minutes, rounded down."""
    return f"status at height {status_height} is {status_age_ms // 60_000} minutes old"


def _decode(proof: Any) -> tuple[dict, str | None]:
    """The proof's value and, if its bytes are not the one canonical encoding of that value, why.

    The canonical failure is reported after the other checks (as validate_entry reports an entry's),
    so a tampered field is named by its own check; a proof is never accepted with it."""
    if isinstance(proof, dict):
        try:
            proof = codec.pack(proof)   # a value has one encoding: check that one, as a verifier of bytes would
        except codec.EncodingError as exc:
            raise _Invalid("format", f"proof has no canonical encoding: {exc}") from None
    if not isinstance(proof, (bytes, bytearray, memoryview)):
        raise _Invalid("format", "proof must be msgpack bytes")
    data = bytes(proof)
    try:
        value = codec.unpack(data, limits=PROOF_LIMITS)
    except codec.EncodingError as exc:
        if exc.reason == "malformed":
            # Not the msgpack library's words: most likely a file that is no proof at all.
            raise _Invalid("format", "not a match proof: the bytes do not decode as msgpack") from None
        raise _Invalid("format", f"proof is not msgpack within the limits: {exc}") from None
    try:
        codec.check_canonical(value, data, PROOF_LIMITS.depth_max)
    except codec.EncodingError as exc:
        return value, str(exc)
    return value, None


def _verify(proof: bytes | dict, genesis: Genesis, commitment: bytes, now_ms: int | None,
            max_status_age_ms: int | None) -> Verdict:
    proof, not_canonical = _decode(proof)
    # The status section is checked (and named) on its own, below.
    _check_keys(proof, ("version", *_PROVEN_FIELDS), "format", "proof", optional=("revocation", "status", "epochs"))
    version = proof["version"]
    if type(version) is not int or version != MATCH_PROOF_VERSION:
        raise _Invalid("format", f"proof version {str(version)[:40]} is not the integer {MATCH_PROOF_VERSION}")
    if not isinstance(commitment, bytes) or len(commitment) != 32:
        raise _Invalid("commitment", "the commitment to check must be 32 bytes")
    steps = proof.get("epochs", _ABSENT)     # absent in epoch 0: nil is not "absent"
    epochs = _walk_epochs(steps, genesis)
    entry, header, details = _verify_commit(proof, genesis, commitment, epochs)
    revoke_header = _verify_revocation(proof, entry, genesis, commitment, epochs, details)
    status_header, in_revoked_set = _verify_status(proof.get("status"), genesis, commitment, header.height, epochs)
    _check_no_extra_steps(steps, [h for h in (header, revoke_header, status_header) if h is not None])
    now = int(time.time() * 1000) if now_ms is None else now_ms
    # A status "from the future" (our clock behind the validators') is as fresh as can be, not negative.
    status_age_ms = max(0, now - status_header.time_ms)
    details.update(status_height=status_header.height, status_time_ms=status_header.time_ms,
                   status_age_ms=status_age_ms)
    revoked = revoke_header is not None
    if revoked and not in_revoked_set and status_header.height >= revoke_header.height:
        raise _Invalid("status.revocation-not-in-set",
                       f"a revocation at height {revoke_header.height} is proven, but the revoked set at height "
                       f"{status_header.height} does not hold the commitment")
    if not revoked and in_revoked_set:
        raise _Invalid("status.revocation-missing",
                       f"the revoked set at height {status_header.height} holds the commitment, "
                       "but the proof carries no revocation")
    if not_canonical is not None:
        raise _Invalid("canonical", f"proof is not canonical msgpack (one encoding per value): {not_canonical}")
    if revoked:
        return Verdict(status=STATUS_REVOKED, details=details)
    expires_ms = details["expires_ms"]
    if expires_ms is not None and expires_ms <= now:
        return Verdict(status=STATUS_EXPIRED, details=details)
    if max_status_age_ms is not None and status_age_ms > max_status_age_ms:
        return Verdict(status=STATUS_STALE, check="status.age", details=details,
                       message=stale_message(status_header.height, status_age_ms))
    return Verdict(status=STATUS_MATCH, details=details)


def _verify_commit(proof: dict, genesis: Genesis, commitment: bytes, epochs: LedgerEpochs):
    """The proven commit entry of `commitment`: (entry, its block's header, the verdict's details)."""
    entry, header = _verify_proven_leaf(proof, genesis, "", epochs)
    if entry.type != "commit":
        raise _Invalid("entry", f"proven entry is a {entry.type}, not a commit")
    if entry.fields["commitment"] != commitment:
        raise _Invalid("commitment", "the proven entry commits to a different commitment")
    _verify_signatures(entry, epochs.governance_at(header.height), "")
    fields = entry.fields
    details: dict = {
        "commitment": commitment, "height": header.height, "time_ms": header.time_ms,
        "leaf_index": proof["leaf_index"], "author": entry.author, "kind": fields["kind"],
        "jurisdiction": fields["jurisdiction"], "expires_ms": fields["expires_ms"], "entry_time_ms": entry.time_ms,
    }
    return entry, header, details


def _verify_revocation(proof: dict, entry, genesis: Genesis, commitment: bytes, epochs: LedgerEpochs,
                       details: dict) -> BlockHeader | None:
    """The revocation's block header (its facts added to `details`), or None if the proof has none."""
    if "revocation" not in proof:   # present only if revoked: nil is not "absent" (§1: nil only where stated)
        return None
    revocation = proof["revocation"]
    _check_keys(revocation, _PROVEN_FIELDS, "revocation.format", "revocation")
    revoke, revoke_header = _verify_proven_leaf(revocation, genesis, "revocation.", epochs)
    if revoke.type != "revoke" or revoke.fields["commitment"] != commitment:
        raise _Invalid("revocation.entry", "revocation is not a revoke of this commitment")
    if revoke.author != GOVERNANCE_AUTHOR and revoke.author != entry.author:
        raise _Invalid("revocation.entry", f"revocation by {revoke.author!r}, who did not submit the commitment")
    if revocation["leaf_index"] <= proof["leaf_index"]:
        raise _Invalid("revocation.leaf-index", "revocation precedes the commitment in the log")
    _verify_signatures(revoke, epochs.governance_at(revoke_header.height), "revocation.")
    details.update(revoked_height=revoke_header.height, revoked_time_ms=revoke_header.time_ms,
                   revoked_by=revoke.author, revoke_reason=revoke.fields["reason"])
    return revoke_header


def revocation_disagreement(answers: Sequence[tuple[str, Verdict]]) -> str | None:
    """Why verified answers of several nodes about one commitment contradict each other on whether
    it is revoked, or None if they agree. Each answer is (node name, its verdict); invalid verdicts
    are the caller's to refuse first. Stale and expired answers say "not revoked", as match does."""
    revoked = [(name, v) for name, v in answers if v.status == STATUS_REVOKED]
    standing = [(name, v) for name, v in answers if v.status in (STATUS_MATCH, STATUS_EXPIRED, STATUS_STALE)]
    if not revoked or not standing:
        return None
    (gone_name, gone), (kept_name, kept) = revoked[0], standing[0]
    return (f"{gone_name} proves the commitment revoked at height {gone.details['revoked_height']}, "
            f"{kept_name} proves it not revoked as of height {kept.details['status_height']}")


def _verify_status(status: Any, genesis: Genesis, commitment: bytes, commit_height: int,
                   epochs: LedgerEpochs) -> tuple[BlockHeader, bool]:
    """Check the status section; return its header and whether the revoked set holds the commitment."""
    if status is None:
        raise _Invalid("status.format", "proof lacks the status section (a map)")
    _check_keys(status, _STATUS_FIELDS, "status.format", "status")
    header = verify_header(status["header"], status["certificate"], genesis, "status.", epochs)
    outcomes, revoked_root, path = status["outcomes_hash"], status["revoked_root"], status["revoked_path"]
    if not (isinstance(outcomes, bytes) and len(outcomes) == 32 and isinstance(revoked_root, bytes)
            and len(revoked_root) == 32):
        raise _Invalid("status.format", "outcomes_hash and revoked_root must be 32-byte hashes")
    if smt.results_hash(outcomes, revoked_root) != header.results_hash:
        raise _Invalid("status.results-hash",
                       "SHA-256 of {outcomes_hash, revoked_root} is not the status header's results_hash")
    if header.height < commit_height:
        raise _Invalid("status.height",
                       f"status is of height {header.height}, before the commit's block {commit_height}")
    if not isinstance(path, dict) or set(path) != {"bitmap", "siblings"}:
        raise _Invalid("status.revoked-path", "revoked_path must be a map {bitmap, siblings}")
    try:
        if smt.root_from_proof(commitment, False, path["bitmap"], path["siblings"]) == revoked_root:
            return header, False
        if smt.root_from_proof(commitment, True, path["bitmap"], path["siblings"]) == revoked_root:
            return header, True
    except smt.ProofError as exc:
        raise _Invalid("status.revoked-path", f"revoked_path is malformed: {exc}") from None
    raise _Invalid("status.revoked-path", "revoked_path leads to the revoked_root neither with nor without the commitment")


def verify_consistency_proof(older: dict, newer: dict, proof: list, genesis: Genesis | None = None,
                             epochs: list | None = None) -> Verdict:
    """Does the log under header `newer` extend the log under header `older`? (Header wire maps.)

    Pass `genesis` with maps {"header", "certificate"} to also check both certificates; when either
    header is of epoch 1 or later, `epochs` are the epoch steps to the later one's epoch, exactly as
    a match proof's `epochs` (Ledger.epoch_steps): each header must hold under its own epoch's set.
    Never raises on bad input.
    """
    if epochs is not None and genesis is None:
        raise ValueError("epoch steps are checked against genesis: pass genesis too")
    try:
        if genesis is not None:
            steps = _ABSENT if epochs is None else epochs
            walked = _walk_epochs(steps, genesis)
            h1 = verify_header(older.get("header"), older.get("certificate"), genesis, "older.", walked)
            h2 = verify_header(newer.get("header"), newer.get("certificate"), genesis, "newer.", walked)
            _check_no_extra_steps(steps, (h1, h2))
        else:
            try:
                h1, h2 = BlockHeader.from_wire(older), BlockHeader.from_wire(newer)
            except (CertificateError, TypeError) as exc:
                raise _Invalid("header", f"header is malformed: {exc}") from None
        if not merkle.verify_consistency(h1.tree_size, h2.tree_size, h1.tree_root, h2.tree_root, proof):
            raise _Invalid("consistency", f"proof does not show size {h2.tree_size} extends size {h1.tree_size}")
    except _Invalid as exc:
        return Verdict(status=STATUS_INVALID, check=exc.check, message=str(exc))
    except Exception as exc:
        return Verdict(status=STATUS_INVALID, check="format",
                       message=f"proof has an unexpected shape: {type(exc).__name__}: {str(exc)[:200]}")
    return Verdict(status=STATUS_MATCH, details={"size1": h1.tree_size, "size2": h2.tree_size})
