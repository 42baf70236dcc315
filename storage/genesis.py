"""The genesis file: the chain's identity, validators, governance, entry kinds and first participants.

A human-readable JSON object (bytes as lowercase hex). Every field is checked
on load and a bad one is named in the error. `Genesis.hash()` is SHA-256 of
the canonical msgpack of `to_wire()` (bytes as bin); a ledger store records
it and refuses to open under another genesis. Validator addresses are not
hashed: moving a validator to another host does not make a new chain.

    {
      "chain_id": "bayledger-local",
      "genesis_time_ms": 1700000000000,
      "min_signers_per_jurisdiction": 1,
      "validators": [{"id": "hk-1", "public_key": "<64 hex>", "jurisdiction": "HK",
                      "p2p": "127.0.0.1:26601", "rpc": "127.0.0.1:26701"}, ...],
      "governance": {"HK": {"keys": [{"id": "hkma-1", "public_key": "<64 hex>"}], "threshold": 1},
                     "CN": {"keys": [...], "threshold": 1}},
      "entry_kinds": ["credit-report", "credit-score", "kyc-attestation"],
      "participants": [{"id": "hk-bureau", "jurisdiction": "HK", "role": "credit-provider",
                        "public_key": "<64 hex>"}],
      "epoch_margin_heights": 1024
    }

`epoch_margin_heights` (optional, default 1024) is the chain's epoch margin: a reconfiguration
committed at height h takes effect at h + margin + 1 (consensus/epochs.py). Every validator's
watermark_window must be at most it. Left at the default it is not hashed, so a genesis written
before it existed keeps its hash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus import codec
from consensus.epochs import MARGIN_HEIGHTS_DEFAULT
from consensus.validators import JURISDICTIONS, Validator, ValidatorSet, ValidatorSetError

DEFAULT_ENTRY_KINDS = ("credit-report", "credit-score", "kyc-attestation")
GOVERNANCE_AUTHOR = "governance"  # the author name of entries signed by regulator keys
genesis_file_bytes_max = 1_048_576
chain_id_bytes_max = 64
name_bytes_max = 64              # participant, validator, key ids; roles; entry kinds
governance_keys_max = 16         # per jurisdiction
entry_kinds_max = 64
participants_max = 10_000        # admitted at genesis
validators_max = 100
epoch_margin_heights_max = 1_000_000   # a reconfiguration takes effect within this many heights

# Ids, roles and kinds: ASCII letters, digits, '.', '_', '-', starting with a letter or digit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ADDRESS_PATTERN = re.compile(r"[^\s:]+:[0-9]{1,5}")


class GenesisError(ValueError):
    """A genesis file or value that is not valid (the message names the field)."""


def is_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value.encode()) <= name_bytes_max
        and NAME_PATTERN.fullmatch(value) is not None
    )


@dataclass(frozen=True)
class Participant:
    id: str
    jurisdiction: str
    role: str
    public_key: bytes

    def to_wire(self) -> dict:
        return {"id": self.id, "jurisdiction": self.jurisdiction, "role": self.role, "public_key": self.public_key}


def check_participant_fields(wire: object, where: str) -> Participant:
    """Validate a participant map whose public_key is bytes; raise GenesisError naming the field."""
    if not isinstance(wire, dict):
        raise GenesisError(f"{where} must be an object")
    _only_keys(wire, ("id", "jurisdiction", "role", "public_key"), where)
    if not is_name(wire["id"]):
        raise GenesisError(f"{where}.id must be a name of 1..{name_bytes_max} letters, digits, '.', '_', '-'")
    if wire["id"] == GOVERNANCE_AUTHOR:
        raise GenesisError(f"{where}.id {GOVERNANCE_AUTHOR!r} is reserved")
    if wire["jurisdiction"] not in JURISDICTIONS:
        raise GenesisError(f"{where}.jurisdiction must be one of {', '.join(JURISDICTIONS)}")
    if not is_name(wire["role"]):
        raise GenesisError(f"{where}.role must be a name")
    key = wire["public_key"]
    if not isinstance(key, bytes) or len(key) != codec.PUBLIC_KEY_BYTES:
        raise GenesisError(f"{where}.public_key must be 32 bytes")
    return Participant(id=wire["id"], jurisdiction=wire["jurisdiction"], role=wire["role"], public_key=key)


@dataclass(frozen=True)
class GovernanceKey:
    id: str
    public_key: bytes
    jurisdiction: str


@dataclass(frozen=True)
class Governance:
    """Regulator keys per jurisdiction and how many of each must sign a governance entry."""

    keys: dict[str, tuple[GovernanceKey, ...]]   # jurisdiction -> keys
    thresholds: dict[str, int]                   # jurisdiction -> signatures needed
    by_id: dict[str, GovernanceKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {k.id: k for keys in self.keys.values() for k in keys})

    def meets_threshold(self, signer_ids: set[str]) -> bool:
        """True iff the (already verified) signers reach the threshold of EACH jurisdiction."""
        for jurisdiction, keys in self.keys.items():
            count = sum(1 for k in keys if k.id in signer_ids)
            if count < self.thresholds[jurisdiction]:
                return False
        return True

    def to_wire(self) -> dict:
        return {
            j: {"keys": [{"id": k.id, "public_key": k.public_key} for k in self.keys[j]], "threshold": self.thresholds[j]}
            for j in self.keys
        }


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validator_set: ValidatorSet
    validator_addresses: dict[str, dict[str, str]]  # validator id -> {"p2p": "HOST:PORT", "rpc": "HOST:PORT"}
    governance: Governance
    entry_kinds: tuple[str, ...]
    participants: tuple[Participant, ...]
    epoch_margin_heights: int = MARGIN_HEIGHTS_DEFAULT

    @property
    def min_signers_per_jurisdiction(self) -> int:
        return self.validator_set.min_signers_per_jurisdiction

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Genesis":
        """Read and validate a genesis JSON file (OSError if it cannot be read)."""
        with open(path, "rb") as f:
            data = f.read(genesis_file_bytes_max + 1)
        if len(data) > genesis_file_bytes_max:
            raise GenesisError(f"genesis file is larger than {genesis_file_bytes_max} bytes")
        return cls.from_json(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Genesis":
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise GenesisError(f"genesis is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> "Genesis":
        """Validate the JSON form (hex strings for bytes)."""
        if not isinstance(raw, dict):
            raise GenesisError("genesis must be a JSON object")
        allowed = ("chain_id", "genesis_time_ms", "min_signers_per_jurisdiction", "validators",
                   "governance", "entry_kinds", "participants", "epoch_margin_heights")
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise GenesisError(f"unknown genesis field(s): {', '.join(map(str, unknown))}")
        for name in ("chain_id", "genesis_time_ms", "validators", "governance"):
            if name not in raw:
                raise GenesisError(f"genesis lacks {name}")

        chain_id = raw["chain_id"]
        if not isinstance(chain_id, str) or not is_name(chain_id) or len(chain_id.encode()) > chain_id_bytes_max:
            raise GenesisError(f"chain_id must be a name of 1..{chain_id_bytes_max} letters, digits, '.', '_', '-'")
        time_ms = raw["genesis_time_ms"]
        if not _is_uint(time_ms):
            raise GenesisError("genesis_time_ms must be a non-negative integer")
        minimum = raw.get("min_signers_per_jurisdiction", 1)
        if not _is_uint(minimum):
            raise GenesisError("min_signers_per_jurisdiction must be a non-negative integer")

        # In this order, so the first error reported is the one it has always been.
        validator_set, addresses = _validators(raw["validators"], minimum)
        governance = _governance(raw["governance"])
        entry_kinds = _entry_kinds(raw.get("entry_kinds", list(DEFAULT_ENTRY_KINDS)))
        participants = _participants(raw.get("participants", []))
        margin = raw.get("epoch_margin_heights", MARGIN_HEIGHTS_DEFAULT)
        if not _is_uint(margin) or not 1 <= margin <= epoch_margin_heights_max:
            raise GenesisError(f"epoch_margin_heights must be an integer in 1..{epoch_margin_heights_max}")
        return cls(
            chain_id=chain_id,
            genesis_time_ms=time_ms,
            validator_set=validator_set,
            validator_addresses=addresses,
            governance=governance,
            entry_kinds=entry_kinds,
            participants=participants,
            epoch_margin_heights=margin,
        )

    # -- writing ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The JSON form (bytes as lowercase hex); `from_dict(to_dict())` gives an equal Genesis."""
        validators = []
        for v in self.validator_set.validators:
            item = {"id": v.id, "public_key": v.public_key.hex(), "jurisdiction": v.jurisdiction}
            item.update(self.validator_addresses.get(v.id, {}))
            validators.append(item)
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "min_signers_per_jurisdiction": self.min_signers_per_jurisdiction,
            "validators": validators,
            "governance": {
                j: {"keys": [{"id": k.id, "public_key": k.public_key.hex()} for k in keys],
                    "threshold": self.governance.thresholds[j]}
                for j, keys in self.governance.keys.items()
            },
            "entry_kinds": list(self.entry_kinds),
            "participants": [
                {"id": p.id, "jurisdiction": p.jurisdiction, "role": p.role, "public_key": p.public_key.hex()}
                for p in self.participants
            ],
            **self._margin_if_set(),
        }

    def _margin_if_set(self) -> dict:
        """{"epoch_margin_heights": m} unless m is the default (so older genesis files keep their bytes)."""
        margin = self.epoch_margin_heights
        return {} if margin == MARGIN_HEIGHTS_DEFAULT else {"epoch_margin_heights": margin}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_wire(self) -> dict:
        """The hashed form: like to_dict with bytes as bytes, but without the validators' network
        addresses, which operators may change without making a new chain."""
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "validator_set": self.validator_set.to_wire(),
            "governance": self.governance.to_wire(),
            "entry_kinds": list(self.entry_kinds),
            "participants": [p.to_wire() for p in self.participants],
            **self._margin_if_set(),
        }

    def hash(self) -> bytes:
        return codec.sha256(codec.pack(self.to_wire()))


def _validators(validators_raw: Any, minimum: int) -> tuple[ValidatorSet, dict[str, dict[str, str]]]:
    """The validator set, and each validator's addresses (id -> {"p2p", "rpc"}, those given)."""
    if not isinstance(validators_raw, list) or not validators_raw:
        raise GenesisError("validators must be a non-empty list")
    if len(validators_raw) > validators_max:
        raise GenesisError(f"validators: at most {validators_max}")
    validators = []
    addresses: dict[str, dict[str, str]] = {}
    for i, v in enumerate(validators_raw):
        where = f"validators[{i}]"
        if not isinstance(v, dict):
            raise GenesisError(f"{where} must be an object")
        _only_keys(v, ("id", "public_key", "jurisdiction", "p2p", "rpc"), where, optional=("p2p", "rpc"))
        if not is_name(v["id"]):
            raise GenesisError(f"{where}.id must be a name")
        key = _hex(v["public_key"], codec.PUBLIC_KEY_BYTES, f"{where}.public_key")
        validators.append(Validator(id=v["id"], public_key=key, jurisdiction=v["jurisdiction"]))
        addresses[v["id"]] = {}
        for kind in ("p2p", "rpc"):
            if kind in v:
                if not isinstance(v[kind], str) or not ADDRESS_PATTERN.fullmatch(v[kind]) or int(
                        v[kind].rsplit(":", 1)[1]) > 65535:
                    raise GenesisError(f"{where}.{kind} must be HOST:PORT")
                addresses[v["id"]][kind] = v[kind]
    try:
        return ValidatorSet(tuple(validators), min_signers_per_jurisdiction=minimum), addresses
    except ValidatorSetError as exc:
        raise GenesisError(f"validators: {exc}") from None


def _entry_kinds(kinds_raw: Any) -> tuple[str, ...]:
    if not isinstance(kinds_raw, list) or not kinds_raw or len(kinds_raw) > entry_kinds_max:
        raise GenesisError(f"entry_kinds must be a list of 1..{entry_kinds_max} names")
    for kind in kinds_raw:
        if not is_name(kind):
            raise GenesisError(f"entry_kinds: {kind!r} is not a name")
    if len(set(kinds_raw)) != len(kinds_raw):
        raise GenesisError("entry_kinds lists a kind twice")
    return tuple(kinds_raw)


def _participants(participants_raw: Any) -> tuple[Participant, ...]:
    if not isinstance(participants_raw, list) or len(participants_raw) > participants_max:
        raise GenesisError(f"participants must be a list of at most {participants_max}")
    participants = []
    seen_ids: set[str] = set()
    for i, p in enumerate(participants_raw):
        where = f"participants[{i}]"
        if not isinstance(p, dict):
            raise GenesisError(f"{where} must be an object")
        wire = dict(p)
        if "public_key" in wire:
            wire["public_key"] = _hex(wire["public_key"], codec.PUBLIC_KEY_BYTES, f"{where}.public_key")
        participant = check_participant_fields(wire, where)
        if participant.id in seen_ids:
            raise GenesisError(f"{where}.id {participant.id!r} appears twice")
        seen_ids.add(participant.id)
        participants.append(participant)
    return tuple(participants)


def _governance(raw: Any) -> Governance:
    if not isinstance(raw, dict):
        raise GenesisError("governance must be an object of jurisdiction -> {keys, threshold}")
    missing = [j for j in JURISDICTIONS if j not in raw]
    if missing:
        raise GenesisError(f"governance lacks jurisdiction(s) {', '.join(missing)}: each must approve changes")
    unknown = sorted(set(raw) - set(JURISDICTIONS))
    if unknown:
        raise GenesisError(f"governance: unknown jurisdiction(s) {', '.join(map(str, unknown))}")
    keys: dict[str, tuple[GovernanceKey, ...]] = {}
    thresholds: dict[str, int] = {}
    ids: set[str] = set()
    public_keys: set[bytes] = set()
    for jurisdiction in JURISDICTIONS:
        where = f"governance.{jurisdiction}"
        item = raw[jurisdiction]
        if not isinstance(item, dict):
            raise GenesisError(f"{where} must be an object")
        _only_keys(item, ("keys", "threshold"), where)
        keys_raw = item["keys"]
        if not isinstance(keys_raw, list) or not keys_raw or len(keys_raw) > governance_keys_max:
            raise GenesisError(f"{where}.keys must be a list of 1..{governance_keys_max} keys")
        found = []
        for i, k in enumerate(keys_raw):
            kwhere = f"{where}.keys[{i}]"
            if not isinstance(k, dict):
                raise GenesisError(f"{kwhere} must be an object")
            _only_keys(k, ("id", "public_key"), kwhere)
            if not is_name(k["id"]):
                raise GenesisError(f"{kwhere}.id must be a name")
            if k["id"] in ids:
                raise GenesisError(f"{kwhere}.id {k['id']!r} appears twice")
            key = _hex(k["public_key"], codec.PUBLIC_KEY_BYTES, f"{kwhere}.public_key")
            if key in public_keys:
                raise GenesisError(f"{kwhere}.public_key is used twice")
            ids.add(k["id"])
            public_keys.add(key)
            found.append(GovernanceKey(id=k["id"], public_key=key, jurisdiction=jurisdiction))
        threshold = item["threshold"]
        if not _is_uint(threshold) or not 1 <= threshold <= len(found):
            raise GenesisError(f"{where}.threshold must be an integer from 1 to the number of keys ({len(found)})")
        keys[jurisdiction] = tuple(found)
        thresholds[jurisdiction] = threshold
    return Governance(keys=keys, thresholds=thresholds)


def governance_from_wire(wire: Any) -> Governance:
    """Governance.to_wire() back (bytes as bin), with every check of the genesis file's governance;
    GenesisError otherwise."""
    if not isinstance(wire, dict):
        raise GenesisError("governance must be a map of jurisdiction -> {keys, threshold}")
    as_json: dict = {}
    for jurisdiction, item in wire.items():
        if not isinstance(item, dict) or not isinstance(item.get("keys"), list):
            raise GenesisError(f"governance.{str(jurisdiction)[:8]} must be a map of keys and threshold")
        keys = []
        for key in item["keys"]:
            if not isinstance(key, dict) or not isinstance(key.get("public_key"), bytes):
                raise GenesisError(f"governance.{jurisdiction}: each key is a map of id and public_key (bin)")
            keys.append({**key, "public_key": key["public_key"].hex()})
        as_json[jurisdiction] = {**item, "keys": keys}
    return _governance(as_json)


def _only_keys(item: dict, allowed: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(map(str, set(item) - set(allowed)))
    if unknown:
        raise GenesisError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [k for k in allowed if k not in item and k not in optional]
    if missing:
        raise GenesisError(f"{where} lacks {', '.join(missing)}")


def _hex(value: Any, length: int, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length or value != value.lower():
        raise GenesisError(f"{where} must be {2 * length} lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise GenesisError(f"{where} must be {2 * length} lowercase hex digits") from None


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
