"""What a host may know of a replica (`ReplicaStatus`), and the replica's own consistency checks
(`check_invariants`): a failure there is a bug in the replica, never a peer's doing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .messages import header_hash as hash_of_header
from .slot import SlotPhase
from .timeouts import Timer
from .vote_log import PHASE_COMMIT

if TYPE_CHECKING:
    from .replica import Replica

__all__ = ["InvariantViolation", "ReplicaStatus", "check_invariants"]


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's state as of its latest input, for hosts (metrics, status, admission). Whether one
    request has committed is a question of its own: Replica.is_committed(request)."""

    view: int
    view_active: bool
    primary_id: str
    is_primary: bool
    last_applied_height: int
    stable_checkpoint_height: int
    catch_up_target: int              # a height we know exists and catch up to (0: none yet)
    checks_signatures: bool           # checks every request's signatures itself (no vouching)
    vouch_fallbacks: int              # times it waited for vouchers in vain and checked itself
    pending_request_count: int
    in_flight_count: int              # slots above the applied height
    restore_skipped: tuple[str, ...]  # persisted records left out at restore, and why


class InvariantViolation(AssertionError):
    """The replica's state contradicts itself: a bug (the message says which rule and where)."""


def check_invariants(replica: Replica) -> None:
    """Raise InvariantViolation on the first rule the replica's state breaks. Cheap enough to call after
    every input (the simulator does): nothing here verifies a signature or scans more than the
    slots, the pool and the committed ids."""
    for rule in (_outputs_handed_out, _slots_agree_with_votes, _watermarks, _pool_bounds, _timers_match_view):
        problem = rule(replica)
        if problem is not None:
            raise InvariantViolation(f"{replica.me}: {problem}")


def _outputs_handed_out(replica: Replica) -> str | None:
    """Between inputs everything assembled went out in a Ready; only messages waiting for a persist are held.
    (Before the first Ready, what the restore assembled waits for it.)"""
    if replica._before_first_ready:
        return None
    leftovers = [name for name in ("_persist", "_messages", "_committed", "_serve", "_evidence", "_rejected")
                 if getattr(replica, name)]
    if leftovers:
        return f"output left behind after an input: {', '.join(leftovers)}"
    if any(not isinstance(batch, list) for batch in replica._held):
        return "a held batch is not a list of messages"
    return None


def _slots_agree_with_votes(replica: Replica) -> str | None:
    """A slot's phase agrees with its own fields, and what it says we signed is in the vote log."""
    votes, certs = replica.vote_log.votes, replica.vote_log.certs
    for height, slot in replica.slots.items():
        problem = slot.inconsistency()
        if problem is not None:
            return f"slot {height}: {problem}"
        if slot.phase >= SlotPhase.PREPARE_SENT:
            vote = votes.get(height)
            if vote is None or vote[0] != replica.view or vote[2] != slot.hash:
                return f"slot {height} in phase {slot.phase.name} without our vote for it in view {replica.view}"
            if slot.phase == SlotPhase.COMMIT_SENT and vote[1] != PHASE_COMMIT:
                return f"slot {height} sent a COMMIT but the vote log says {vote[1]}"
        if slot.phase >= SlotPhase.PREPARED and height > replica.last_applied_height:
            certificate = certs.get(height)
            if certificate is None or certificate.view != replica.view or certificate.header != slot.header:
                return f"slot {height} prepared in view {replica.view} without its prepared certificate"
    return None


def _watermarks(replica: Replica) -> str | None:
    applied, header = replica.last_applied_height, replica.last_applied_header
    if (applied == 0) != (header is None) or (header is not None and header.height != applied):
        return f"last applied header does not match last applied height {applied}"
    stable = replica.stable.height
    if stable > max(applied, replica.catch_up_target):
        return f"stable checkpoint {stable} above both the applied height {applied} and the catch-up target"
    if applied >= stable and applied > 0 and replica.committed_hashes.get(applied) != hash_of_header(header):
        return f"committed hash at {applied} is not the applied header's"
    return None


def _pool_bounds(replica: Replica) -> str | None:
    pool, committed = replica.requests, replica.committed_ids
    if len(pool) > replica.config.request_pool_max:
        return f"{len(pool)} pending requests, above request_pool_max {replica.config.request_pool_max}"
    if len(committed) > replica.config.committed_request_ids_max:
        return f"{len(committed)} committed ids, above committed_request_ids_max"
    smaller, larger = (pool.pending, committed) if len(pool) <= len(committed) else (committed, pool.pending)
    if any(request_id in larger for request_id in smaller):
        return "a committed request is still pending"
    return None


def _timers_match_view(replica: Replica) -> str | None:
    timeouts = replica.timeouts
    if replica.view_active and timeouts.armed(Timer.VIEW_CHANGE):
        return "view-change timer armed in an active view"
    if not replica.view_active and timeouts.armed(Timer.PROGRESS):
        return "progress timer armed during a view change"
    if not replica.view_active:
        own = replica.view_changes.get(replica.me)
        if own is None or own.view != replica.view:
            return f"in a view change to {replica.view} without our VIEW-CHANGE for it"
    return None
