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

Which reconfigure a block judges, and the verdict, are pure functions of the block's entries and the
chain's epochs, so three parties reach the same answer alone: the ledger's execution (its outcome),
the consensus core (LedgerApplication.reconfiguration, through `candidate`, which then judges the
changes with the same consensus.epochs rule) and an offline proof verifier (which walks the epochs
from genesis). The rule:

1. The block's candidate is its first entry that decodes as a reconfigure, passes the governance
   author rules (chain, known regulator keys, each jurisdiction's threshold) and names the chain's
   latest epoch. Only the candidate is judged; any later reconfigure in the same block is refused
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
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from consensus import codec
from consensus.epochs import (
    MARGIN_HEIGHTS_DEFAULT, AddValidator, Change, EpochSchedule, EpochScheduleError, ReconfigurationError,
    decode_changes, encode_changes,
)

RECONFIGURE_TYPE = "reconfigure"
ADDRESS_KINDS = ("p2p", "rpc")
address_bytes_max = 255           # "HOST:PORT": a DNS name is at most 253 bytes
# HOST:PORT with a host of printable ASCII but ':' (no IPv6 literal): an address from the ledger is
# shown to operators and logged, so no control character or other script may hide in it.
_ADDRESS_PATTERN = re.compile(r"[\x21-\x39\x3b-\x7e]+:[0-9]{1,5}")

__all__ = [
    "RECONFIGURE_TYPE", "Reconfiguration", "decode_reconfiguration", "reconfiguration_wire",
    "LedgerEpochs", "candidate",
]


def _address_problem(value: Any) -> str | None:
    if type(value) is not str or len(value.encode()) > address_bytes_max or not _ADDRESS_PATTERN.fullmatch(value):
        return f"must be HOST:PORT of at most {address_bytes_max} bytes"
    if int(value.rsplit(":", 1)[1]) > 65535:
        return "has a port above 65535"
    return None


@dataclass(frozen=True)
class Reconfiguration:
    """A reconfigure entry's own fields, decoded: the epoch it changes, the validator changes, and the
    addresses of each validator it adds (id -> {"p2p", "rpc"})."""

    epoch: int
    changes: tuple[Change, ...]
    addresses: Mapping[str, Mapping[str, str]]


def decode_reconfiguration(epoch: Any, changes: Any) -> Reconfiguration:
    """The body's `epoch` and `changes`, strictly; raises ReconfigurationError (reason
    reconfigure-malformed, -empty or -too-many-changes). Pure and stateless."""
    if type(epoch) is not int or not 0 <= epoch < 2**63:
        raise ReconfigurationError("reconfigure-malformed", "epoch must be an integer in 0..2**63-1")
    if type(changes) is not list:
        raise ReconfigurationError("reconfigure-malformed", "the changes must be a list")
    stripped: list[Any] = []
    addresses: dict[str, dict[str, str]] = {}
    for index, change in enumerate(changes):
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
    return Reconfiguration(epoch, decode_changes(stripped), addresses)


def reconfiguration_wire(changes: Sequence[Change], addresses: Mapping[str, Mapping[str, str]]) -> list[dict]:
    """The body's `changes` for `changes`, each add-validator with its addresses (which it must have)."""
    wire = encode_changes(changes)
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
                   {vid: dict(where) for vid, where in genesis.validator_addresses.items()})

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
        schedule = self.schedule.schedule(height, reconfiguration.changes)   # pending, then the change rules
        addresses = {vid: where for vid, where in self.addresses.items()}
        addresses.update({vid: dict(where) for vid, where in reconfiguration.addresses.items()})
        return LedgerEpochs(schedule, addresses, self.entry_leaves + (leaf_index,))

    def to_wire(self) -> dict:
        return {"schedule": self.schedule.to_wire(), "addresses": {k: dict(v) for k, v in self.addresses.items()},
                "entry_leaves": list(self.entry_leaves)}

    @classmethod
    def from_wire(cls, wire: Any) -> "LedgerEpochs":
        """The persisted form back; EpochScheduleError if it is not one (a corrupt store)."""
        if type(wire) is not dict or set(wire) != {"schedule", "addresses", "entry_leaves"}:
            raise EpochScheduleError("ledger epochs must be a map of schedule, addresses, entry_leaves")
        addresses = wire["addresses"]
        if type(addresses) is not dict or not all(
                type(v) is dict and all(_address_problem(a) is None for a in v.values()) for v in addresses.values()):
            raise EpochScheduleError("ledger epochs: addresses must map ids to {p2p, rpc} addresses")
        if type(wire["entry_leaves"]) is not list:
            raise EpochScheduleError("ledger epochs: entry_leaves must be a list")
        return cls(EpochSchedule.from_wire(wire["schedule"]), addresses, tuple(wire["entry_leaves"]))

    def pack(self) -> bytes:
        return codec.pack(self.to_wire())


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
