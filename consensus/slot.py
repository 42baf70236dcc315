"""What one replica knows about one height in the current view: a `Slot` and its `SlotPhase`.

A slot moves up through the phases, never down (`Slot.advance`):

    AWAITING_BODY -> PROPOSED -> VALIDATED -> CHECKED -> PREPARE_SENT -> PREPARED -> COMMIT_SENT

One shortcut: a block the NEW-VIEW re-proposes that this replica has already committed is prepared
and committed from PROPOSED at once (Replica._try_prepare), so that the others can finish it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import codec
from .block import BlockHeader

__all__ = ["WAIT", "Slot", "SlotPhase", "Wait"]


class SlotPhase(enum.IntEnum):
    AWAITING_BODY = 0   # re-proposed by NEW-VIEW and its body not here yet (Replica.fetching)
    PROPOSED = 1        # header and entries known, nothing checked yet
    VALIDATED = 2       # checked against the Application and the parent; signatures wait for vouchers
    CHECKED = 3         # and its requests' signatures checked here, or vouched for (_vouched_or_checked)
    PREPARE_SENT = 4    # we signed a PREPARE for it
    PREPARED = 5        # a quorum of PREPAREs: we hold its prepared certificate
    COMMIT_SENT = 6     # we signed a COMMIT for it


class Wait(enum.Enum):
    """A proposal that cannot be judged yet (no time known, parent not executable, vouchers awaited):
    a verdict of its own, never mistaken for a reason code."""

    WAIT = "wait"


WAIT = Wait.WAIT


@dataclass
class Slot:
    header: BlockHeader
    entries: tuple[bytes, ...] | None  # None: phase AWAITING_BODY
    hash: bytes
    preprepare: bytes | None = None  # the signed PRE-PREPARE (None when re-proposed by NEW-VIEW)
    phase: SlotPhase = SlotPhase.PROPOSED
    vouch_deadline_ms: int | None = None  # when a backup that waits for vouchers checks the signatures itself
    prepare: bytes | None = None     # our signed PREPARE (from PREPARE_SENT on)
    commit: bytes | None = None      # our signed COMMIT (COMMIT_SENT)
    sent_ms: int | None = None       # when we last sent our message for it (None: never, or before a restart)
    request_ids: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.entries is None:
            self.phase = SlotPhase.AWAITING_BODY
        self.request_ids = () if self.entries is None else tuple(codec.sha256(r) for r in self.entries)

    def fill(self, entries: tuple[bytes, ...]) -> None:
        """The body arrived (checked against the header's entries_hash by whoever gives it)."""
        self.entries = entries
        self.request_ids = tuple(codec.sha256(r) for r in entries)
        self.advance(SlotPhase.PROPOSED)

    def advance(self, phase: SlotPhase) -> None:
        """Move up to `phase` (a slot already past it stays where it is)."""
        if phase > self.phase:
            self.phase = phase

    def sent_prepare(self, data: bytes) -> None:
        self.prepare = data
        self.advance(SlotPhase.PREPARE_SENT)

    def sent_commit(self, data: bytes) -> None:
        self.commit = data
        self.advance(SlotPhase.COMMIT_SENT)

    @property
    def validated(self) -> bool:
        return self.phase >= SlotPhase.VALIDATED

    @property
    def signatures_known(self) -> bool:
        return self.phase >= SlotPhase.CHECKED

    @property
    def prepared(self) -> bool:
        return self.phase >= SlotPhase.PREPARED

    def inconsistency(self) -> str | None:
        """Why the phase disagrees with the rest of the slot, or None (Replica.check_invariants)."""
        if (self.entries is None) != (self.phase == SlotPhase.AWAITING_BODY):
            return f"entries {'missing' if self.entries is None else 'present'} in phase {self.phase.name}"
        if (self.prepare is not None) != (self.phase >= SlotPhase.PREPARE_SENT):
            return f"PREPARE {'missing' if self.prepare is None else 'present'} in phase {self.phase.name}"
        if (self.commit is not None) != (self.phase == SlotPhase.COMMIT_SENT):
            return f"COMMIT {'missing' if self.commit is None else 'present'} in phase {self.phase.name}"
        if self.entries is not None and len(self.request_ids) != len(self.entries):
            return "request ids do not match the entries"
        return None
