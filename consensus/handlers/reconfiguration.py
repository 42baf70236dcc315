"""Epochs: a committed reconfiguration extends the schedule, and the last block of an epoch hands the
chain to the next epoch's set (docs/CONSENSUS.md, "Reconfiguration: epochs").

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from .. import codec
from ..bodies import BodyFetcher
from ..checkpoints import Checkpoints
from ..epochs import EpochConfig, ReconfigurationError
from ..messages import CheckpointCertificate, MessageError
from ..proposal import ProposalRules
from ..timeouts import Timer
from ..validators import ValidatorSet
from ..view_change import ViewChanges
from ..vote_log import (
    KEY_CHECKPOINT, KEY_EPOCH_BASE, KEY_EPOCHS, KEY_NEW_VIEW, KEY_VIEW_CHANGE, height_key, restore_epoch_base,
)
from ..vote_tally import VoteTally


class Reconfiguring:
    def _take_validators(self, validators: ValidatorSet) -> None:
        """Everything that holds the validator set, for `validators` (at construction and at each epoch)."""
        config = self.config
        self.validators = validators
        self.validator_set_hash = validators.hash()
        self.rules = ProposalRules(self.chain_id, self.validator_set_hash, config.batch_requests_max,
                                   config.clock_skew_ms_max, self.epoch)   # headers name their epoch
        mine = validators.get(self.me)
        key = self.signing_keys.get(mine.public_key) if mine is not None else None
        # A validator the set no longer names (removed), or names with a key it does not hold, votes no more.
        self.member = key is not None
        self._my_index = [v.id for v in validators.validators].index(self.me) if self.member else 0
        if key is not None:
            self.signing_key = key
        self.checkpoints = Checkpoints(validators)   # the stable checkpoint and the votes towards the next
        self.tally = VoteTally(validators)   # PREPAREs and COMMITs received, per height
        self.bodies = BodyFetcher(validators, self.me, self._my_index)   # bodies of re-proposed blocks we lack
        self.view_change = ViewChanges(validators)   # VIEW-CHANGEs and the NEW-VIEW of our view

    def _resume_epoch(self, persisted: dict[bytes, bytes], applied_height: int) -> None:
        """At construction: the epoch of the next height to decide, the base checkpoint we entered it from
        (docs/CONSENSUS.md, "Reconfiguration") and every state object that holds its set."""
        current = self.schedule.config_at(applied_height + 1)
        self.epoch = current.epoch
        try:
            self.epoch_base = restore_epoch_base(persisted, self.epoch, current.validators)
        except (codec.EncodingError, MessageError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"persisted consensus state is unreadable: epoch {self.epoch}'s base: {exc}") from exc
        self._take_validators(current.validators)
        self.checkpoints.stable = self.epoch_base

    def _validators_at(self, height: int) -> ValidatorSet:
        """The set that signs for `height`: final for every height up to the applied one + margin + 1."""
        return self.schedule.config_at(height).validators

    def _epoch_decided(self) -> bool:
        """Nothing is left to decide in our epoch: its last height is at or below the stable checkpoint.
        (A replica that adopted the checkpoint that ends its epoch before it holds the blocks below it.)"""
        last = self.schedule.last_height_of(self.epoch)
        return last is not None and self.stable.height >= last

    def _note_reconfiguration(self, height: int, entries: tuple[bytes, ...]) -> None:
        """Block `height` is delivered: if it holds an accepted reconfiguration, the next epoch is scheduled."""
        latest = self.schedule.latest
        if self._reconfiguration_of is None or latest.start_height > height:
            return   # no reconfiguration in this Application, or one is pending: one at a time
        found = self._reconfiguration_of(height, entries, latest)
        if found is None:
            return
        try:
            self.schedule = self.schedule.schedule(height, found.changes, found.application)
        except ReconfigurationError:
            return   # the ledger refuses the entry by the same rule and records why in its outcome
        self._persist.append((KEY_EPOCHS, codec.pack(self.schedule.to_wire())))

    def _enter_epoch(self, config: EpochConfig, base_hash: bytes) -> None:
        """The last block of our epoch is delivered: the next set takes over from the next height, in view 0,
        from a base checkpoint every honest replica derives from the committed chain."""
        base = CheckpointCertificate(config.start_height - 1, base_hash, ())
        above = self.stable if self.stable.height > base.height else None   # adopted while behind the switch
        self.epoch, self.epoch_base = config.epoch, base
        self._take_validators(config.validators)
        self.checkpoints.stable = above or base
        self.view, self.view_active, self.failed_views = 0, True, 0
        self.view_entered_ms = self.timeouts.clock_ms
        self.slots = {}
        self.blocks = {}
        self.requests.forget_primary()
        self._proposal_queue = None
        for timer in (Timer.PROGRESS, Timer.VIEW_CHANGE, Timer.CHECK_ALL_SIGNATURES):
            self.timeouts.stop(timer)
        # Votes at the old epoch's heights stay until the new epoch's first stable checkpoint deletes them.
        self._persist_view()
        self._persist.append((KEY_CHECKPOINT, codec.pack(self.stable.to_wire())))
        self._persist.append((height_key(KEY_EPOCH_BASE, config.epoch), codec.pack(base.to_wire())))
        self._persist.append((KEY_VIEW_CHANGE, None))
        self._persist.append((KEY_NEW_VIEW, None))
