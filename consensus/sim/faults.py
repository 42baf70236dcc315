"""The fault plan: every parameter of one simulated run, drawn from one seed.

`draw_fault_plan(seed)` consumes a single `random.Random(seed)` in a fixed
order, so a seed names exactly one run. Probabilities are rounded to three
decimals so the printed plan is the plan (no hidden precision). Overrides
(`--replicas`, `--byzantine`, `--ticks`) replace a drawn value after drawing
everything, so they never shift the other parameters.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

REPLICA_COUNTS = (4, 7, 10)
# Weights of 4, 7, 10 replicas: small clusters are cheaper, so most runs use them.
REPLICA_COUNT_WEIGHTS = (6, 3, 1)
PARTITION_KINDS = ("symmetric", "asymmetric", "isolate_one")
CRASH_STAGES = (
    "before_persist", "after_early_send", "after_persist", "after_persisted_ack", "after_send", "after_apply",
)
BYZANTINE_BEHAVIOURS = (
    "equivocate",          # as primary, a different PRE-PREPARE to different peers
    "conflicting_votes",   # PREPARE/COMMIT/CHECKPOINT for a block nobody proposed; lying VIEW-CHANGE/NEW-VIEW
    "forged_signatures",   # valid messages with a corrupted signature or signed by another key
    "stale_view",          # re-signed messages carrying an older view
    "future_view",         # re-signed messages carrying a far-future view
    "garbage",             # random, truncated and bit-flipped bytes; structured hostile msgpack (hostile.py)
    "replay",              # re-sends messages it received earlier, as its own
    "silent",              # drops part of what the honest code would send
    "split_brain",         # coordinated: primary proposes A to half, B to the rest; colluders vote to match
)
ticks_default = 600
tick_ms = 10
liveness_ticks_max = 3000


@dataclass(frozen=True)
class FaultPlan:
    seed: int
    replica_count: int
    byzantine_count: int
    min_signers_per_jurisdiction: int
    hk_count: int                 # validators in HK; the rest are in CN
    ticks: int                    # length of the fault (safety) phase
    tick_ms: int
    # Client load.
    request_count: int
    invalid_request_probability: float
    request_fanout_max: int       # a client sends each request to 1..this many replicas
    client_retry_probability: float  # a client sends a request again later (it may have committed by then)
    # Network.
    delay_ticks_min: int
    delay_ticks_max: int
    loss_probability: float
    duplicate_probability: float
    replay_probability: float
    # Partitions.
    partition_probability: float  # per tick, when no partition is active
    partition_ticks_max: int
    partition_kinds: tuple[str, ...]
    # Crashes (honest replicas; at most f down at a time counting Byzantine ones is NOT required
    # for safety, so the plan may crash more; liveness restarts them all).
    crash_probability: float      # per tick, per up replica
    down_ticks_max: int
    crashes_max: int
    send_before_persist: bool     # host sends a Ready's messages before writing its persist batch
    readies_merged_max: int       # the host carries out 1..this many consecutive Readies as one (drawn per group)
    # Reconfigurations a governance client submits in the fault phase (rotate an honest replica's key,
    # remove a Byzantine replica, change min_signers_per_jurisdiction), at most one pending at a time.
    reconfigurations_max: int
    reconfiguration_probability: float   # per tick, while none is pending
    clock_skew_ms: int            # each replica's clock is off by -this..+this ms, redrawn at restart
    # Byzantine replicas (ids chosen from the seed) and what they do.
    liveness_core_only: bool      # liveness with only 2f + 1 honest replicas up (f - b stay down)
    byzantine_behaviours: tuple[str, ...]
    byzantine_probability: float  # chance each outbound message of a Byzantine replica is altered
    # Replica configuration drawn so checkpoints and window edges are exercised.
    checkpoint_interval: int
    batch_requests_max: int
    liveness_ticks_max: int
    # A client's request reaches the other backups this long after the primary, if still pending (0: at once).
    forward_others_after_ms: int = 0

    @property
    def f(self) -> int:
        return (self.replica_count - 1) // 3

    def lines(self) -> list[str]:
        """`name=value` lines in field order: what the simulator prints first."""
        out = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = ",".join(value) if value else "-"
            out.append(f"{field.name}={value}")
        return out


def _p(rng: random.Random, high: float) -> float:
    return round(rng.uniform(0.0, high), 3)


def _jurisdiction_split(rng: random.Random, n: int, f: int) -> tuple[int, int]:
    """(min_signers_per_jurisdiction, hk_count) such that each side has >= min + f validators."""
    # Largest minimum that some split allows: both sides need min + f, so 2 * (min + f) <= n.
    min_high = max(1, n // 2 - f)
    minimum = rng.randint(1, min_high)
    need = minimum + f
    hk_count = rng.randint(need, n - need)
    return minimum, hk_count


def draw_fault_plan(
    seed: int,
    *,
    replicas: int | None = None,
    byzantine: int | None = None,
    ticks: int | None = None,
) -> FaultPlan:
    rng = random.Random(seed)
    n = rng.choices(REPLICA_COUNTS, weights=REPLICA_COUNT_WEIGHTS)[0]
    byz_draw = rng.randint(0, (n - 1) // 3)
    minimum, hk_count = _jurisdiction_split(rng, n, (n - 1) // 3)
    delay_min = rng.randint(0, 2)
    delay_max = delay_min + rng.choice((0, 1, 3, 8, 20))
    kinds = tuple(k for k in PARTITION_KINDS if rng.random() < 0.6)
    # split_brain is drawn last (below) so adding it did not change older seeds' other draws.
    noise = BYZANTINE_BEHAVIOURS[:-1]
    behaviours = tuple(b for b in noise if rng.random() < 0.5) or (rng.choice(noise),)
    plan = FaultPlan(
        seed=seed,
        replica_count=n,
        byzantine_count=byz_draw,
        min_signers_per_jurisdiction=minimum,
        hk_count=hk_count,
        ticks=ticks_default,
        tick_ms=tick_ms,
        request_count=rng.randint(1, 40),
        invalid_request_probability=_p(rng, 0.2) if rng.random() < 0.5 else 0.0,
        request_fanout_max=rng.randint(1, 3),
        client_retry_probability=0.0,   # drawn last, below, so older seeds keep their other draws
        delay_ticks_min=delay_min,
        delay_ticks_max=delay_max,
        loss_probability=_p(rng, 0.25) if rng.random() < 0.7 else 0.0,
        duplicate_probability=_p(rng, 0.2) if rng.random() < 0.5 else 0.0,
        replay_probability=_p(rng, 0.05) if rng.random() < 0.4 else 0.0,
        partition_probability=_p(rng, 0.02) if kinds else 0.0,
        partition_ticks_max=rng.randint(10, 200),
        partition_kinds=kinds,
        crash_probability=_p(rng, 0.02) if rng.random() < 0.6 else 0.0,
        down_ticks_max=rng.randint(5, 200),
        crashes_max=rng.randint(1, 12),
        send_before_persist=False,      # drawn last, below
        readies_merged_max=1,           # drawn last, below
        reconfigurations_max=0,         # drawn last, below
        reconfiguration_probability=0.0,
        clock_skew_ms=0,                # drawn last, below
        liveness_core_only=False,       # drawn last, below
        byzantine_behaviours=behaviours,
        byzantine_probability=round(rng.uniform(0.1, 1.0), 3),
        checkpoint_interval=rng.choice((2, 3, 5, 8, 16)),
        batch_requests_max=rng.choice((1, 2, 4, 16)),
        liveness_ticks_max=liveness_ticks_max,
    )
    changes = _later_draws(rng, behaviours)
    changes.update(_overrides(plan, replicas, byzantine, ticks))
    return dataclasses.replace(plan, **changes)


def _later_draws(rng: random.Random, behaviours: tuple[str, ...]) -> dict:
    """The fields added after the first plans, drawn after all the others so older seeds keep their draws."""
    changes: dict = {
        "client_retry_probability": _p(rng, 0.3) if rng.random() < 0.5 else 0.0,
        "send_before_persist": rng.random() < 0.5,
        "liveness_core_only": rng.random() < 0.5,
        # Within the replica's clock_skew_ms_max (30 s): honest proposals stay acceptable.
        "clock_skew_ms": rng.choice((0, 50, 500, 5000)),
    }
    if rng.random() < 0.3:
        changes["byzantine_behaviours"] = behaviours + ("split_brain",)
    # The daemon carries out up to 256 Readies (node.daemon.DRAIN_EVENTS_MAX) with one synced write under load.
    changes["readies_merged_max"] = rng.choice((1, 2, 4, 16, 256))
    if rng.random() < 0.5:
        changes["reconfigurations_max"] = rng.randint(1, 3)
        changes["reconfiguration_probability"] = round(rng.uniform(0.005, 0.05), 3)
    # Within the replica's cap of view_timeout_ms / 4 (75 ms at the simulator's 300 ms).
    changes["forward_others_after_ms"] = rng.choice((0, 30, 70))
    return changes


def _overrides(plan: FaultPlan, replicas: int | None, byzantine: int | None, ticks: int | None) -> dict:
    """The fields the command line fixes (--replicas, --byzantine, --ticks), after every draw."""
    seed, n = plan.seed, plan.replica_count
    changes: dict = {}
    if replicas is None and byzantine is not None and byzantine > plan.f:
        # A drawn cluster too small for the asked Byzantine count grows to the smallest that allows it.
        fitting = [n for n in REPLICA_COUNTS if (n - 1) // 3 >= byzantine]
        if fitting:
            replicas = fitting[0]
    if replicas is not None:
        if replicas not in REPLICA_COUNTS:
            raise ValueError(f"--replicas must be one of {REPLICA_COUNTS}, got {replicas}")
        f = (replicas - 1) // 3
        # Redraw the split from a seed-derived stream so the override stays deterministic.
        split_rng = random.Random(seed * 31 + replicas)
        minimum, hk_count = _jurisdiction_split(split_rng, replicas, f)
        changes.update(replica_count=replicas, min_signers_per_jurisdiction=minimum, hk_count=hk_count)
        changes["byzantine_count"] = min(plan.byzantine_count, f)
    if byzantine is not None:
        f = (changes.get("replica_count", n) - 1) // 3
        if not 0 <= byzantine <= f:
            raise ValueError(f"--byzantine must be between 0 and f={f}, got {byzantine}")
        changes["byzantine_count"] = byzantine
    if ticks is not None:
        if ticks < 1:
            raise ValueError("--ticks must be positive")
        changes["ticks"] = ticks
    return changes


def calm_plan(seed: int = 0, *, replicas: int = 4, ticks: int = 300, **changes) -> FaultPlan:
    """A plan with no random faults and no drawn requests: the base of scripted scenarios.

    Network delay is 1..2 ticks; `changes` override any field (e.g. checkpoint_interval).
    """
    plan = draw_fault_plan(seed, replicas=replicas, byzantine=0, ticks=ticks)
    calm = dict(
        request_count=0, invalid_request_probability=0.0, client_retry_probability=0.0, delay_ticks_min=0, delay_ticks_max=1,
        loss_probability=0.0, duplicate_probability=0.0, replay_probability=0.0, partition_probability=0.0,
        crash_probability=0.0, liveness_core_only=False, clock_skew_ms=0, byzantine_behaviours=(), byzantine_probability=0.0,
        reconfigurations_max=0, reconfiguration_probability=0.0,
        # Scenarios are timed with a client's request at every replica at once (drawn plans vary it).
        forward_others_after_ms=0,
    )
    calm.update(changes)
    return dataclasses.replace(plan, **calm)
