"""The ledger's `reconfigure` entry (issue 17): its change list, and the epochs the ledger follows.

A reconfigure entry is a governance entry (author "governance", co-signed like `admit`) whose body
has, besides the common fields, `epoch` (the epoch it changes: the chain's latest) and `changes`, a
list of 1..16 change maps in consensus.epochs' wire form, except that `add-validator` also carries
the new validator's `p2p` and `rpc` addresses ("HOST:PORT"), which the validator set does not hold:

    {"op": "add-validator", "id": "hk-3", "public_key": <bin 32>, "jurisdiction": "HK",
     "p2p": "10.0.0.7:26601", "rpc": "10.0.0.7:26701"}
    {"op": "remove-validator", "id": "cn-2"}
    {"op": "rotate-validator-key", "id": "hk-1", "public_key": <bin 32>}
    {"op": "set-min-signers", "min_signers_per_jurisdiction": 2}
    {"op": "set-governance", "jurisdiction": "HK", "threshold": 1,
     "keys": [{"id": "hkma-2", "public_key": <bin 32>}]}

`set-governance` replaces one jurisdiction's regulator keys and threshold (each jurisdiction at most
once per entry). Regulator keys are not the validator set: they ride in the new epoch's application
data (consensus.epochs.EpochConfig.application, the canonical msgpack of the Governance map; empty in
epoch 0, which uses genesis's), so an entry that changes only them still opens an epoch, with the same
validator set, and the hook, the execution and a proof verifier all read them from one schedule. A
governance entry's signatures are checked against its height's regulator keys, at execution too.

Which reconfigure a block judges, and the verdict, are pure functions of the block's entries and the
chain's epochs, so three parties reach the same answer alone: the ledger's execution (its outcome),
the consensus core (LedgerApplication.reconfiguration, through `candidate`, which then judges the
changes with the same consensus.epochs rule) and an offline proof verifier (which walks the epochs
from genesis). The rule:

1. The block's candidate is its first entry that decodes as a reconfigure, passes the governance
   author rules under the regulator keys of its height (chain, known keys, valid signatures, each
   jurisdiction's threshold) and names the chain's latest epoch. Only the candidate is judged; any later reconfigure in the same block is refused
   `reconfigure-pending`, like one in a block while an epoch is pending.
2. The candidate applies iff consensus.epochs accepts its changes (EpochSchedule.schedule); the
   reason codes are that module's.

A reconfigure entry uses no nonce: its replay guard is `epoch`. Once it applies, that epoch is
closed and the entry names an old one (`reconfigure-wrong-epoch`); one refused is refused the same
way again, since the set it is judged against changes only by a reconfiguration that applies.
That keeps the rule free of per-author state, which the consensus core does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from consensus import codec
import functools

from consensus.epochs import (
    MARGIN_HEIGHTS_DEFAULT, RECONFIGURATION_CHANGES_MAX, AddValidator, Change, EpochConfig, EpochSchedule,
    EpochScheduleError, ReconfigurationError, decode_changes, encode_changes,
)
from consensus.validators import JURISDICTIONS

from .genesis import Governance, GovernanceKey, GenesisError, governance_from_wire, governance_keys_max, is_name

RECONFIGURE_TYPE = "reconfigure"
ADDRESS_KINDS = ("p2p", "rpc")
address_bytes_max = 255           # "HOST:PORT": a DNS name is at most 253 bytes
# HOST:PORT with a host of printable ASCII but ':' (no IPv6 literal): an address from the ledger is
# shown to operators and logged, so no control character or other script may hide in it.
_ADDRESS_PATTERN = re.compile(r"[\x21-\x39\x3b-\x7e]+:[0-9]{1,5}")

__all__ = [
    "RECONFIGURE_TYPE", "Reconfiguration", "SetGovernance", "decode_reconfiguration", "reconfiguration_wire",
    "LedgerEpochs", "candidate", "governance_of", "apply_governance",
]


def _address_problem(value: Any) -> str | None:
    if type(value) is not str or len(value.encode()) > address_bytes_max or not _ADDRESS_PATTERN.fullmatch(value):
        return f"must be HOST:PORT of at most {address_bytes_max} bytes"
    if int(value.rsplit(":", 1)[1]) > 65535:
        return "has a port above 65535"
    return None


def _malformed(message: str) -> ReconfigurationError:
    return ReconfigurationError("reconfigure-malformed", message)


@dataclass(frozen=True)
class SetGovernance:
    """Replace one jurisdiction's regulator keys and threshold."""

    OP = "set-governance"
    WIRE_KEYS = frozenset({"op", "jurisdiction", "keys", "threshold"})
    jurisdiction: str
    keys: tuple[GovernanceKey, ...]
    threshold: int

    def to_wire(self) -> dict:
        return {"op": self.OP, "jurisdiction": self.jurisdiction, "threshold": self.threshold,
                "keys": [{"id": key.id, "public_key": key.public_key} for key in self.keys]}

    @classmethod
    def from_wire(cls, wire: dict, where: str) -> "SetGovernance":
        if set(wire) != cls.WIRE_KEYS:
            raise _malformed(f"{where}: fields must be exactly {', '.join(sorted(cls.WIRE_KEYS))}")
        jurisdiction, keys_wire, threshold = wire["jurisdiction"], wire["keys"], wire["threshold"]
        if jurisdiction not in JURISDICTIONS:
            raise _malformed(f"{where}: jurisdiction must be one of {', '.join(JURISDICTIONS)}")
        if type(keys_wire) is not list or not 1 <= len(keys_wire) <= governance_keys_max:
            raise _malformed(f"{where}: keys must be a list of 1..{governance_keys_max} keys")
        keys = []
        for key in keys_wire:
            if type(key) is not dict or set(key) != {"id", "public_key"} or not is_name(key["id"]) \
                    or type(key["public_key"]) is not bytes or len(key["public_key"]) != 32:
                raise _malformed(f"{where}: each key is exactly an id (a name) and a public_key (32 bytes)")
            keys.append(GovernanceKey(key["id"], key["public_key"], jurisdiction))
        if type(threshold) is not int or not 1 <= threshold <= len(keys):
            raise _malformed(f"{where}: threshold must be an integer from 1 to the number of keys ({len(keys)})")
        return cls(jurisdiction, tuple(keys), threshold)


@dataclass(frozen=True)
class Reconfiguration:
    """A reconfigure entry's own fields, decoded: the epoch it changes, the validator changes, the
    addresses of each validator it adds (id -> {"p2p", "rpc"}) and the regulator keys it replaces."""

    epoch: int
    changes: tuple[Change, ...]
    addresses: Mapping[str, Mapping[str, str]]
    governance: tuple[SetGovernance, ...] = ()


def decode_reconfiguration(epoch: Any, changes: Any) -> Reconfiguration:
    """The body's `epoch` and `changes`, strictly; raises ReconfigurationError (reason
    reconfigure-malformed, -empty or -too-many-changes). Pure and stateless."""
    if type(epoch) is not int or not 0 <= epoch < 2**63:
        raise ReconfigurationError("reconfigure-malformed", "epoch must be an integer in 0..2**63-1")
    if type(changes) is not list:
        raise ReconfigurationError("reconfigure-malformed", "the changes must be a list")
    if not changes:
        raise ReconfigurationError("reconfigure-empty", "a reconfiguration needs at least one change")
    if len(changes) > RECONFIGURATION_CHANGES_MAX:
        raise ReconfigurationError("reconfigure-too-many-changes", f"{len(changes)} changes; a reconfiguration "
                                                                   f"holds at most {RECONFIGURATION_CHANGES_MAX}")
    stripped: list[Any] = []
    addresses: dict[str, dict[str, str]] = {}
    governance: list[SetGovernance] = []
    for index, change in enumerate(changes):
        if type(change) is dict and change.get("op") == SetGovernance.OP:
            governance.append(SetGovernance.from_wire(change, f"change #{index} (set-governance)"))
            continue
        if type(change) is dict and change.get("op") == AddValidator.OP:
            change = dict(change)
            where = {}
            for kind in ADDRESS_KINDS:
                if kind not in change:
                    raise ReconfigurationError("reconfigure-malformed", f"change #{index} (add-validator): "
                                                                        f"field {kind!r} is missing")
                problem = _address_problem(change.pop(kind))
                if problem is not None:
                    raise ReconfigurationError("reconfigure-malformed", f"change #{index} (add-validator): "
                                                                        f"{kind} {problem}")
                where[kind] = changes[index][kind]
            if type(change.get("id")) is str:
                addresses[change["id"]] = where
        stripped.append(change)
    if len({change.jurisdiction for change in governance}) != len(governance):
        raise _malformed("a reconfiguration sets a jurisdiction's regulator keys at most once")
    return Reconfiguration(epoch, decode_changes(stripped) if stripped else (), addresses, tuple(governance))


def reconfiguration_wire(changes: Sequence[Change], addresses: Mapping[str, Mapping[str, str]],
                         governance: Sequence[SetGovernance] = ()) -> list[dict]:
    """The body's `changes` for `changes`, each add-validator with its addresses (which it must have),
    then the regulator-key changes."""
    wire = encode_changes(changes) + [change.to_wire() for change in governance]
    for item in wire:
        if item["op"] == AddValidator.OP:
            for kind in ADDRESS_KINDS:
                item[kind] = addresses[item["id"]][kind]
    return wire


@dataclass(frozen=True)
class LedgerEpochs:
    """What the ledger knows of its epochs: the schedule (consensus.epochs), every validator's addresses
    (genesis's, then each added one's, as its entry gave them) and, for each epoch from 1 on, the leaf
    index of the reconfigure entry that scheduled it (a proof walks the epochs through those leaves).
    Immutable: `judge` returns a new value."""

    schedule: EpochSchedule
    addresses: Mapping[str, Mapping[str, str]]
    entry_leaves: tuple[int, ...] = ()     # epoch e >= 1 was scheduled by leaf entry_leaves[e - 1]
    # Epoch 0's regulator keys (the genesis file's); a later epoch's are its application data.
    genesis_governance: Governance | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.entry_leaves) != len(self.schedule.epochs) - 1:
            raise EpochScheduleError(f"{len(self.entry_leaves)} reconfigure leaves for "
                                     f"{len(self.schedule.epochs) - 1} epochs after genesis")
        if any(type(leaf) is not int or leaf < 0 for leaf in self.entry_leaves):
            raise EpochScheduleError("reconfigure leaves must be integers >= 0")

    @classmethod
    def genesis(cls, genesis) -> "LedgerEpochs":
        """Epoch 0: the genesis set, the chain's margin and the genesis addresses."""
        margin = getattr(genesis, "epoch_margin_heights", MARGIN_HEIGHTS_DEFAULT)
        return cls(EpochSchedule.genesis(genesis.validator_set, margin),
                   {vid: dict(where) for vid, where in genesis.validator_addresses.items()},
                   genesis_governance=genesis.governance)

    def governance_at(self, height: int) -> Governance:
        """The regulator keys and thresholds that judge a governance entry committed at `height`."""
        return governance_of(self.schedule.config_at(height), self.genesis_governance)

    @property
    def latest_epoch(self) -> int:
        return self.schedule.latest.epoch

    def is_pending(self, height: int) -> bool:
        """A reconfiguration committed at `height` would find the latest epoch not started yet."""
        return self.schedule.latest.start_height > height

    def judge(self, reconfiguration: Reconfiguration, height: int, leaf_index: int) -> "LedgerEpochs":
        """These epochs after `reconfiguration`, committed at `height` as leaf `leaf_index`, applies; or
        ReconfigurationError with the reason (reconfigure-wrong-epoch, -pending, or consensus.epochs')."""
        latest = self.schedule.latest
        if reconfiguration.epoch != latest.epoch:
            raise ReconfigurationError("reconfigure-wrong-epoch",
                                       f"the entry changes epoch {reconfiguration.epoch}; the chain's latest is "
                                       f"{latest.epoch}")
        if self.is_pending(height):   # before the governance rules, as EpochSchedule.schedule orders them
            raise ReconfigurationError("reconfigure-pending", f"epoch {latest.epoch} starts at height "
                                       f"{latest.start_height}; no reconfiguration before it has started")
        application = application_after(latest, reconfiguration, self.genesis_governance)
        schedule = self.schedule.schedule(height, reconfiguration.changes, application)
        addresses = {vid: where for vid, where in self.addresses.items()}
        addresses.update({vid: dict(where) for vid, where in reconfiguration.addresses.items()})
        return LedgerEpochs(schedule, addresses, self.entry_leaves + (leaf_index,), self.genesis_governance)

    def to_wire(self) -> dict:
        return {"schedule": self.schedule.to_wire(), "addresses": {k: dict(v) for k, v in self.addresses.items()},
                "entry_leaves": list(self.entry_leaves)}

    @classmethod
    def from_wire(cls, wire: Any, genesis_governance: Governance | None = None) -> "LedgerEpochs":
        """The persisted form back; EpochScheduleError if it is not one (a corrupt store)."""
        if type(wire) is not dict or set(wire) != {"schedule", "addresses", "entry_leaves"}:
            raise EpochScheduleError("ledger epochs must be a map of schedule, addresses, entry_leaves")
        addresses = wire["addresses"]
        if type(addresses) is not dict or not all(
                type(v) is dict and all(_address_problem(a) is None for a in v.values()) for v in addresses.values()):
            raise EpochScheduleError("ledger epochs: addresses must map ids to {p2p, rpc} addresses")
        if type(wire["entry_leaves"]) is not list:
            raise EpochScheduleError("ledger epochs: entry_leaves must be a list")
        epochs = cls(EpochSchedule.from_wire(wire["schedule"]), addresses, tuple(wire["entry_leaves"]),
                     genesis_governance)
        for config in epochs.schedule.epochs:
            try:
                governance_of(config, genesis_governance)
            except ReconfigurationError as exc:
                raise EpochScheduleError(f"ledger epochs: epoch {config.epoch}: {exc}") from None
        return epochs

    def pack(self) -> bytes:
        return codec.pack(self.to_wire())


@functools.lru_cache(maxsize=64)
def _governance_of_bytes(application: bytes) -> Governance:
    try:
        return governance_from_wire(codec.unpack(application))
    except (codec.EncodingError, GenesisError) as exc:
        raise ReconfigurationError("reconfigure-malformed", f"an epoch's regulator keys do not decode: {exc}") from None


def governance_of(config: EpochConfig, genesis_governance: Governance | None) -> Governance:
    """The regulator keys of an epoch: its application data, or genesis's for an epoch without any."""
    if not config.application:
        if genesis_governance is None:
            raise ValueError("the genesis governance is needed for an epoch without application data")
        return genesis_governance
    return _governance_of_bytes(config.application)


def apply_governance(governance: Governance, changes: Sequence[SetGovernance]) -> Governance:
    """The regulator keys after `changes` (each replaces one jurisdiction's keys and threshold); a key
    id or public key held in two places is refused (reconfigure-duplicate-id / -duplicate-key)."""
    keys, thresholds = dict(governance.keys), dict(governance.thresholds)
    for change in changes:
        keys[change.jurisdiction] = change.keys
        thresholds[change.jurisdiction] = change.threshold
    every = [key for jurisdiction in JURISDICTIONS for key in keys[jurisdiction]]
    if len({key.id for key in every}) != len(every):
        raise ReconfigurationError("reconfigure-duplicate-id", "a regulator key id is held twice")
    if len({key.public_key for key in every}) != len(every):
        raise ReconfigurationError("reconfigure-duplicate-key", "a regulator public key is held twice")
    return Governance(keys={j: keys[j] for j in JURISDICTIONS}, thresholds={j: thresholds[j] for j in JURISDICTIONS})


def application_after(latest: EpochConfig, reconfiguration: Reconfiguration,
                      genesis_governance: Governance | None) -> bytes | None:
    """The new epoch's application data: the regulator keys after the entry's set-governance changes,
    or None when it has none (the latest epoch's data carries over)."""
    if not reconfiguration.governance:
        return None
    current = governance_of(latest, genesis_governance)
    updated = apply_governance(current, reconfiguration.governance)
    if updated == current:
        return None
    return codec.pack(updated.to_wire())


def candidate(entries: Sequence[Any], latest_epoch: int) -> tuple[int, Any] | None:
    """The block's candidate (rule 1 in the module docstring) among `entries`, given as decoded
    storage.entries.Entry values or None for an entry that does not decode, each already past the
    governance author rules if it is a reconfigure: (its index, the Entry), or None.

    The caller decodes and runs the author rules (storage.entries), so this module needs nothing of
    the entry format beyond `type` and the decoded body's `changes` (a Reconfiguration)."""
    for index, entry in enumerate(entries):
        if entry is None or entry.type != RECONFIGURE_TYPE:
            continue
        if entry.fields["changes"].epoch == latest_epoch:
            return index, entry
    return None
