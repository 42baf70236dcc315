"""The one way to carry out the replica's Readies: a pure generator of typed steps.

A host (the daemon, the simulator, a unit test) hands `carry_out` the
Readies of one or more consecutive inputs and the height it has applied. The
generator yields steps; the host performs each with its own I/O (a synced
LevelDB write, TCP sends; or a dict and a simulated network) and then asks
for the next. The generator calls `replica.on_persisted()` itself, at the
one point the contract allows: after the write that holds the Ready's
persist. So every host keeps the same order, and the simulator, which may
crash a node between any two steps, tests the order the daemon runs.

The order (docs/INTERNALS.md, "The Ready contract"):

1. `WriteBatch`: the persists of every Ready, in input order (a later value
   of a key wins), in one synced write. If one of the Readies commits the
   block right after the applied height, that block goes in the same write:
   a crash leaves both or neither, which writing the persists first could
   also leave, and the block costs one synced write less.
2. For each Ready in turn: `on_persisted()` (if it persisted anything),
   which releases the oldest held messages; then `Send` its messages,
   `Apply` each committed block not applied yet, `ServeCatchUp`, `Report`
   (evidence and rejections); then the same for the follow-up Readies that
   `on_persisted()` returned, each follow-up's persist in its own
   `WriteBatch` first.

With `send_before_persist` the messages of every Ready are sent before the
first write. That is legal by the contract (a Ready's messages never depend
on a persist not yet acknowledged) and is the order that would expose a vote
released before the state it promises; the simulator draws it.

No I/O, no clock: the generator only reorders what the replica returned.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .messages import CommittedBlock, Evidence
from .ready import CatchUpRange, Outbound, PersistChange, Ready, Rejection

__all__ = [
    "Apply", "FOLLOW_UPS_MAX", "FollowUpsExceeded", "Report", "Send", "ServeCatchUp", "Step", "WriteBatch",
    "carry_out",
]

# on_persisted may return a Ready that persists again (a held proposal releases a vote, ...), but
# only a bounded chain: more than this many means the replica loops, a bug the host must not hide.
FOLLOW_UPS_MAX = 16


class PersistAcknowledger(Protocol):
    def on_persisted(self) -> Ready: ...


class FollowUpsExceeded(RuntimeError):
    """on_persisted kept returning more to persist."""


@dataclass(frozen=True)
class WriteBatch:
    """Write `changes` (key, value | None = delete) and, if given, apply `block`: one synced write."""

    changes: tuple[PersistChange, ...]
    block: CommittedBlock | None = None

    def apply_changes_to(self, kv: dict[bytes, bytes]) -> None:
        """The changes on an in-memory store (the simulator's and the tests'; the daemon writes LevelDB)."""
        for key, value in self.changes:
            if value is None:
                kv.pop(key, None)
            else:
                kv[key] = value


@dataclass(frozen=True)
class Send:
    messages: tuple[Outbound, ...]


@dataclass(frozen=True)
class Apply:
    """Apply `block`, the one right after the applied height."""

    block: CommittedBlock


@dataclass(frozen=True)
class ServeCatchUp:
    ranges: tuple[CatchUpRange, ...]


@dataclass(frozen=True)
class Report:
    evidence: tuple[Evidence, ...]
    rejected: tuple[Rejection, ...]


Step = WriteBatch | Send | Apply | ServeCatchUp | Report


def carry_out(
    replica: PersistAcknowledger, readies: Sequence[Ready], applied_height: int, *, send_before_persist: bool = False,
) -> Generator[Step, None, int]:
    """Yield the steps that carry out `readies` in order; return the applied height after them.

    `applied_height` is the host's: blocks at or below it are not applied again. The host performs
    each step before it asks for the next; a step that raises (a failed write) ends the generator."""
    applied = _Applied(applied_height)
    if send_before_persist:
        early = tuple(outbound for ready in readies for outbound in ready.messages)
        if early:
            yield Send(early)
    changes = tuple(change for ready in readies for change in ready.persist)
    if changes:
        next_block = next((block for ready in readies for block in ready.committed
                           if block.header.height == applied.height + 1), None)
        if next_block is not None:
            yield WriteBatch(changes, next_block)
            applied.height += 1
        else:
            yield WriteBatch(changes)
    for ready in readies:
        follow_up = replica.on_persisted() if ready.persist else None
        yield from _after_persist(ready, applied, send=not send_before_persist)
        for _ in range(FOLLOW_UPS_MAX):
            if follow_up is None:
                break
            next_follow_up = None
            early = send_before_persist and bool(follow_up.persist)
            if early and follow_up.messages:
                yield Send(tuple(follow_up.messages))
            if follow_up.persist:
                yield WriteBatch(tuple(follow_up.persist))
                next_follow_up = replica.on_persisted()
            yield from _after_persist(follow_up, applied, send=not early)
            follow_up = next_follow_up
        else:
            if follow_up is not None:
                raise FollowUpsExceeded(f"on_persisted kept returning more to persist ({FOLLOW_UPS_MAX} times in a row)")
    return applied.height


@dataclass
class _Applied:
    height: int


def _after_persist(ready: Ready, applied: _Applied, *, send: bool) -> Generator[Step, None, None]:
    if send and ready.messages:
        yield Send(tuple(ready.messages))
    for block in ready.committed:
        height = block.header.height
        if height <= applied.height:
            continue    # applied already (with the write batch, or before a restart)
        if height != applied.height + 1:
            raise ValueError(f"committed block {height} does not follow the applied height {applied.height}")
        yield Apply(block)
        applied.height = height
    if ready.serve_catch_up:
        yield ServeCatchUp(tuple(ready.serve_catch_up))
    if ready.evidence or ready.rejected:
        yield Report(tuple(ready.evidence), tuple(ready.rejected))
