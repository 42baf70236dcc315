"""Regressions: every replica bug the simulator found (tests/consensus/FINDINGS.md) stays
here as a fixed schedule or seed, so it cannot come back unnoticed.

A seed replays its bug only while faults.draw_fault_plan draws the same plan; the
scripted cases do not depend on that."""

import pytest

from consensus.sim import Simulation, draw_fault_plan, run_seed
from consensus.sim.faults import calm_plan

# (seed, ticks, finding): seeds that once failed.
FAILED_SEEDS = [
    (31, 300, "F1"),   # client retry after three of four replicas restarted: committed twice
    (31, 600, "F1"),
    (61, 600, "F2"),   # replica cut off from the last block of an idle chain never caught up
    (3, 300, "F3"),    # relayed NEW-VIEWs rejected as sender-mismatch
    (149, 600, "F4"),  # restarted on a new epoch's base (no signers): no catch-up target, invariant broken
    (155, 600, "F5"),  # an old epoch's NEW-VIEW relayed after a removal refused as unknown-sender, not wrong-epoch
]


@pytest.mark.parametrize("seed, ticks, finding", FAILED_SEEDS)
def test_seed_that_once_failed(seed, ticks, finding):
    result = run_seed(draw_fault_plan(seed, ticks=ticks))
    assert result.ok, f"{finding}: {result.summary()}"


def test_client_retry_after_cluster_restart_is_not_committed_again():
    """F1. A request commits; every replica crashes after applying it and restarts from its
    persisted state; the client, having seen no answer, sends the same request again.
    It must not be committed a second time."""
    plan = calm_plan(1, ticks=200)
    state = {}

    def schedule(sim, tick):
        if tick == 1:
            state["request"] = sim.client_request(["r1"])
        if tick == 60:
            assert all(sim.checker.height(i) == 1 for i in sim.honest_ids)
            for node_id in sim.ids:
                sim.schedule_crash(node_id, "after_apply", 5)
        if tick == 80:
            assert all(sim.nodes[i].up for i in sim.ids)
            sim.submit(sim.nodes["r0"], state["request"])

    result = Simulation(plan, schedule=schedule).run()
    assert result.ok, result.summary()
