"""Clients' submits waiting for the node's answer, and what wakes them.

A `submit` hands its entry to the consensus driver as a `ClientRequest`, then waits:
- without `wait`, until the core has taken or refused the entry (`ClientRequest.decided`);
- with `wait`, on a `Waiter` from `SubmitWaiters`, until the entry commits (`committed`), the
  core refuses it (`decided`), the node stops (`release_all`), or the submit's own timeout.

No consensus, no ledger, no error codes: the daemon says what happened and answers the client;
this module only keeps who waits and wakes them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import trio


@dataclass
class Waiter:
    """One submit that waits for its entry's commit."""

    event: trio.Event = field(default_factory=trio.Event)
    receipt: dict | None = None
    released: bool = False      # woken without a receipt because the node is stopping

    async def wait(self, timeout_s: float) -> dict | None:
        """The receipt once committed; None if woken without one (refused, released) or after timeout_s."""
        with trio.move_on_after(max(timeout_s, 0)):
            await self.event.wait()
        return self.receipt


@dataclass
class ClientRequest:
    """A client's entry on its way to the core, through the driver's input queue."""

    entry: bytes
    entry_id: bytes
    # A submit that waits for the commit is woken through its waiter when refused; one that does
    # not wait learns through `taken` that the core took (or refused) the entry.
    waiter: Waiter | None = None
    taken: trio.Event | None = None
    refusal: str | None = None       # the core's reason, once `decided` with one
    participant: str | None = None   # counted in the daemon's SubmitShares from the submit until commit or refusal

    def decided(self, refusal: str | None) -> None:
        """The core took the entry (refusal None) or refused it: wake the submit that waits for that."""
        self.refusal = refusal
        if self.taken is not None:
            self.taken.set()
        elif refusal is not None and self.waiter is not None:
            self.waiter.event.set()


class SubmitWaiters:
    """The waiting submits, by entry bytes: each committed entry is looked up without hashing it.

    Submits of the same bytes each have their own waiter, and one commit wakes them all. Bounded by
    the submits under way, which the RPC server bounds (connections x requests in flight): a waiter
    leaves when its submit ends, whatever woke it.
    """

    def __init__(self) -> None:
        self._by_entry: dict[bytes, list[Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._by_entry.values())

    def add(self, entry: bytes) -> Waiter:
        waiter = Waiter()
        self._by_entry.setdefault(entry, []).append(waiter)
        return waiter

    def remove(self, entry: bytes, waiter: Waiter) -> None:
        waiters = self._by_entry.get(entry, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._by_entry.pop(entry, None)

    @contextlib.contextmanager
    def waiting(self, entry: bytes) -> Iterator[Waiter]:
        """A waiter for `entry` for the duration of the block."""
        waiter = self.add(entry)
        try:
            yield waiter
        finally:
            self.remove(entry, waiter)

    def committed(self, entries: Iterable[bytes], receipt_of: Callable[[int], dict]) -> None:
        """The entries of a block are durable: wake each one's waiters with the receipt of its index
        in the block (`receipt_of` is called only for entries someone waits for)."""
        if not self._by_entry:   # nothing to look up on a node no client waits on
            return
        for index, entry in enumerate(entries):
            waiters = self._by_entry.pop(entry, None)
            if waiters:
                receipt = receipt_of(index)
                for waiter in waiters:
                    waiter.receipt = receipt
                    waiter.event.set()

    def release_all(self) -> int:
        """The node is stopping: wake every waiter without a receipt; how many there were."""
        released = 0
        for waiters in self._by_entry.values():
            for waiter in waiters:
                waiter.released = True
                waiter.event.set()
                released += 1
        return released
