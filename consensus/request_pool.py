"""The replica's pending requests: the pool, the primary's proposal queue, the forward queue, and the
bookkeeping of a backup's sweeps (who holds what, censorship strikes).

State only: what a request *is* (valid, applied) is the Application's to say, and the replica asks
it; this module keeps what the replica learnt, in arrival order, within `request_pool_max`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from .block import BlockHeader
from .messages import REQUESTS_MESSAGE_BYTES_MAX

__all__ = [
    "CENSORSHIP_STRIKES", "DEFERRED_FORWARDS_PER_POOL_SLOT", "FORWARD_BYTES_PER_SWEEP_MAX", "REFORWARD_SWEEPS",
    "REQUEST_OVERHEAD_BYTES", "REQUESTS_MESSAGE_OVERHEAD_BYTES", "Drain", "PendingRequest", "ProposalQueue",
    "RequestPool", "SweepResult", "SweepRound", "drain_bound",
]

# A REQUESTS message is cut to stay within messages.REQUESTS_MESSAGE_BYTES_MAX (8 MiB), the cap
# decode_message enforces on the way in: counting each request's bytes plus these overheads.
REQUESTS_MESSAGE_OVERHEAD_BYTES = 64  # the map {"type": "requests", "requests": [...]} around the requests
REQUEST_OVERHEAD_BYTES = 5            # msgpack bin header of one request (bin 32)
# Requests a backup forwards to the primary per sweep, in bytes: two full messages.
FORWARD_BYTES_PER_SWEEP_MAX = 2 * REQUESTS_MESSAGE_BYTES_MAX
# A request the primary holds but has not proposed is forwarded to it again after this many sweeps
# (the first copy may have been lost with a link, or with the primary's pool when it restarted).
REFORWARD_SWEEPS = 2
# The deferred forwards held, per request the pool can hold (RequestPool.deferred_forwards).
DEFERRED_FORWARDS_PER_POOL_SLOT = 2
# Times the primary must leave a request out of a batch that emptied its queue, each after a forward
# of its own, before the request counts as censored: one lost forward, or a primary that restarted
# and lost its pool, is forgiven (docs/CONSENSUS.md, "Censorship detection ...").
CENSORSHIP_STRIKES = 2

Drain = tuple[int, int, int]   # (received_ms, height, requests the primary had proposed by then)


@dataclass(slots=True)
class PendingRequest:
    request: bytes
    seen_ms: int
    # Known valid: passed check_request here, or was in a block f + 1 validators vouched for. False:
    # pooled from a peer on its shape alone (we do not check every signature in this view).
    checked: bool = True
    # The primary of view `held_view` holds it: we forwarded it to that primary (or got it from it) at
    # `held_ms`, when the primary had proposed `held_proposed` requests (RequestPool.proposed_count). -1: none.
    held_view: int = -1
    held_ms: int = 0
    held_proposed: int = 0
    forwarded_ms: int = 0   # our latest forward of it to that primary (paces the forwards again)
    strikes: int = 0   # batches that emptied the primary's queue without it, each after its own forward,
    strikes_view: int = -1   # in this view


class InFlightBlock(Protocol):
    """What the proposal queue needs of an in-flight slot (consensus.slot.Slot)."""

    header: BlockHeader
    hash: bytes
    request_ids: tuple[bytes, ...]


@dataclass
class ProposalQueue:
    """The primary's pending requests in no in-flight block, in pool order (see Replica._unproposed),
    valid for the in-flight blocks and applied height it was built or last updated for."""

    applied_height: int
    in_flight_slots: tuple[InFlightBlock, ...]   # the blocks above the applied height, in slots' order
    in_flight_ids: set[bytes]
    unproposed: OrderedDict[bytes, PendingRequest]

    def holds(self, in_flight_slots: tuple[InFlightBlock, ...], applied_height: int,
              committed_hashes: dict[int, bytes]) -> bool:
        """Bring the queue up to date if the in-flight blocks changed only by the oldest being
        applied as they were; False if it must be rebuilt."""
        applied = applied_height - self.applied_height
        old = self.in_flight_slots
        if applied < 0 or applied > len(old) or len(old) - applied != len(in_flight_slots):
            return False
        if any(a is not b for a, b in zip(old[applied:], in_flight_slots)):
            return False
        for slot in old[:applied]:
            if committed_hashes.get(slot.header.height) != slot.hash:
                return False
        for slot in old[:applied]:
            self.in_flight_ids.difference_update(slot.request_ids)   # committed: left the pool too
        self.applied_height = applied_height
        self.in_flight_slots = in_flight_slots
        return True

    def proposed(self, slot: InFlightBlock) -> None:
        """Our proposal went in flight: its requests leave the queue (they were its front)."""
        for request_id in slot.request_ids:
            self.unproposed.pop(request_id, None)
        self.in_flight_ids.update(slot.request_ids)
        self.in_flight_slots = self.in_flight_slots + (slot,)


@dataclass(frozen=True)
class SweepRound:
    """What one sweep of a backup's pool goes by (RequestPool.sweep)."""

    now_ms: int
    view: int
    round_ms: int            # the sweep period
    drain_bound: int         # see drain_bound()
    view_timeout_ms: int     # the current view timeout
    view_entered_ms: int
    applied_height: int
    in_flight: set[bytes]    # ids of requests in blocks above the applied height


@dataclass
class SweepResult:
    forward: list[bytes]   # requests to send the primary, oldest first
    censored: bool         # the primary provably left a request out (RequestPool.sweep)


def drain_bound(request_pool_max: int, watermark_window: int, batch_requests_max: int) -> int:
    """Fewer requests than this proposed by an honest primary between a request's arrival and a
    batch that emptied its queue prove its pool had room for the request when it arrived.

    A full pool holds request_pool_max; requests leave its queue without being proposed only when
    found invalid (pooled unchecked: at most half the pool) or when blocks it did not propose are
    in flight or commit (at most two windows of batches); and a batch that is not full leaves fewer
    than batch_requests_max behind. <= 0: no batch proves anything (censorship is never detected).
    """
    return (request_pool_max - request_pool_max // 2 - 2 * watermark_window * batch_requests_max
            - batch_requests_max)


class RequestPool:
    """Pending requests by id (SHA-256), oldest first, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending: OrderedDict[bytes, PendingRequest] = OrderedDict()
        self.proposal_queue: ProposalQueue | None = None   # the primary's; None: rebuild from the pool
        # Our own clients' requests, sent to the primary at the next tick (or when a message fills).
        self.forward_queue: list[bytes] = []
        self.forward_queue_bytes = 0
        # And to the other validators if still pending when due: (due_ms, request id), oldest first. At
        # most one per request pooled from our clients in the last forward_others_after_ms, and never
        # more than DEFERRED_FORWARDS_PER_POOL_SLOT x capacity.
        self.deferred_forwards: deque[tuple[int, bytes]] = deque()
        # Censorship evidence (see sweep): requests in fresh PRE-PREPAREs accepted from
        # the primary, and the drains (Drain) of its batches that were not full, i.e. that emptied its
        # queue: those whose parent we have not applied yet, and the latest one whose parent we had applied
        # at the previous sweep (the one that sweep may use). Forgotten at each view change.
        self.proposed_count = 0
        self.drains: deque[Drain] = deque()
        self.settled_drain: Drain | None = None

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, request_id: bytes) -> bool:
        return request_id in self.pending

    def get(self, request_id: bytes) -> PendingRequest | None:
        return self.pending.get(request_id)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.capacity

    @property
    def half_full(self) -> bool:
        """Unchecked requests could fill more than half of it: a peer's are checked from here on."""
        return len(self.pending) >= self.capacity // 2

    def add(self, request_id: bytes, request: bytes, seen_ms: int, checked: bool) -> PendingRequest:
        pending = self.pending[request_id] = PendingRequest(request, seen_ms, checked)
        queue = self.proposal_queue
        if queue is not None and request_id not in queue.in_flight_ids:
            queue.unproposed[request_id] = pending
        return pending

    def keep_signed(self, requests: Iterable[tuple[bytes, bytes]], skip: Callable[[bytes], bool]) -> None:
        """At restart: keep pending the requests of blocks we signed (they may never commit), while room lasts."""
        for request_id, request in requests:
            if skip(request_id):
                continue
            if request_id not in self.pending and len(self.pending) < self.capacity:
                self.pending[request_id] = PendingRequest(request, 0)

    def drop(self, request_id: bytes) -> None:
        """Invalid or applied after all: out of the pool and the proposal queue."""
        self.pending.pop(request_id, None)
        if self.proposal_queue is not None:
            self.proposal_queue.unproposed.pop(request_id, None)

    def committed(self, request_id: bytes) -> None:
        """Its block committed (the proposal queue knows its block was in flight)."""
        self.pending.pop(request_id, None)

    def restart_clock(self, now_ms: int) -> None:
        """The first tick: whatever arrived before it is as old as it."""
        for pending in self.pending.values():
            pending.seen_ms = now_ms

    def mark_held(self, pending: PendingRequest, view: int, now_ms: int) -> None:
        """The primary of `view` holds `pending` from now on (we sent it or it sent it to us)."""
        pending.held_view = view
        pending.held_ms = pending.forwarded_ms = now_ms
        pending.held_proposed = self.proposed_count

    def queue_forward(self, request: bytes, count_max: int) -> bool:
        """Queue our client's request for every validator; True if the queue fills a message now."""
        self.forward_queue.append(request)
        self.forward_queue_bytes += len(request) + REQUEST_OVERHEAD_BYTES
        return (len(self.forward_queue) >= count_max
                or self.forward_queue_bytes + REQUESTS_MESSAGE_OVERHEAD_BYTES >= REQUESTS_MESSAGE_BYTES_MAX)

    def take_forward(self) -> list[bytes]:
        requests = self.forward_queue
        self.forward_queue = []
        self.forward_queue_bytes = 0
        return requests

    def defer_forward(self, request_id: bytes, due_ms: int) -> None:
        """Forward `request_id` to the other validators at `due_ms` if it is pending in no block then."""
        self.deferred_forwards.append((due_ms, request_id))
        if len(self.deferred_forwards) > DEFERRED_FORWARDS_PER_POOL_SLOT * self.capacity:
            self.deferred_forwards.popleft()   # unreachable with a pool this size; a bound all the same

    def take_due_forwards(self, now_ms: int, in_flight: Callable[[], set[bytes]]) -> list[bytes]:
        """The deferred forwards due by `now_ms` whose requests are still pending outside every in-flight
        block (`in_flight` is asked only if one is due); the others are done with."""
        queue = self.deferred_forwards
        if not queue or queue[0][0] > now_ms:
            return []
        in_flight_ids = in_flight()
        due = []
        while queue and queue[0][0] <= now_ms:
            _, request_id = queue.popleft()
            pending = self.pending.get(request_id)
            if pending is not None and request_id not in in_flight_ids:
                due.append(pending.request)
        return due

    def note_proposal(self, received_ms: int, height: int, entry_count: int, batch_requests_max: int,
                      drains_max: int) -> None:
        """A fresh PRE-PREPARE from the primary: an honest primary proposes a batch that is not full only
        when it holds no other valid request outside its in-flight blocks."""
        self.proposed_count += entry_count
        if entry_count < batch_requests_max:
            self.drains.append((received_ms, height, self.proposed_count))
            if len(self.drains) > drains_max:
                self.drains.popleft()   # only a faulty primary gets here (heights in flight are bounded)

    def forget_primary(self) -> None:
        """A view change: the evidence is about one primary's proposals in one view."""
        self.drains.clear()
        self.settled_drain = None

    def settle_drains(self, last_applied_height: int) -> Drain | None:
        """The drain a sweep may use now (its parent was applied by the previous sweep); drains whose
        parent is applied now become usable at the next sweep."""
        usable = self.settled_drain
        while self.drains and self.drains[0][1] - 1 <= last_applied_height:
            self.settled_drain = self.drains.popleft()
        return usable

    def sweep(self, sweep: SweepRound, still_wanted: Callable[[bytes, PendingRequest], bool]) -> SweepResult:
        """One sweep of a backup in an active view: the pending requests to forward to the primary (it may
        not hold them), and whether it provably censors one.

        Forwarding: a request pending a full period outside every in-flight block goes to the primary
        once per view (a client's request went to it with the first forward), and again every
        REFORWARD_SWEEPS periods while still unproposed; at most FORWARD_BYTES_PER_SWEEP_MAX bytes per
        sweep, oldest first.

        Censorship (docs/CONSENSUS.md, "Censorship detection that cannot be turned against an honest
        primary"): the primary held the request (we forwarded it, or it sent it) and, at least a period
        later, proposed a batch that was not full, one that emptied its whole queue, with fewer than
        drain_bound requests proposed in between (so its pool had room for the request), on a parent
        we had applied by the previous sweep (so a block holding the request would have left our pool),
        and the request, still valid, not applied and in no in-flight block, was not in it. That is one
        strike; the request is forwarded again, and CENSORSHIP_STRIKES strikes in this view with the
        request pending a full view timeout in this view blame the primary. `still_wanted` checks a
        request now (valid, not applied) and drops it from the pool if it is not.
        """
        now, view, round_ms = sweep.now_ms, sweep.view, sweep.round_ms
        drained = self.settle_drains(sweep.applied_height)
        result = SweepResult([], False)
        budget = FORWARD_BYTES_PER_SWEEP_MAX
        for request_id, pending in list(self.pending.items()):
            if now - pending.seen_ms < round_ms:
                break   # the pool is in arrival order: the rest are younger still
            if request_id in sweep.in_flight or request_id not in self.pending:
                continue
            held = pending.held_view == view
            if (held and drained is not None and drained[0] >= pending.held_ms + round_ms
                    and drained[2] - pending.held_proposed < sweep.drain_bound):
                # The primary emptied its queue after this request reached it, and left it out.
                if not still_wanted(request_id, pending):
                    continue   # invalid or applied after all: the primary was right
                strikes = self.strike(pending, view)
                pending_since_ms = max(pending.seen_ms, sweep.view_entered_ms)
                if strikes >= CENSORSHIP_STRIKES and pending_since_ms + sweep.view_timeout_ms <= now:
                    result.censored = True
                held = False
            elif held and now - pending.forwarded_ms < REFORWARD_SWEEPS * round_ms:
                continue
            cost = len(pending.request) + REQUEST_OVERHEAD_BYTES
            if cost > budget:
                continue   # next round (a later, smaller request may still fit this one)
            if not still_wanted(request_id, pending):
                continue   # we forward only requests we know to be valid, as every honest replica does
            budget -= cost
            result.forward.append(pending.request)
            if held:
                pending.forwarded_ms = now   # a copy again; the claim still dates from the first
            else:
                self.mark_held(pending, view, now)
        return result

    def stale(self, now_ms: int, age_ms: int, count_max: int, in_flight: set[bytes],
              confirm: Callable[[bytes, PendingRequest], bool]) -> list[bytes]:
        """Up to `count_max` requests pending at least `age_ms` in no in-flight block, oldest first, to
        resend: only those known valid (`confirm` checks an unchecked one now, dropping it if invalid)."""
        stale = []
        unchecked = []
        for request_id, pending in self.pending.items():
            if now_ms - pending.seen_ms < age_ms or len(stale) + len(unchecked) >= count_max:
                break
            if request_id not in in_flight:
                if pending.checked:
                    stale.append(pending.request)
                else:
                    unchecked.append((request_id, pending))
        # We forward only requests we know to be valid (as every honest replica does).
        stale.extend(pending.request for request_id, pending in unchecked if confirm(request_id, pending))
        return stale

    def strike(self, pending: PendingRequest, view: int) -> int:
        """The primary of `view` left `pending` out of a batch that emptied its queue: its strikes in `view`."""
        if pending.strikes_view != view:
            pending.strikes, pending.strikes_view = 0, view
        pending.strikes += 1
        pending.held_view = -1   # the next strike needs a forward of its own (this sweep's or later)
        return pending.strikes
