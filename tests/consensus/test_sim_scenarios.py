"""Scripted scenarios: the classic PBFT failure cases, each a fixed fault schedule run
through the simulator with every invariant checked on every step, then a liveness
check that every request commits on every honest replica. Each test also asserts
that its fault really happened (a view change, a catch-up, evidence), so a scenario
cannot pass by accident without exercising the case it names."""

from consensus.sim import Simulation, adapter
from consensus.sim.faults import calm_plan


def heights(sim):
    return {i: sim.checker.height(i) for i in sim.honest_ids}


def run_ok(sim):
    result = sim.run()
    assert result.ok, result.summary()
    assert result.requests_committed == result.requests_valid > 0
    assert len(set(heights(sim).values())) == 1, heights(sim)
    return result


def test_primary_crash_mid_batch():
    """r0 (primary of view 0) crashes right after sending a PRE-PREPARE for a batch; the
    others change view, commit everything, and r0 later restarts and catches up."""
    plan = calm_plan(1, batch_requests_max=4)
    state = {}

    def schedule(sim, tick):
        if 1 <= tick <= 4:
            sim.client_request(["r1", "r2", "r3"])
            sim.client_request(["r1", "r2", "r3"])
        if tick == 1:
            # r0 is no client's target: the first thing it sends is its PRE-PREPARE for the batch
            # the others forward to it, and it crashes right after that send.
            state["crashed"] = tick
            sim.schedule_crash("r0", "after_send", 150, wait=True)

    sim = Simulation(plan, schedule=schedule)
    result = run_ok(sim)
    assert "crashed" in state and result.faults["crash_after_send"] == 1
    assert result.view_changes >= 1
    assert sim.nodes["r0"].up and sim.checker.height("r0") == result.blocks_committed


def test_equivocating_primary():
    """Byzantine r0, primary of view 0, sends every peer a different validly signed block
    for the same slot. No two honest replicas commit different blocks; the equivocation is
    reported as evidence; the cluster moves to a view with an honest primary and commits."""
    plan = calm_plan(2, byzantine_count=1, byzantine_behaviours=("equivocate",), byzantine_probability=1.0)

    def schedule(sim, tick):
        if tick in (1, 30, 60):
            sim.client_request(["r0", "r1", "r2", "r3"])

    sim = Simulation(plan, schedule=schedule, byzantine_ids=["r0"])
    result = run_ok(sim)
    assert result.faults["byz_equivocate"] > 0
    assert result.faults["evidence_reported"] > 0
    assert result.view_changes >= 1


def test_partition_that_heals():
    """A 2 | 2 split leaves no side a quorum: nothing commits while it lasts. When it heals,
    every request sent during the split commits everywhere."""
    plan = calm_plan(3)
    during = {}

    def schedule(sim, tick):
        if tick == 1:
            left, right = ["r0", "r2"], ["r1", "r3"]   # one HK and one CN on each side
            blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
            sim.network.set_partition(tick, blocked, 150, "r0+r2 | r1+r3")
        if tick in (5, 40, 90):
            sim.client_request(["r0", "r1"])
        if tick == 150:
            during.update(heights(sim))

    sim = Simulation(plan, schedule=schedule)
    run_ok(sim)
    assert during == {"r0": 0, "r1": 0, "r2": 0, "r3": 0}
    assert sim.network.faults["partition_drop"] > 0


def test_replica_restarts_and_catches_up():
    """r3 is down while the others commit many blocks and several checkpoints; it restarts
    from its persisted state and reaches the same height through verified catch-up."""
    plan = calm_plan(4, checkpoint_interval=2, batch_requests_max=1, ticks=400)

    def schedule(sim, tick):
        if tick == 2:
            sim.schedule_crash("r3", "after_apply", 250)
        if 5 <= tick <= 200 and tick % 10 == 0:
            sim.client_request(["r0", "r1", "r2"])

    sim = Simulation(plan, schedule=schedule)
    probe = {}
    original = sim.restart

    def restart(node):
        probe["others"] = max(heights(sim).values())
        probe["mine"] = sim.checker.height(node.id)
        original(node)

    sim.restart = restart
    result = run_ok(sim)
    assert probe["mine"] == 0 and probe["others"] >= 10
    assert result.faults["catch_up_served"] > 0
    stable = sim.nodes["r3"].replica.status()["stable_checkpoint"]
    assert stable >= 2


def test_checkpoint_during_a_view_change():
    """When the first checkpoint height (2) commits, the primary crashes and the links between
    the other three drop everything for 35 ticks, so CHECKPOINT votes are lost while the
    replicas time out and change view. The checkpoint must become stable in the middle of that
    view change (on a replica that had missed it) and the new view must commit above it."""
    plan = calm_plan(5, checkpoint_interval=2, batch_requests_max=1)
    state = {"stable_during_view_change": []}
    others = ["r1", "r2", "r3"]

    def schedule(sim, tick):
        if 1 <= tick <= 120 and tick % 6 == 0:
            sim.client_request(others)
        if "crashed" not in state and sim.checker.height("r1") >= 2:
            state["crashed"] = tick
            sim.schedule_crash("r0", "after_apply", 150)
            sim.network.set_partition(tick, {(a, b) for a in others for b in others if a != b}, 35, "r1 / r2 / r3")
        for node_id in others:
            status = sim.nodes[node_id].replica.status()
            previous = state.get(node_id)
            now = (status["view_active"], status["stable_checkpoint"])
            if previous and not previous[0] and not now[0] and previous[1] < 2 <= now[1]:
                state["stable_during_view_change"].append((tick, node_id))
            state[node_id] = now

    sim = Simulation(plan, schedule=schedule)
    result = run_ok(sim)
    assert result.view_changes >= 1
    assert state["stable_during_view_change"], "no checkpoint became stable inside a view change"
    assert result.blocks_committed > 4
    for node_id in sim.honest_ids:
        assert sim.nodes[node_id].replica.status()["stable_checkpoint"] >= 2


def test_primary_crash_between_sending_and_persisting_a_proposal():
    """The host may send a Ready's messages before writing its persist batch (the contract says
    they never depend on it). r0 (primary) is set to crash right there, at the first Ready that
    both sends and persists. Its outbound links are cut for the first ticks, so no proposal of
    its commits before it restarts (3 ticks later, same view) and proposes height 1 again. It
    must propose the same block (the checker tracks every PRE-PREPARE/PREPARE/COMMIT it signs,
    sent or dropped). A correct replica never sends ahead of its persist, so that crash point is
    never reached; a replica that did would be caught re-proposing a different block."""
    plan = calm_plan(6, send_before_persist=True, batch_requests_max=2)

    def schedule(sim, tick):
        if tick == 1:
            sim.network.set_partition(tick, {("r0", o) for o in ("r1", "r2", "r3")}, 8, "r0 -/-> all")
            sim.schedule_crash("r0", "after_early_send", 3, wait=True)
        if tick in (1, 12, 13, 14, 30):
            sim.client_request(["r0", "r1"])

    sim = Simulation(plan, schedule=schedule)
    run_ok(sim)


def test_replica_restarted_after_a_view_change_joins_the_new_view_at_once():
    """n = 7. r6 is down while r0 (primary of view 0) crashes and the other five change view. When r6
    restarts (its persisted view is 0) it must vote in the current view within a few network round
    trips, not after its own view timeout: it asks its peers at its first tick, and they answer a
    CATCH-UP-REQUEST with their NEW-VIEW. Without that, a restarted node is one fault short."""
    plan = calm_plan(3, replicas=7, ticks=700)
    state = {}

    def schedule(sim, tick):
        if tick == 1:
            sim.schedule_crash("r6", "after_apply", 400)
        if tick == 20:
            sim.schedule_crash("r0", "after_apply", 10_000)
        if tick % 10 == 0 and tick <= 600:
            sim.client_request(["r1", "r2", "r3", "r4", "r5"])
        node = sim.nodes["r6"]
        r1 = sim.nodes["r1"].replica
        if node.up and "restarted" not in state and tick > 30:
            state["restarted"] = tick
            state["view_then"] = node.replica.view
        if "restarted" in state and "joined" not in state and r1.view > 0 and node.up:
            if node.replica.view == r1.view and node.replica.view_active:
                state["joined"] = tick

    sim = Simulation(plan, schedule=schedule)
    result = sim.run()
    assert result.ok, result.summary()
    assert result.view_changes >= 1 and state.get("view_then") == 0, state
    assert "joined" in state, state
    # Well inside one view timeout (300 ms = 30 ticks in the simulator), which is what it took before.
    assert state["joined"] - state["restarted"] < adapter.view_timeout_ms // plan.tick_ms // 2, state


def test_the_host_merges_readies_and_a_crash_falls_between_its_steps():
    """The simulator carries out Readies through consensus.host, merged as the daemon merges them.
    r1 crashes after the acknowledgement of a merged write and before what that released is sent
    (then again, later, between a write and its acknowledgement); the run stays safe and live."""
    plan = calm_plan(2, readies_merged_max=16, batch_requests_max=2)
    state = {}

    def schedule(sim, tick):
        if 1 <= tick <= 6:
            sim.client_request(["r1", "r2", "r3"])
        if tick == 2:
            sim.schedule_crash("r1", "after_persisted_ack", 30, wait=True)
        if tick == 60 and sim.nodes["r1"].up:
            state["second"] = tick
            sim.schedule_crash("r1", "after_persist", 30, wait=True)
        if 61 <= tick <= 64:
            sim.client_request(["r0", "r2", "r3"])

    sim = Simulation(plan, schedule=schedule)
    result = run_ok(sim)
    assert result.faults["readies_merged"] > 0
    assert result.faults["crash_after_persisted_ack"] == 1
    assert "second" in state and result.faults["crash_after_persist"] == 1
    assert sim.nodes["r1"].up and sim.checker.height("r1") == result.blocks_committed
    assert result.requests_committed == 10
