"""Epochs: the validator set changing while the chain runs (issue 17), as pure functions and values.

Epoch 0 is the genesis validator set, from height 1. A reconfiguration (a list of changes: add,
remove, rotate a key, set the per-jurisdiction minimum) committed at height h in epoch e schedules
epoch e + 1, which starts at `activation_height(h, margin)`; each epoch is certified only by its own
set. The replica, the ledger's execution, the offline proof verifier and the simulator all share
this module, so every rule lives here once:

- `decode_changes` / `encode_changes`: the strict wire form of a change list;
- `apply_changes`: the new set, or a `ReconfigurationError` whose `reason` is a stable code;
- `activation_height`: where the next epoch starts;
- `EpochConfig`, `EpochSchedule`: which set certifies which height.

A removed validator's id and every key that leaves the set (removed or rotated out) are retired
for good: evidence and history name one validator per id, and no old signature counts again.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Union

from . import codec
from .validators import JURISDICTIONS, Validator, ValidatorSet, ValidatorSetError

__all__ = [
    "RECONFIGURATION_CHANGES_MAX", "MARGIN_HEIGHTS_DEFAULT", "VALIDATORS_MAX", "VALIDATOR_ID_BYTES_MAX", "VALIDATOR_ID_PATTERN",
    "ReconfigurationError", "EpochScheduleError",
    "AddValidator", "RemoveValidator", "RotateValidatorKey", "SetMinSigners", "Change",
    "decode_changes", "encode_changes", "apply_changes", "retired_after", "activation_height",
    "EpochConfig", "EpochSchedule", "EpochChange", "APPLICATION_BYTES_MAX",
]

RECONFIGURATION_CHANGES_MAX = 16  # changes in one reconfiguration
# Heights between a reconfiguration's commit and the new epoch's first height, by default: the largest
# watermark_window a node may configure (node/config.py, messages.PREPARED_CERTIFICATES_MAX), which every
# validator's window must not exceed. A chain fixes its own margin in its genesis schedule.
MARGIN_HEIGHTS_DEFAULT = 1024
VALIDATORS_MAX = 100              # validators in any epoch (storage/genesis.py's validators_max)
# An epoch's application data (opaque here; the ledger's regulator keys and thresholds): a few keys.
APPLICATION_BYTES_MAX = 4096
VALIDATOR_ID_BYTES_MAX = 64       # bytes of a validator id (storage/genesis.py's name_bytes_max)
# The genesis file's name rule (storage/genesis.py NAME_PATTERN; a test holds them equal): an id added
# later is as safe in logs, file names and addresses as one from genesis.
VALIDATOR_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ReconfigurationError(ValueError):
    """A reconfiguration refused; `reason` is a stable code, the message says why.

    Reasons: reconfigure-malformed, reconfigure-empty, reconfigure-too-many-changes,
    reconfigure-unknown-validator, reconfigure-duplicate-id, reconfigure-duplicate-key,
    reconfigure-reused-id, reconfigure-reused-key, reconfigure-too-many-validators,
    reconfigure-unsafe, reconfigure-no-change, reconfigure-pending.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class EpochScheduleError(ValueError):
    """A persisted epoch config or schedule that is malformed or out of order (a corrupt store, not
    a refused reconfiguration)."""


# --- field checks: each returns what is wrong with the value, or None ---------------------------

def _id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if VALIDATOR_ID_PATTERN.fullmatch(value) is None:
        return "must be ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
    if len(value) > VALIDATOR_ID_BYTES_MAX:
        return f"must be at most {VALIDATOR_ID_BYTES_MAX} bytes, got {len(value)}"
    return None


def _public_key_problem(value: object) -> str | None:
    if not isinstance(value, bytes) or len(value) != codec.PUBLIC_KEY_BYTES:
        return f"must be {codec.PUBLIC_KEY_BYTES} bytes"
    return None


def _jurisdiction_problem(value: object) -> str | None:
    if not isinstance(value, str) or value not in JURISDICTIONS:
        return f"must be one of {', '.join(JURISDICTIONS)}"
    return None


def _min_signers_problem(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "must be an integer >= 0"
    return None


def _is_count(value: object, lowest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def _require(field_name: str, problem: str | None) -> None:
    if problem is not None:
        raise ReconfigurationError("reconfigure-malformed", f"{field_name} {problem}")


def _exact_keys(wire: object, keys: frozenset[str]) -> dict:
    if not isinstance(wire, dict):
        raise ReconfigurationError("reconfigure-malformed", "is not a map")
    missing = sorted(keys - wire.keys())
    extra = sorted(repr(k) for k in wire.keys() - keys)
    if missing:
        raise ReconfigurationError("reconfigure-malformed", f"field {missing[0]!r} is missing")
    if extra:
        raise ReconfigurationError("reconfigure-malformed", f"field {extra[0]} is not allowed")
    return wire


# --- the four changes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AddValidator:
    """Append a new validator at the end of the order."""

    OP: ClassVar[str] = "add-validator"
    WIRE_KEYS: ClassVar[frozenset[str]] = frozenset({"op", "id", "public_key", "jurisdiction"})
    validator: Validator

    def __post_init__(self) -> None:
        if not isinstance(self.validator, Validator):
            raise ReconfigurationError("reconfigure-malformed", "validator must be a Validator")
        _require("id", _id_problem(self.validator.id))
        _require("public_key", _public_key_problem(self.validator.public_key))
        _require("jurisdiction", _jurisdiction_problem(self.validator.jurisdiction))

    def to_wire(self) -> dict:
        return {"op": self.OP, **self.validator.to_wire()}

    @classmethod
    def from_wire(cls, wire: object) -> "AddValidator":
        wire = _exact_keys(wire, cls.WIRE_KEYS)
        return cls(Validator(id=wire["id"], public_key=wire["public_key"], jurisdiction=wire["jurisdiction"]))


@dataclass(frozen=True)
class RemoveValidator:
    """Drop a validator; the others keep their order."""

    OP: ClassVar[str] = "remove-validator"
    WIRE_KEYS: ClassVar[frozenset[str]] = frozenset({"op", "id"})
    id: str

    def __post_init__(self) -> None:
        _require("id", _id_problem(self.id))

    def to_wire(self) -> dict:
        return {"op": self.OP, "id": self.id}

    @classmethod
    def from_wire(cls, wire: object) -> "RemoveValidator":
        return cls(id=_exact_keys(wire, cls.WIRE_KEYS)["id"])


@dataclass(frozen=True)
class RotateValidatorKey:
    """Give a validator a new key; it keeps its place in the order."""

    OP: ClassVar[str] = "rotate-validator-key"
    WIRE_KEYS: ClassVar[frozenset[str]] = frozenset({"op", "id", "public_key"})
    id: str
    public_key: bytes

    def __post_init__(self) -> None:
        _require("id", _id_problem(self.id))
        _require("public_key", _public_key_problem(self.public_key))

    def to_wire(self) -> dict:
        return {"op": self.OP, "id": self.id, "public_key": self.public_key}

    @classmethod
    def from_wire(cls, wire: object) -> "RotateValidatorKey":
        wire = _exact_keys(wire, cls.WIRE_KEYS)
        return cls(id=wire["id"], public_key=wire["public_key"])


@dataclass(frozen=True)
class SetMinSigners:
    """Set how many signers every quorum needs from each jurisdiction present."""

    OP: ClassVar[str] = "set-min-signers"
    WIRE_KEYS: ClassVar[frozenset[str]] = frozenset({"op", "min_signers_per_jurisdiction"})
    min_signers_per_jurisdiction: int

    def __post_init__(self) -> None:
        _require("min_signers_per_jurisdiction", _min_signers_problem(self.min_signers_per_jurisdiction))

    def to_wire(self) -> dict:
        return {"op": self.OP, "min_signers_per_jurisdiction": self.min_signers_per_jurisdiction}

    @classmethod
    def from_wire(cls, wire: object) -> "SetMinSigners":
        return cls(min_signers_per_jurisdiction=_exact_keys(wire, cls.WIRE_KEYS)["min_signers_per_jurisdiction"])


Change = Union[AddValidator, RemoveValidator, RotateValidatorKey, SetMinSigners]
CHANGE_TYPES: dict[str, type] = {
    cls.OP: cls for cls in (AddValidator, RemoveValidator, RotateValidatorKey, SetMinSigners)
}


def _check_change_count(count: int) -> None:
    if count == 0:
        raise ReconfigurationError("reconfigure-empty", "a reconfiguration needs at least one change")
    if count > RECONFIGURATION_CHANGES_MAX:
        raise ReconfigurationError(
            "reconfigure-too-many-changes",
            f"{count} changes; a reconfiguration holds at most {RECONFIGURATION_CHANGES_MAX}")


def _decode_change(index: int, wire: object) -> Change:
    op = wire.get("op") if isinstance(wire, dict) else None
    change_type = CHANGE_TYPES.get(op) if isinstance(op, str) else None
    if change_type is None:
        what = "is not a map" if not isinstance(wire, dict) else f"field 'op' must be one of {', '.join(CHANGE_TYPES)}"
        raise ReconfigurationError("reconfigure-malformed", f"change #{index}: {what}")
    try:
        return change_type.from_wire(wire)
    except ReconfigurationError as exc:
        raise ReconfigurationError("reconfigure-malformed", f"change #{index} ({op}): {exc}") from None


def decode_changes(wire: object) -> tuple[Change, ...]:
    """The changes of a reconfiguration's wire form; total: returns or raises ReconfigurationError."""
    if not isinstance(wire, list):
        raise ReconfigurationError("reconfigure-malformed", "the changes must be a list")
    _check_change_count(len(wire))
    return tuple(_decode_change(index, item) for index, item in enumerate(wire))


def encode_changes(changes: Iterable[Change]) -> list[dict]:
    """The inverse of decode_changes."""
    return [change.to_wire() for change in changes]


# --- applying a reconfiguration -------------------------------------------------------------------

class _Draft:
    """The ordered validator list while the changes apply, plus what this list has retired so far."""

    def __init__(self, current: ValidatorSet, retired_ids: frozenset[str], retired_keys: frozenset[bytes]):
        self.validators = list(current.validators)
        self.min_signers = current.min_signers_per_jurisdiction
        self.retired_ids = retired_ids          # from earlier epochs
        self.retired_keys = retired_keys
        self.removed_ids: set[str] = set()      # by this change list
        self.dropped_keys: set[bytes] = set()   # removed or rotated out by this change list

    def position(self, validator_id: str, where: str) -> int:
        for index, validator in enumerate(self.validators):
            if validator.id == validator_id:
                return index
        raise ReconfigurationError(
            "reconfigure-unknown-validator", f"{where}: no validator {validator_id!r} in the set")

    def check_new_key(self, public_key: bytes, where: str) -> None:
        holder = next((v.id for v in self.validators if v.public_key == public_key), None)
        if holder is not None:
            raise ReconfigurationError("reconfigure-duplicate-key", f"{where}: validator {holder!r} holds that key")
        if public_key in self.retired_keys or public_key in self.dropped_keys:
            raise ReconfigurationError(
                "reconfigure-reused-key", f"{where}: that key was retired and must never sign again")

    def apply(self, change: Change, where: str) -> None:
        if isinstance(change, AddValidator):
            new_id = change.validator.id
            if any(v.id == new_id for v in self.validators):
                raise ReconfigurationError("reconfigure-duplicate-id", f"{where}: id {new_id!r} is in the set")
            if new_id in self.retired_ids or new_id in self.removed_ids:
                raise ReconfigurationError(
                    "reconfigure-reused-id", f"{where}: id {new_id!r} was removed; it never returns")
            self.check_new_key(change.validator.public_key, where)
            self.validators.append(change.validator)
        elif isinstance(change, RemoveValidator):
            removed = self.validators.pop(self.position(change.id, where))
            self.removed_ids.add(removed.id)
            self.dropped_keys.add(removed.public_key)
        elif isinstance(change, RotateValidatorKey):
            index = self.position(change.id, where)
            self.check_new_key(change.public_key, where)
            old = self.validators[index]
            self.dropped_keys.add(old.public_key)
            self.validators[index] = Validator(old.id, change.public_key, old.jurisdiction)
        elif isinstance(change, SetMinSigners):
            self.min_signers = change.min_signers_per_jurisdiction
        else:
            raise ReconfigurationError("reconfigure-malformed", f"{where}: {type(change).__name__} is not a change")


def apply_changes(current: ValidatorSet, changes: Iterable[Change], *, retired_ids: frozenset[str] = frozenset(),
                  retired_keys: frozenset[bytes] = frozenset()) -> ValidatorSet:
    """The validator set after `changes`, applied in order to `current`, or ReconfigurationError.

    Only the final set must be safe (ValidatorSet's rule); intermediate states need not be, so a
    list may remove before it adds. The size bound holds at every step.
    """
    changes = tuple(changes)
    _check_change_count(len(changes))
    draft = _Draft(current, frozenset(retired_ids), frozenset(retired_keys))
    for index, change in enumerate(changes):
        where = f"change #{index} ({getattr(change, 'OP', '?')})"
        draft.apply(change, where)
        if len(draft.validators) > VALIDATORS_MAX:
            raise ReconfigurationError(
                "reconfigure-too-many-validators", f"{where}: more than {VALIDATORS_MAX} validators")
    try:
        new = ValidatorSet(tuple(draft.validators), draft.min_signers)
    except ValidatorSetError as exc:
        raise ReconfigurationError("reconfigure-unsafe", str(exc)) from exc
    if new == current:
        raise ReconfigurationError("reconfigure-no-change", "the changes leave the validator set as it was")
    return new


def retired_after(current: ValidatorSet, new: ValidatorSet) -> tuple[frozenset[str], frozenset[bytes]]:
    """The ids and keys `current` had and `new` does not: what the caller adds to its retired sets."""
    ids = frozenset(v.id for v in current.validators) - frozenset(v.id for v in new.validators)
    keys = frozenset(v.public_key for v in current.validators) - frozenset(v.public_key for v in new.validators)
    return ids, keys


def activation_height(commit_height: int, margin_heights: int) -> int:
    """The first height of the epoch scheduled by a reconfiguration committed at `commit_height`:
    commit_height + margin_heights + 1.

    `margin_heights` is a parameter of the chain (the same at every validator, as the rule must be:
    each derives the boundary on its own), and every validator's watermark_window must be at most
    it. An honest replica's window reaches at most watermark_window above its stable checkpoint, and
    no checkpoint at or above commit_height is stable before the reconfiguration has committed, so
    no height of the new epoch is in any honest replica's window until every honest replica can
    know the new set; every height up to commit_height + margin_heights stays in the old epoch.
    The per-node checkpoint_interval plays no part: the new epoch starts from a base checkpoint that
    every replica derives (docs/CONSENSUS.md, "Reconfiguration").
    """
    for name, value in (("commit_height", commit_height), ("margin_heights", margin_heights)):
        if not _is_count(value, 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return commit_height + margin_heights + 1


@dataclass(frozen=True)
class EpochChange:
    """What an Application's reconfiguration hook found in a block: the validator changes (may be
    empty) and the new epoch's application data (None: unchanged)."""

    changes: tuple[Change, ...] = ()
    application: bytes | None = None


# --- epochs -------------------------------------------------------------------------------------

CONFIG_WIRE_KEYS = frozenset({"epoch", "start_height", "validators", "scheduled_at"})
CONFIG_WIRE_KEYS_OPTIONAL = frozenset({"application"})   # written only when not empty
SET_WIRE_KEYS = frozenset({"validators", "min_signers_per_jurisdiction"})
VALIDATOR_WIRE_KEYS = frozenset({"id", "public_key", "jurisdiction"})
SCHEDULE_WIRE_KEYS = frozenset({"margin_heights", "epochs"})


def _schedule_keys(wire: object, keys: frozenset[str], where: str) -> dict:
    try:
        return _exact_keys(wire, keys)
    except ReconfigurationError as exc:
        raise EpochScheduleError(f"{where}: {exc}") from None


def _validator_set_from_wire(wire: object) -> ValidatorSet:
    """ValidatorSet.from_wire, strict: exact keys everywhere, the id limit, the size limit."""
    wire = _schedule_keys(wire, SET_WIRE_KEYS, "validators")
    if not isinstance(wire["validators"], list) or len(wire["validators"]) > VALIDATORS_MAX:
        raise EpochScheduleError(f"validators.validators must be a list of at most {VALIDATORS_MAX}")
    for index, validator in enumerate(wire["validators"]):
        validator = _schedule_keys(validator, VALIDATOR_WIRE_KEYS, f"validator #{index}")
        if (problem := _id_problem(validator["id"])) is not None:
            raise EpochScheduleError(f"validator #{index}: id {problem}")
    if _min_signers_problem(wire["min_signers_per_jurisdiction"]) is not None:
        raise EpochScheduleError("validators.min_signers_per_jurisdiction must be an integer >= 0")
    try:
        return ValidatorSet.from_wire(wire)
    except ValidatorSetError as exc:
        raise EpochScheduleError(f"validators: {exc}") from exc


@dataclass(frozen=True)
class EpochConfig:
    """One epoch: its number, its first height, and the set that certifies its heights."""

    epoch: int
    start_height: int
    validators: ValidatorSet
    scheduled_at: int = 0   # the height of the block whose reconfiguration scheduled it (0: genesis)
    # The Application's data for this epoch, opaque to consensus (the ledger: its regulator keys and
    # thresholds); b"": as at genesis. The Application's hook reads it to judge a reconfiguration from
    # the block alone, and an epoch may change only it (the validator set stays).
    application: bytes = b""

    def __post_init__(self) -> None:
        if not _is_count(self.epoch, 0):
            raise EpochScheduleError(f"epoch must be an integer >= 0, got {self.epoch!r}")
        if not _is_count(self.scheduled_at, 0):
            raise EpochScheduleError(f"scheduled_at must be an integer >= 0, got {self.scheduled_at!r}")
        if not _is_count(self.start_height, 1):
            raise EpochScheduleError(f"start_height must be an integer >= 1, got {self.start_height!r}")
        if not isinstance(self.validators, ValidatorSet):
            raise EpochScheduleError("validators must be a ValidatorSet")
        if self.validators.n > VALIDATORS_MAX:
            raise EpochScheduleError(f"an epoch has at most {VALIDATORS_MAX} validators, got {self.validators.n}")
        if not isinstance(self.application, bytes) or len(self.application) > APPLICATION_BYTES_MAX:
            raise EpochScheduleError(f"application must be at most {APPLICATION_BYTES_MAX} bytes")

    def to_wire(self) -> dict:
        wire = {"epoch": self.epoch, "start_height": self.start_height, "validators": self.validators.to_wire(),
                "scheduled_at": self.scheduled_at}
        if self.application:
            wire["application"] = self.application
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> "EpochConfig":
        keys = CONFIG_WIRE_KEYS | (CONFIG_WIRE_KEYS_OPTIONAL & set(wire) if isinstance(wire, dict) else set())
        wire = _schedule_keys(wire, keys, "epoch config")
        application = wire.get("application", b"")
        if "application" in wire and (not isinstance(application, bytes) or not application):
            raise EpochScheduleError("epoch config: application, when present, must be non-empty bytes")
        return cls(epoch=wire["epoch"], start_height=wire["start_height"],
                   validators=_validator_set_from_wire(wire["validators"]), scheduled_at=wire["scheduled_at"],
                   application=application)

    def hash(self) -> bytes:
        return codec.sha256(codec.pack(self.to_wire()))


@dataclass(frozen=True)
class EpochSchedule:
    """Every epoch so far, in order, and the ids and keys retired along the way.

    Immutable: `schedule` returns a new schedule. The retired sets are derived from the epochs
    (each epoch retires what the one before had and it does not), so they are not stored apart
    and cannot disagree with them. Construction checks the whole history.
    """

    epochs: tuple[EpochConfig, ...]
    margin_heights: int = MARGIN_HEIGHTS_DEFAULT   # the chain's (activation_height)
    retired_ids: frozenset[str] = field(init=False)
    retired_keys: frozenset[bytes] = field(init=False)

    def __post_init__(self) -> None:
        epochs = tuple(self.epochs) if isinstance(self.epochs, (tuple, list)) else ()
        if not epochs or not all(isinstance(config, EpochConfig) for config in epochs):
            raise EpochScheduleError("a schedule is a non-empty sequence of EpochConfig")
        if not _is_count(self.margin_heights, 1):
            raise EpochScheduleError(f"margin_heights must be an integer >= 1, got {self.margin_heights!r}")
        if epochs[0].start_height != 1 or epochs[0].scheduled_at != 0:
            raise EpochScheduleError("epoch 0 must start at height 1, scheduled by nothing (scheduled_at 0)")
        retired_ids: frozenset[str] = frozenset()
        retired_keys: frozenset[bytes] = frozenset()
        for number, config in enumerate(epochs):
            if config.epoch != number:
                raise EpochScheduleError(f"epoch #{number} is numbered {config.epoch}; epochs run 0, 1, 2, ...")
            if number == 0:
                continue
            before = epochs[number - 1]
            if config.scheduled_at < before.start_height:
                raise EpochScheduleError(f"epoch {number} was scheduled at height {config.scheduled_at}, before "
                                         f"epoch {number - 1} started ({before.start_height})")
            if config.start_height != activation_height(config.scheduled_at, self.margin_heights):
                raise EpochScheduleError(f"epoch {number} starts at {config.start_height}, not at "
                                         f"{activation_height(config.scheduled_at, self.margin_heights)} "
                                         f"(scheduled at {config.scheduled_at}, margin {self.margin_heights})")
            ids = {v.id for v in config.validators.validators}
            keys = {v.public_key for v in config.validators.validators}
            if ids & retired_ids or keys & retired_keys:
                raise EpochScheduleError(f"epoch {number} holds an id or key retired in an earlier epoch")
            gone_ids, gone_keys = retired_after(before.validators, config.validators)
            retired_ids, retired_keys = retired_ids | gone_ids, retired_keys | gone_keys
        object.__setattr__(self, "epochs", epochs)
        object.__setattr__(self, "retired_ids", retired_ids)
        object.__setattr__(self, "retired_keys", retired_keys)

    @classmethod
    def genesis(cls, validators: ValidatorSet, margin_heights: int = MARGIN_HEIGHTS_DEFAULT) -> "EpochSchedule":
        return cls((EpochConfig(epoch=0, start_height=1, validators=validators),), margin_heights)

    @property
    def latest(self) -> EpochConfig:
        return self.epochs[-1]

    def config_at(self, height: int) -> EpochConfig:
        """The epoch whose heights include `height`: the last one starting at or below it."""
        if not _is_count(height, 1):
            raise ValueError(f"height must be an integer >= 1, got {height!r}")
        return self.epochs[bisect_right(self.epochs, height, key=lambda config: config.start_height) - 1]

    def last_height_of(self, epoch: int) -> int | None:
        """The last height of `epoch`; None for the latest, which has no end yet."""
        if not _is_count(epoch, 0) or epoch >= len(self.epochs):
            raise ValueError(f"no epoch {epoch!r} in a schedule of {len(self.epochs)}")
        if epoch == len(self.epochs) - 1:
            return None
        return self.epochs[epoch + 1].start_height - 1

    def schedule(self, commit_height: int, changes: Iterable[Change],
                 application: bytes | None = None) -> "EpochSchedule":
        """This schedule plus the epoch a reconfiguration committed at `commit_height` starts: the set
        after `changes`, and `application` as the new epoch's application data (None: the latest's).
        With no change, the application data must change (an epoch that changes only it, the set kept);
        nothing changing at all is "reconfigure-no-change".

        The commit must lie in the latest epoch. A commit in the epoch before it, while the latest
        has not started, is refused ("reconfigure-pending": one reconfiguration at a time);
        anything earlier is the caller's bug (ValueError). The pending check comes first, so a
        reconfiguration committed then is refused for that whatever its changes.
        """
        start = activation_height(commit_height, self.margin_heights)
        latest = self.latest
        if commit_height < latest.start_height:
            if len(self.epochs) >= 2 and commit_height >= self.epochs[-2].start_height:
                raise ReconfigurationError(
                    "reconfigure-pending",
                    f"epoch {latest.epoch} starts at height {latest.start_height}; "
                    f"no reconfiguration before it has started")
            raise ValueError(f"commit height {commit_height} is before epoch {latest.epoch - 1}, "
                             f"which is already closed")
        changes = tuple(changes)
        application = latest.application if application is None else application
        if changes:
            validators = apply_changes(latest.validators, changes,
                                       retired_ids=self.retired_ids, retired_keys=self.retired_keys)
        elif application != latest.application:
            validators = latest.validators
        else:
            raise ReconfigurationError("reconfigure-no-change", "the reconfiguration changes nothing")
        if len(application) > APPLICATION_BYTES_MAX:
            raise ReconfigurationError("reconfigure-malformed",
                                       f"application data of {len(application)} bytes; at most {APPLICATION_BYTES_MAX}")
        config = EpochConfig(latest.epoch + 1, start, validators, commit_height, application)
        return EpochSchedule(self.epochs + (config,), self.margin_heights)

    def to_wire(self) -> dict:
        return {"margin_heights": self.margin_heights, "epochs": [config.to_wire() for config in self.epochs]}

    @classmethod
    def from_wire(cls, wire: object) -> "EpochSchedule":
        wire = _schedule_keys(wire, SCHEDULE_WIRE_KEYS, "epoch schedule")
        if not isinstance(wire["epochs"], list):
            raise EpochScheduleError("epoch schedule: epochs must be a list")
        return cls(tuple(EpochConfig.from_wire(config) for config in wire["epochs"]), wire["margin_heights"])
