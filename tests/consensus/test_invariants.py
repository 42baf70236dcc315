"""Replica.check_invariants and Replica.snapshot: the invariants hold after every input of seeded
simulator runs (faults, crashes, restarts, Byzantine peers), and each rule fires on the state it
guards against once that state is broken by hand."""

import dataclasses

import pytest

from consensus import codec
from consensus.replica import Replica, ReplicaStatus
from consensus.sim import draw_fault_plan, run_seed
from consensus.slot import SlotPhase
from consensus.status import InvariantViolation
from consensus.timeouts import Timer
from tests.support.replica_cluster import CHAIN, Cluster, TrivialApp, all_committed

INVARIANT_SEEDS = (0, 3, 7, 11)
INVARIANT_TICKS = 300


@pytest.fixture
def checked_replicas(monkeypatch):
    """Every Replica checks its invariants after construction (restore) and after every input."""
    def checking(method):
        def run(self, *args):
            result = method(self, *args)
            self.check_invariants()
            return result
        return run

    for name in ("on_message", "on_request", "on_tick", "on_persisted"):
        monkeypatch.setattr(Replica, name, checking(getattr(Replica, name)))
    original_init = Replica.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.check_invariants()
    monkeypatch.setattr(Replica, "__init__", init)


@pytest.mark.parametrize("seed", INVARIANT_SEEDS)
def test_invariants_hold_after_every_input(checked_replicas, seed):
    result = run_seed(draw_fault_plan(seed, ticks=INVARIANT_TICKS))
    assert result.ok, result.summary()


def committed_cluster():
    cluster = Cluster()
    requests = [b"ok:%d" % i for i in range(6)]
    for request in requests:
        cluster.submit("v0", request)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 500)
    for node in cluster.nodes.values():
        node.replica.check_invariants()
    return cluster


def with_slot_in_flight():
    """A cluster whose backup v1 holds an in-flight slot it prepared (the primary's COMMITs are held back)."""
    cluster = Cluster()
    cluster.drop = lambda sender, target, data: target == "v1" and (b"commit" in data or b"catch-up" in data)
    cluster.submit("v0", b"ok:in-flight")
    replica = cluster.nodes["v1"].replica
    assert cluster.run_until(lambda: prepared_height(replica) is not None, 200)
    replica.check_invariants()
    return replica


def prepared_height(replica):
    return next((h for h, s in replica.slots.items()
                 if s.phase >= SlotPhase.PREPARED and h > replica.last_applied_height), None)


def test_a_slot_phase_that_disagrees_with_its_messages_is_caught():
    replica = with_slot_in_flight()
    slot = replica.slots[prepared_height(replica)]
    slot.commit, saved = None, slot.commit
    slot.phase = SlotPhase.COMMIT_SENT
    with pytest.raises(InvariantViolation, match="COMMIT missing"):
        replica.check_invariants()
    slot.commit = saved
    replica.check_invariants()


def test_a_prepared_slot_without_our_vote_or_certificate_is_caught():
    replica = with_slot_in_flight()
    height = prepared_height(replica)
    certificate = replica.vote_log.certs.pop(height)
    with pytest.raises(InvariantViolation, match="without its prepared certificate"):
        replica.check_invariants()
    replica.vote_log.certs[height] = certificate
    del replica.vote_log.votes[height]
    with pytest.raises(InvariantViolation, match="without our vote"):
        replica.check_invariants()


def test_a_committed_request_still_pending_is_caught():
    replica = committed_cluster().nodes["v1"].replica
    request = b"ok:0"
    assert replica.is_committed(request)
    replica.requests.add(codec.sha256(request), request, 0, True)
    with pytest.raises(InvariantViolation, match="committed request is still pending"):
        replica.check_invariants()


def test_a_pool_above_its_bound_is_caught():
    replica = committed_cluster().nodes["v2"].replica
    for i in range(replica.config.request_pool_max + 1):
        replica.requests.pending[b"%032d" % i] = None
    with pytest.raises(InvariantViolation, match="above request_pool_max"):
        replica.check_invariants()


def test_a_timer_of_the_wrong_view_state_is_caught():
    replica = committed_cluster().nodes["v3"].replica
    replica.timeouts.start(Timer.VIEW_CHANGE, 100)
    with pytest.raises(InvariantViolation, match="view-change timer armed in an active view"):
        replica.check_invariants()


def test_a_stable_checkpoint_above_what_we_have_or_seek_is_caught():
    replica = committed_cluster().nodes["v0"].replica
    replica.stable = dataclasses.replace(replica.stable, height=replica.last_applied_height + 5)
    with pytest.raises(InvariantViolation, match="stable checkpoint"):
        replica.check_invariants()


def test_output_left_behind_after_an_input_is_caught():
    replica = committed_cluster().nodes["v0"].replica
    replica._reject("v1", "made-up")
    with pytest.raises(InvariantViolation, match="output left behind"):
        replica.check_invariants()


def test_snapshot_reports_what_the_attributes_say_and_is_frozen():
    cluster = committed_cluster()
    replica = cluster.nodes["v1"].replica
    cluster.submit("v1", b"ok:pending")   # pooled, not yet committed
    status = replica.snapshot()
    assert isinstance(status, ReplicaStatus)
    assert (status.view, status.primary_id, status.is_primary) == (replica.view, "v0", False)
    assert status.last_applied_height == replica.last_applied_height > 0
    assert status.stable_checkpoint_height == replica.stable.height
    assert status.pending_request_count == replica.pending_request_count == 1
    assert status.checks_signatures == replica.checks_signatures
    assert status.vouch_fallbacks == replica.vouch_fallbacks and status.catch_up_target == replica.catch_up_target
    assert status.restore_skipped == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.view = 5


def test_what_a_restore_assembles_waits_for_the_first_ready():
    """Restored mid view change without our VIEW-CHANGE, the replica signs a fresh one at once; it goes
    out with the first Ready, and the invariants hold before and after."""
    from consensus.vote_log import KEY_VIEW
    cluster = Cluster()
    persisted = {KEY_VIEW: codec.pack({"view": 1, "active": False})}
    replica = Replica(cluster.config, cluster.vset, "v1", cluster.keys["v1"], CHAIN, TrivialApp(), persisted=persisted)
    assert replica.view == 2 and not replica.view_active and replica._messages
    replica.check_invariants()
    ready = replica.on_tick(cluster.now_ms)
    assert ready.persist and not replica._messages
    replica.check_invariants()
    replica._send(None, b"late")
    with pytest.raises(InvariantViolation, match="output left behind"):
        replica.check_invariants()
