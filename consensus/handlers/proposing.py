"""The primary's rule: cut a batch from the requests in no block yet and propose it.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice

from ..messages import PrePrepare, encode, sign
from ..messages import header_hash as hash_of_header
from ..proposal import build_header
from ..request_pool import PendingRequest, ProposalQueue
from ..slot import Slot, SlotPhase
from ..vote_log import PHASE_PRE_PREPARE


class Proposing:
    def _try_propose(self) -> bool:
        if not (self.view_active and self.is_primary and self.member) or self.now_ms is None:
            return False
        progressed = False
        while True:
            top = max([h for h in self.slots if h > self.last_applied_height], default=self.last_applied_height)
            height = top + 1
            if height <= self.stable.height or not self._in_window(height):
                return progressed
            if height - 1 == self.last_applied_height:
                parent = self.last_applied_header
            else:
                parent_slot = self.slots[height - 1]
                if not parent_slot.validated:
                    # Build only on a block we have checked ourselves (our own proposals are); backups
                    # still prepare each block only after its parent is prepared.
                    return progressed
                parent = parent_slot.header
            picked = self._next_batch(height, self._unproposed())
            if picked is None:
                return progressed
            # Our proposal vouches for its requests' signatures: check those we pooled unchecked.
            if not all(p.checked for _, p in picked):
                for rid, p in picked:
                    self._confirm(rid, p)
                # Invalid ones left the queue: look again, so that a batch is partial only when the queue
                # is exhausted (backups rely on that to detect censorship, see _sweep_requests).
                continue
            entries = tuple(p.request for _, p in picked)
            time_ms = max(self.now_ms, parent.time_ms if parent is not None else 0)
            result = self.app.execute(parent, height, time_ms, entries)
            if result is None:
                return progressed
            header = build_header(self.rules, height, parent, time_ms, entries, result)
            if not self._persist_vote(height, self.view, PHASE_PRE_PREPARE, header, entries):
                return progressed  # we proposed something else here before a restart; never contradict it
            message = sign(PrePrepare(self.view, header, entries, self.me), self.signing_key, self.chain_id)
            data = encode(message)
            slot = self.slots[height] = Slot(header, entries, hash_of_header(header), preprepare=data,
                                             phase=SlotPhase.CHECKED, sent_ms=self.timeouts.clock_ms)
            self.blocks[hash_of_header(header)] = (header, entries)
            self._send(None, data)
            self._proposed(slot)
            progressed = True

    def _next_batch(self, height: int, unproposed: OrderedDict[bytes, PendingRequest]) -> list | None:
        """The (id, request) pairs to propose at `height`: [] for an empty block that fills an idle height
        while an epoch is pending, None to wait (a partial batch waits batch_wait_ms for more)."""
        in_flight = height - 1 - self.last_applied_height
        if not unproposed:
            return [] if self._fill_idle_height(in_flight) else None
        oldest = next(iter(unproposed.values()))
        if len(unproposed) < self.config.batch_requests_max and (
            self.now_ms - max(oldest.seen_ms, self.view_entered_ms) < self.config.batch_wait_ms
            or in_flight >= self.config.partial_batch_in_flight_max
        ):
            return None
        return list(islice(unproposed.items(), self.config.batch_requests_max))

    def _fill_idle_height(self, in_flight: int) -> bool:
        """While the next epoch is pending, heights must advance without requests (the new set takes over
        at a height, not at a time): one empty block at a time, at most one per batch_wait_ms."""
        if self.schedule.latest.epoch <= self.epoch or in_flight > 0:
            return False
        if self.now_ms - max(self.idle_filled_ms, self.view_entered_ms) < self.config.batch_wait_ms:
            return False
        self.idle_filled_ms = self.now_ms
        return True

    def _unproposed(self) -> OrderedDict[bytes, PendingRequest]:
        """The pending requests in no in-flight block, oldest first (by id; the caller only reads).

        Called after every input on the primary, whose pool front is mostly in flight under load,
        so it keeps those requests in a queue instead of scanning the pool each time: requests join
        it as they are pooled and leave it when we propose them. The queue holds while the
        in-flight blocks change only by our own proposals (`_proposed`) and by the oldest of them
        being applied as they were (their requests had left the queue); any other change (a view
        change, a block we did not propose applied or in flight) rebuilds it from the pool. The
        result is exactly what a full scan of the pool gives.
        """
        in_flight_slots = tuple(slot for height, slot in self.slots.items() if height > self.last_applied_height)
        queue = self._proposal_queue
        if queue is not None and not queue.holds(in_flight_slots, self.last_applied_height, self.committed_hashes):
            queue = None
        if queue is None:
            in_flight = self._in_flight_ids()
            queue = ProposalQueue(self.last_applied_height, in_flight_slots, in_flight, OrderedDict(
                (rid, p) for rid, p in self.pool.items() if rid not in in_flight))
            self._proposal_queue = queue
        return queue.unproposed

    def _proposed(self, slot: Slot) -> None:
        """Our proposal went in flight: its requests leave the queue (they were its front)."""
        if self._proposal_queue is not None:
            self._proposal_queue.proposed(slot)
