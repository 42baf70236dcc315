"""The replica's clock and its one table of timers.

Time is an input: the `now_ms` of the latest tick (never earlier than the one before). Every
deadline the replica keeps is a `Timer` in one `Timeouts` table, polled only from
`Replica.on_tick`, in the order `Timer` declares (the order matters: it fixes which message goes
out first). Before the first tick no time is known; `clock_ms` counts it as 0, and timers armed
then count from 0 too.
"""

from __future__ import annotations

import enum

__all__ = ["Timer", "Timeouts"]


class Timer(enum.Enum):
    PROGRESS = "progress"          # an active view with work and no commit: move to the next view
    SWEEP = "sweep"                # a backup's pool sweep: forward to the primary, look for censorship
    VIEW_CHANGE = "view-change"    # a view change a quorum joined that brought no NEW-VIEW: the next view
    RETRANSMIT = "retransmit"      # resend unanswered votes and view changes (not armed: no tick yet)
    PROBE = "probe"                # ask one peer (rotating) for blocks past ours
    BODIES = "bodies"              # ask again for bodies of re-proposed blocks we still lack
    CATCH_UP = "catch-up"          # the catch-up request out there went unanswered: ask the next peer
    CHECK_ALL_SIGNATURES = "check-all-signatures"   # running: a backup checks every signature itself


class Timeouts:
    """Deadlines in ms of replica time, one per `Timer`; None: not armed."""

    def __init__(self) -> None:
        self.now_ms: int | None = None   # the latest tick's time; None before the first tick
        self._deadline_ms: dict[Timer, int | None] = {timer: None for timer in Timer}

    @property
    def started(self) -> bool:
        return self.now_ms is not None

    @property
    def clock_ms(self) -> int:
        """The time to stamp things with: the latest tick's, 0 before the first tick."""
        return 0 if self.now_ms is None else self.now_ms

    def advance(self, now_ms: int) -> int:
        """A tick: time moves to `now_ms` unless that is earlier (time never goes back). The new time."""
        if self.now_ms is None or now_ms > self.now_ms:
            self.now_ms = now_ms
        return self.now_ms

    def start(self, timer: Timer, duration_ms: int, since_ms: int | None = None) -> None:
        """Arm `timer` to fire `duration_ms` after `since_ms` (default: now)."""
        self._deadline_ms[timer] = (self.clock_ms if since_ms is None else since_ms) + duration_ms

    def stop(self, timer: Timer) -> None:
        self._deadline_ms[timer] = None

    def armed(self, timer: Timer) -> bool:
        return self._deadline_ms[timer] is not None

    def deadline_ms(self, timer: Timer) -> int | None:
        return self._deadline_ms[timer]

    def fired(self, timer: Timer) -> bool:
        """Armed and its deadline reached."""
        deadline = self._deadline_ms[timer]
        return deadline is not None and self.clock_ms >= deadline

    def due(self, timer: Timer) -> bool:
        """Not armed, or fired: what a periodic timer that runs at once the first time checks."""
        return self._deadline_ms[timer] is None or self.fired(timer)

    def upcoming_ms(self) -> list[int]:
        """The deadlines still ahead of the clock (one that has passed was dealt with at its tick)."""
        now = self.clock_ms
        return [deadline for deadline in self._deadline_ms.values() if deadline is not None and deadline > now]

    def running(self, timer: Timer) -> bool:
        """Armed and its deadline not reached yet (a hold that lasts until the deadline)."""
        deadline = self._deadline_ms[timer]
        return deadline is not None and self.clock_ms < deadline
