"""The `epochs` and `validators` RPC results (issue 17): the ledger's epochs as the RPC shows them, and back.

`validators()` keeps the answer it always had, a list of the current set's validators
`{id, public_key: bin 32, jurisdiction, address: "HOST:PORT" | nil}` (address: p2p), now of the current
epoch rather than genesis. `epochs()` answers

    {"epoch": <the latest scheduled epoch>, "current_epoch": <the epoch of the applied head's next height>,
     "margin_heights": <heights between a reconfiguration's commit and its epoch's start, minus one>,
     "epochs": [{"epoch", "start_height", "scheduled_at", "min_signers_per_jurisdiction",
                 "validators": [{"id", "public_key": bin 32, "jurisdiction", "p2p", "rpc"}],
                 "governance": {JURISDICTION: {"keys": [{"id", "public_key": bin 32}], "threshold"}}}]}

Epochs are listed oldest first; each epoch's validators in their order (the primary rotation). The
server builds it (`epochs_result`) from storage.reconfiguration.LedgerEpochs; the CLI reads it
back into a consensus.epochs.EpochSchedule (`schedule_of`) to check a reconfiguration locally with
the rule the ledger applies, before it sends one.
"""

from __future__ import annotations

from typing import Any

from consensus.epochs import EpochConfig, EpochSchedule, EpochScheduleError
from consensus.validators import Validator, ValidatorSet, ValidatorSetError
from storage.genesis import Governance
from storage.reconfiguration import LedgerEpochs, governance_of

__all__ = ["ledger_epochs", "current_governance", "current_validators", "current_validators_list", "applied_epoch", "epochs_result",
           "schedule_of", "ValidatorsResultError"]


class ValidatorsResultError(ValueError):
    """An `epochs` answer that is not one (a node of another version, or a bug)."""


def ledger_epochs(ledger: Any) -> LedgerEpochs:
    """The epochs the ledger has applied (storage.ledger.Ledger.epochs)."""
    return ledger.epochs


def current_governance(ledger: Any) -> Governance:
    """The regulator keys of the next height the ledger will apply: who is a regulator now (RPC roles)."""
    return ledger_epochs(ledger).governance_at(ledger.height() + 1)


def current_validators(ledger: Any) -> ValidatorSet:
    """The set of the next height the ledger will apply: who is a validator now (RPC roles)."""
    return ledger_epochs(ledger).schedule.config_at(ledger.height() + 1).validators


def current_validators_list(ledger: Any) -> list[dict]:
    """The `validators()` answer: the current set in its order, each with its p2p address or nil."""
    addresses = ledger_epochs(ledger).addresses
    return [{"id": v.id, "public_key": v.public_key, "jurisdiction": v.jurisdiction,
             "address": addresses.get(v.id, {}).get("p2p")} for v in current_validators(ledger).validators]


def applied_epoch(epochs: LedgerEpochs, height: int) -> int:
    """The epoch of the block at `height`; 0 before any block (height 0 is genesis)."""
    return epochs.schedule.config_at(height).epoch if height >= 1 else 0


def _validator_wire(validator: Validator, addresses: dict) -> dict:
    where = addresses.get(validator.id, {})
    return {"id": validator.id, "public_key": validator.public_key, "jurisdiction": validator.jurisdiction,
            "p2p": where.get("p2p"), "rpc": where.get("rpc")}


def epochs_result(epochs: LedgerEpochs, height: int) -> dict:
    """The `epochs` answer of a ledger with these epochs, applied up to `height`."""
    schedule = epochs.schedule
    return {
        "epoch": schedule.latest.epoch,
        "current_epoch": schedule.config_at(height + 1).epoch,
        "margin_heights": schedule.margin_heights,
        "epochs": [{"epoch": config.epoch, "start_height": config.start_height, "scheduled_at": config.scheduled_at,
                    "min_signers_per_jurisdiction": config.validators.min_signers_per_jurisdiction,
                    "validators": [_validator_wire(v, epochs.addresses) for v in config.validators.validators],
                    "governance": governance_of(config, epochs.genesis_governance).to_wire()}
                   for config in schedule.epochs],
    }


def _config_of(wire: dict) -> EpochConfig:
    validators = tuple(Validator(id=v["id"], public_key=v["public_key"], jurisdiction=v["jurisdiction"])
                       for v in wire["validators"])
    return EpochConfig(epoch=wire["epoch"], start_height=wire["start_height"], scheduled_at=wire["scheduled_at"],
                       validators=ValidatorSet(validators, wire["min_signers_per_jurisdiction"]))


def schedule_of(result: Any) -> EpochSchedule:
    """The schedule an `epochs` answer describes, checked as the ledger checks its own (order, start
    heights, retired ids and keys); ValidatorsResultError if it is not a valid one."""
    try:
        return EpochSchedule(tuple(_config_of(config) for config in result["epochs"]), result["margin_heights"])
    except (EpochScheduleError, ValidatorSetError, KeyError, TypeError, ValueError) as exc:
        raise ValidatorsResultError(f"the node's epochs answer is not a valid epoch schedule: "
                                    f"{type(exc).__name__}: {exc}"[:300]) from None
