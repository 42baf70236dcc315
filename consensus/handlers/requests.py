"""A request's way into the pool, out to the primary and, if it is censored, to a view change.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from .. import codec
from ..messages import REQUEST_BYTES_MAX, REQUESTS_MESSAGE_BYTES_MAX, Requests, encode
from ..request_pool import (
    REQUEST_OVERHEAD_BYTES, REQUESTS_MESSAGE_OVERHEAD_BYTES, PendingRequest, SweepRound, drain_bound,
)
from ..timeouts import Timer

CLIENT = "client"  # the peer id reported in Ready.rejected for requests from this node's own clients
# A backup sweeps its pool (forwards to the primary, looks for censorship) every retransmit_ms, and at
# least this many times per view timeout: a request only it holds reaches the primary within half a
# timeout, and junk pooled unchecked leaves the pool before it can make the progress timer fire.
SWEEPS_PER_VIEW_TIMEOUT_MIN = 4


class RequestHandling:
    def _add_request(self, peer: str, request: bytes, from_primary: bool = False) -> PendingRequest | None:
        """Pool a request (`from_primary`: `peer` is the current primary); the new pending entry, or None
        if it was refused or is a duplicate."""
        if not isinstance(request, bytes) or not request:
            self._reject(peer, "bad-request")
            return None
        if len(request) > REQUEST_BYTES_MAX:
            self._reject(peer, "request-too-large")
            return None
        request_id = codec.sha256(request)
        pending = self.pool.get(request_id)
        if pending is not None:
            if from_primary and pending.held_view != self.view:
                self._mark_held(pending)   # the primary sent it: it holds it
            return None  # duplicates are expected (every validator forwards); not a fault
        if request_id in self.committed_ids:
            return None
        # Our own client's requests are always checked (the client gets a clear error at once). A peer's
        # are checked only where we must vouch for them in this view, and while unchecked ones could
        # fill more than half the pool (a faulty peer's junk must not crowd out valid work).
        checked = (peer == CLIENT or self._checks_signatures()
                   or self.requests.half_full)
        reason = self.app.check_request(request) if checked else self.app.check_request_shape(request)
        if reason is not None:
            self._reject(peer, f"invalid-request:{reason}")
            return None
        # Applied already (or its nonce is used up): no primary will ever propose it, and the committed
        # ids we remember may not reach back that far (a restart keeps only the last heights').
        reason = self._applied_reason(request)
        if reason is not None:
            self._reject(peer, f"applied-request:{reason}")
            return None
        if self.requests.full:
            # Refuse new work rather than drop accepted work; the client retries elsewhere or later.
            self._reject(peer, "request-pool-full")
            return None
        pending = self.requests.add(request_id, request, self.timeouts.clock_ms, checked)
        if from_primary:
            self._mark_held(pending)
        return pending

    def _applied_reason(self, request: bytes) -> str | None:
        check = self._check_applied
        return None if check is None else check(request)

    def _mark_held(self, pending: PendingRequest) -> None:
        """The primary of the current view holds `pending` from now on (we sent it or it sent it to us)."""
        self.requests.mark_held(pending, self.view, self.timeouts.clock_ms)

    def _checks_signatures(self) -> bool:
        """Whether this replica checks every request's signatures itself in the current view.

        The primary and the f backups after it (in validator order) do. The others prepare a block whose
        requests they did not check once the primary's proposal and f other backups' PREPAREs vouch for
        it: f + 1 validators, so at least one honest, and an honest one prepares only requests it
        checked or that were vouched for in the same way (docs/CONSENSUS.md, "Who checks signatures").
        """
        f = self.validators.f
        if f == 0 or self.config.vouch_wait_ms == 0:
            return True   # with f = 0 no backup vouches, so each one checks
        if self.timeouts.running(Timer.CHECK_ALL_SIGNATURES):
            return True
        return (self._my_index - self.view) % self.validators.n <= f

    def _confirm(self, request_id: bytes, pending: PendingRequest) -> bool:
        """Check an unchecked pending request now; drop it from the pool if it is invalid."""
        if pending.checked:
            return True
        if self.app.check_request(pending.request) is None:
            pending.checked = True
            return True
        self._drop(request_id)
        return False

    def _drop(self, request_id: bytes) -> None:
        self.requests.drop(request_id)

    def _still_wanted(self, request_id: bytes, pending: PendingRequest) -> bool:
        """Valid and not applied yet (checked now); a request that is neither leaves the pool."""
        if not self._confirm(request_id, pending):
            return False
        if self._applied_reason(pending.request) is not None:
            self._drop(request_id)
            return False
        return True

    def _flush_forward(self) -> None:
        """Our clients' queued requests: to the primary now, to the other validators only if still
        pending forward_others_after_ms later (_flush_deferred_forwards); mid view change, or with
        forward_others_after_ms = 0, to every validator now. Most requests commit first, and each
        forward costs every receiver a wake-up, a decode and a pool check."""
        if not self.requests.forward_queue:
            return
        requests = self.requests.take_forward()
        delay_ms = self.config.forward_others_delay_ms
        if delay_ms == 0 or not self.view_active:
            self._send_requests(None, requests)
            return
        if not self.is_primary:
            self._send_requests(self.primary_id, requests)
        due_ms = self.timeouts.clock_ms + delay_ms
        for request in requests:
            self.requests.defer_forward(codec.sha256(request), due_ms)

    def _flush_deferred_forwards(self) -> None:
        """Deferred forwards now due, to every validator but us and the primary (which has them)."""
        due = self.requests.take_due_forwards(self.timeouts.clock_ms, self._in_flight_ids)
        if not due:
            return
        primary = self.primary_id if self.view_active else None
        for validator in self.validators.validators:
            if validator.id not in (self.me, primary):
                self._send_requests(validator.id, due)

    def _send_requests(self, to: str | None, requests: list[bytes]) -> None:
        """Send `requests` in REQUESTS messages of at most forward_requests_max requests and
        REQUESTS_MESSAGE_BYTES_MAX bytes each."""
        count_max = self.config.forward_requests_max
        batch: list[bytes] = []
        size = REQUESTS_MESSAGE_OVERHEAD_BYTES
        for request in requests:
            cost = len(request) + REQUEST_OVERHEAD_BYTES
            if batch and (len(batch) >= count_max or size + cost > REQUESTS_MESSAGE_BYTES_MAX):
                self._send(to, encode(Requests(tuple(batch))))
                batch, size = [], REQUESTS_MESSAGE_OVERHEAD_BYTES
            batch.append(request)
            size += cost
        if batch:
            self._send(to, encode(Requests(tuple(batch))))

    def _on_requests(self, peer: str, message: Requests, data: bytes) -> None:
        from_primary = peer == self.primary_id and self.view_active
        for request in message.requests:
            self._add_request(peer, request, from_primary)

    def _in_flight_ids(self) -> set[bytes]:
        ids: set[bytes] = set()
        for height, slot in self.slots.items():
            if height > self.last_applied_height:
                ids.update(slot.request_ids)
        return ids

    def _has_work(self) -> bool:
        return bool(self.pool) or any(h > self.last_applied_height for h in self.slots)

    def _drain_bound(self) -> int:
        c = self.config
        return drain_bound(c.request_pool_max, c.watermark_window, c.batch_requests_max)

    def _sweep_period_ms(self) -> int:
        return max(1, min(self.config.retransmit_ms, self.config.view_timeout_ms // SWEEPS_PER_VIEW_TIMEOUT_MIN))

    def _sweep_requests(self, now: int) -> bool:
        """A backup's pool sweep (RequestPool.sweep): forward to the primary what it may not hold; True if
        it provably censors a request."""
        sweep = SweepRound(
            now_ms=now, view=self.view, round_ms=self._sweep_period_ms(), drain_bound=self._drain_bound(),
            view_timeout_ms=self._timeout_ms(), view_entered_ms=self.view_entered_ms,
            applied_height=self.last_applied_height, in_flight=self._in_flight_ids(),
        )
        result = self.requests.sweep(sweep, self._still_wanted)
        if result.forward:
            self._send_requests(self.primary_id, result.forward)
        return result.censored

    def _resend_requests(self, to: str | None) -> None:
        """Resend requests that stayed pending a full retransmission period (the first copy may be lost,
        or the peer that forwarded it to us may have crashed): bounded by forward_requests_max."""
        stale = self.requests.stale(self.timeouts.clock_ms, self.config.retransmit_ms, self.config.forward_requests_max,
                                    self._in_flight_ids(), self._confirm)
        if stale:
            self._send_requests(to, stale)
