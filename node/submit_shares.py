"""Admission of clients' submits by participant: the rate and mempool room of each (issue 15).

The daemon's `submit` asks `SubmitShares.admit` after the door check (an authenticated, admitted
author) and before the entry reaches the core; the driver reports what became of each entry
(`pooled`, `release`, `release_all`). Times are given (`now_s`), so tests set them exactly.
"""

from __future__ import annotations

from node.api import ApiError
from node.wire import ERROR_BUSY, ERROR_MEMPOOL_FULL

# A participant at its mempool share has its pending entries looked up in the core's pool (to forget
# those the core dropped without a commit) at most this often: a flood at the share costs O(share)
# lookups per interval, not per refused submit.
SHARE_PRUNE_INTERVAL_MS = 100
# The submit bookkeeping sweeps entries the core dropped and token buckets that refilled (same as
# new) when it holds twice as many as after its last sweep, and at least this many: amortized O(1).
SHARE_SWEEP_ENTRIES_MIN = 4096


class SubmitShares:
    """Each participant's fair share of this node's submits (issue 15): a token bucket for its rate
    and a count of its entries in the mempool, so a participant's flood is refused at once and costs
    the others nothing.

    An entry counts from its submit (`admit`) until it commits (`release`, for every entry of each
    applied block), the core refuses it (`release`), or the core drops it from its pool without a
    commit (found by `_prune`, since the core does not say so: when its participant is at the share,
    at most every SHARE_PRUNE_INTERVAL_MS, and in the amortized sweep). So the count cannot leak
    upward and lock a participant out. Participants are authenticated authors (the door check ran
    first), so the tables are bounded by the registry, and swept besides.
    """

    def __init__(self, rate_per_s: int, burst: int, pending_max: int) -> None:
        assert rate_per_s >= 1 and burst >= 1 and pending_max >= 1, "config bounds keep these positive"
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.pending_max = pending_max
        self._buckets: dict[str, tuple[float, float]] = {}     # participant -> (tokens, at s)
        # participant -> {entry bytes: its id once the core pooled it, None while queued for the driver}
        self._pending: dict[str, dict[bytes, bytes | None]] = {}
        self._participant_of: dict[bytes, str] = {}
        self._pruned_at_s: dict[str, float] = {}
        self._sweep_above = SHARE_SWEEP_ENTRIES_MIN

    def pending(self, participant: str) -> int:
        return len(self._pending.get(participant, ()))

    def __len__(self) -> int:
        return len(self._participant_of)

    def admit(self, participant: str, entry: bytes, now_s: float, in_pool) -> bool:
        """Count `entry` against `participant`'s share and take one token, or raise ApiError
        (ERROR_MEMPOOL_FULL at the share, "busy" beyond the rate) charging nothing. `in_pool(entry_id)`
        tells whether the core still holds an entry. True if the entry is counted now (False: it was
        already, a client sending the same bytes again, which takes no more room)."""
        self._maybe_sweep(now_s, in_pool)
        mine = self._pending.get(participant)
        counted = mine is not None and entry in mine
        if not counted and mine is not None and len(mine) >= self.pending_max:
            if now_s - self._pruned_at_s.get(participant, -1e18) >= SHARE_PRUNE_INTERVAL_MS / 1000:
                self._pruned_at_s[participant] = now_s
                self._prune(participant, in_pool)
                mine = self._pending.get(participant)   # gone if the prune emptied it
            if mine is not None and len(mine) >= self.pending_max:
                raise ApiError(ERROR_MEMPOOL_FULL, (
                    f"participant {participant!r} has {len(mine)} entries waiting in this node's mempool, its "
                    f"share (limits.mempool_requests_per_participant_max = {self.pending_max}); wait for some "
                    "to commit (submit with wait, or look them up) before sending more"))
        tokens, at_s = self._buckets.get(participant, (self.burst, now_s))
        tokens = min(self.burst, tokens + max(0.0, now_s - at_s) * self.rate_per_s)
        if tokens < 1:
            self._buckets[participant] = (tokens, now_s)
            retry_ms = max(1, int((1 - tokens) / self.rate_per_s * 1000 + 0.999))
            raise ApiError(ERROR_BUSY, (
                f"participant {participant!r} submits faster than its share of this node "
                f"(limits.submit_rate_per_participant_per_s = {self.rate_per_s}, bursts of "
                f"{self.burst}); slow down: retry in {retry_ms} ms"))
        self._buckets[participant] = (tokens - 1, now_s)
        if counted:
            return False
        if mine is None:
            mine = self._pending[participant] = {}
        mine[entry] = None
        self._participant_of[entry] = participant
        return True

    def pooled(self, entry: bytes, entry_id: bytes) -> None:
        """The core took the entry into its pool (from now on `_prune` may look it up there)."""
        participant = self._participant_of.get(entry)
        if participant is not None:
            self._pending[participant][entry] = entry_id

    def release(self, entry: bytes) -> None:
        """The entry committed, or the core refused it: it no longer counts."""
        participant = self._participant_of.pop(entry, None)
        if participant is not None:
            mine = self._pending[participant]
            del mine[entry]
            if not mine:
                del self._pending[participant]
                self._pruned_at_s.pop(participant, None)

    def release_all(self, entries) -> None:
        if self._participant_of:   # nothing to look up on a node no client submits to
            for entry in entries:
                self.release(entry)

    def _prune(self, participant: str, in_pool) -> None:
        for entry, entry_id in list(self._pending.get(participant, {}).items()):
            if entry_id is not None and not in_pool(entry_id):
                self.release(entry)

    def _maybe_sweep(self, now_s: float, in_pool) -> None:
        if len(self._participant_of) + len(self._buckets) <= self._sweep_above:
            return
        for participant in list(self._pending):
            self._prune(participant, in_pool)
        for participant, (tokens, at_s) in list(self._buckets.items()):
            if tokens + (now_s - at_s) * self.rate_per_s >= self.burst:
                del self._buckets[participant]   # full again: the same as a participant never seen
        self._sweep_above = max(SHARE_SWEEP_ENTRIES_MIN, 2 * (len(self._participant_of) + len(self._buckets)))
