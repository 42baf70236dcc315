"""The bench's stepped capacity search (issue 19): the highest open-loop offered rate whose p99
submit-to-commit latency stays within a bound.

After the saturation phase the load generator offers STEP_FRACTIONS of the saturated rate in
turn, ascending, each an open-loop phase of the same length with a drain before it, and stops
after the first step that does not pass the largest bound (`search_done`). Then, if there is a
gap, one refinement step halfway between the highest rate that passed REFINED_BOUND_MS and the
lowest that did not (`refinement_rate`).

A step passes a bound when every request scheduled in it was committed (none failed, none
dropped by the client, none unanswered: a p99 of the committed ones alone would hide the worst)
and its p99 is at or below the bound. The capacity for a bound is the highest offered rate that
passed it with every lower rate tried also passing: the first failure in order of rate ends the
count, so a pass above a failure (noise) is not credited. No step passing gives 0.

Pure functions over the step results, so the rule is tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

# Of the saturated rate, in the order tried.
STEP_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BOUNDS_MS = (100, 250)            # p99 bounds the capacities are reported for
REFINED_BOUND_MS = 100            # the bound the one refinement step sharpens
REFINEMENTS_MAX = 1
STEPS_MAX = len(STEP_FRACTIONS) + REFINEMENTS_MAX
REFINEMENT_GAP_MIN_PER_S = 2.0    # a narrower gap has no rate between its ends worth a phase


@dataclass(frozen=True)
class Step:
    """One open-loop step's outcome, as the search reads it."""

    offered_per_s: float
    p99_ms: float | None          # of the committed requests; None when none was committed
    failed: int = 0               # scheduled but not committed: errors, dropped, unanswered

    def within(self, bound_ms: float) -> bool:
        return self.failed == 0 and self.p99_ms is not None and self.p99_ms <= bound_ms


def capacity_per_s(steps: Iterable[Step], bound_ms: float) -> float:
    """The highest offered rate that passed `bound_ms` with every lower rate passing too; 0 if none."""
    capacity = 0.0
    for step in sorted(steps, key=lambda s: s.offered_per_s):
        if not step.within(bound_ms):
            break
        capacity = step.offered_per_s
    return capacity


def capacities(steps: Sequence[Step], bounds_ms: Iterable[float] = BOUNDS_MS) -> dict[float, float]:
    """capacity_per_s for each bound."""
    return {bound: capacity_per_s(steps, bound) for bound in bounds_ms}


def search_done(steps: Sequence[Step]) -> bool:
    """True once the last step tried did not pass the largest bound: higher rates would only queue."""
    return bool(steps) and not steps[-1].within(max(BOUNDS_MS))


def refinement_rate(steps: Sequence[Step], bound_ms: float = REFINED_BOUND_MS) -> float | None:
    """Halfway between the capacity for `bound_ms` (or 0) and the lowest rate above it that was tried
    (which did not pass); None if no rate above it was tried or the gap is too narrow."""
    capacity = capacity_per_s(steps, bound_ms)
    above = [s.offered_per_s for s in steps if s.offered_per_s > capacity]
    if not above or min(above) - capacity < REFINEMENT_GAP_MIN_PER_S:
        return None
    return (capacity + min(above)) / 2
