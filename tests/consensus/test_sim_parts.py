"""The simulator's own parts, checked without a replica: a checker that cannot fail,
a network that is not deterministic or a plan that draws an illegal validator set
would make every seed sweep worthless."""

import random

import nacl.signing
import pytest

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash
from consensus.epochs import EpochSchedule, RotateValidatorKey
from consensus.sim import app
from consensus.sim.checker import InvariantChecker, SafetyViolation
from consensus.sim.cluster import CHAIN_ID, make_validators
from consensus.sim.faults import draw_fault_plan
from consensus.sim.network import NetworkConditions, Packet, SimNetwork


MARGIN = 8   # the checker's epoch margin in these tests


def plan_for(n, seed=1):
    return draw_fault_plan(seed, replicas=n)


def build_block(vset, keys, parent, entries, *, signers=None, view=0, time_ms=1_000):
    height = parent.height + 1 if parent else 1
    result = app.SimApplication().execute(parent, height, time_ms, entries)
    header = BlockHeader(
        chain_id=CHAIN_ID, height=height, prev_hash=parent.hash() if parent else ZERO_HASH, time_ms=time_ms,
        entries_hash=entries_hash(entries), entry_count=len(entries), tree_size=result.tree_size,
        tree_root=result.tree_root, results_hash=result.results_hash, validator_set_hash=vset.hash(),
    )
    signers = signers if signers is not None else [v.id for v in vset.validators][: vset.quorum_size]
    payload = commit_vote_payload(view, height, header.hash())
    sigs = tuple(CommitSignature(s, codec.sign(keys[s], codec.DOMAIN_COMMIT, CHAIN_ID, payload)) for s in signers)
    return header, tuple(entries), CommitCertificate(view, height, header.hash(), sigs)


@pytest.fixture
def cluster():
    vset, keys = make_validators(plan_for(4))
    return vset, keys, InvariantChecker(vset, CHAIN_ID, [v.id for v in vset.validators], MARGIN)


def req(i, valid=True):
    return app.make_request("c", i, bytes([i]), valid=valid)


def test_checker_accepts_one_agreed_chain_and_idempotent_redelivery(cluster):
    vset, keys, checker = cluster
    b1 = build_block(vset, keys, None, [req(1), req(2)])
    b2 = build_block(vset, keys, b1[0], [req(3)], time_ms=1_000)
    for rid in ("r0", "r1"):
        checker.committed(rid, *b1)
        checker.committed(rid, *b2)
    checker.committed("r0", *b1)   # re-delivered after a restart: same block, fine
    assert checker.height("r0") == 2 and checker.has_committed("r1", req(3))


def test_checker_rejects_a_fork(cluster):
    vset, keys, checker = cluster
    checker.committed("r0", *build_block(vset, keys, None, [req(1)]))
    with pytest.raises(SafetyViolation, match="committed"):
        checker.committed("r1", *build_block(vset, keys, None, [req(2)]))


def test_checker_rejects_a_certificate_without_quorum_or_jurisdiction(cluster):
    vset, keys, checker = cluster
    with pytest.raises(SafetyViolation, match="certificate"):
        checker.committed("r0", *build_block(vset, keys, None, [req(1)], signers=["r0", "r1"]))
    # Three signers but only one jurisdiction is not a quorum either (r0, r1 are HK in a 2+2 set).
    hk = [v.id for v in vset.validators if v.jurisdiction == "HK"]
    assert len(hk) == 2
    with pytest.raises(SafetyViolation, match="certificate"):
        checker.committed("r0", *build_block(vset, keys, None, [req(1)], signers=hk))


def test_checker_rejects_gaps_bad_chaining_and_bad_execution(cluster):
    vset, keys, checker = cluster
    b1 = build_block(vset, keys, None, [req(1)])
    b2 = build_block(vset, keys, b1[0], [req(2)])
    with pytest.raises(SafetyViolation, match="out of order"):
        checker.committed("r0", *b2)
    checker.committed("r0", *b1)
    other_parent = build_block(vset, keys, None, [req(9)])[0]
    with pytest.raises(SafetyViolation, match="prev_hash"):
        checker.committed("r0", *build_block(vset, keys, other_parent, [req(2)]))
    header, entries, _ = b2
    wrong = BlockHeader(**{**header.to_wire(), "tree_size": header.tree_size + 1})
    payload = commit_vote_payload(0, 2, wrong.hash())
    sigs = tuple(CommitSignature(s, codec.sign(keys[s], codec.DOMAIN_COMMIT, CHAIN_ID, payload)) for s in ("r0", "r1", "r2"))
    with pytest.raises(SafetyViolation, match="Application"):
        checker.committed("r0", wrong, entries, CommitCertificate(0, 2, wrong.hash(), sigs))


def test_checker_rejects_duplicate_and_invalid_requests(cluster):
    vset, keys, checker = cluster
    b1 = build_block(vset, keys, None, [req(1)])
    checker.committed("r0", *b1)
    with pytest.raises(SafetyViolation, match="twice"):
        checker.committed("r0", *build_block(vset, keys, b1[0], [req(1)]))
    with pytest.raises(SafetyViolation, match="invalid request"):
        checker.committed("r0", *build_block(vset, keys, b1[0], [req(5, valid=False)]))


def test_checker_ignores_byzantine_commits_and_catches_conflicting_honest_votes():
    vset, keys = make_validators(plan_for(4))
    checker = InvariantChecker(vset, CHAIN_ID, ["r0", "r1", "r2"], MARGIN)
    checker.committed("r3", *build_block(vset, keys, None, [req(1)], signers=["r3"]))
    checker.signed_vote("r3", "prepare", 0, 1, b"a")
    checker.signed_vote("r3", "prepare", 0, 1, b"b")
    checker.signed_vote("r0", "prepare", 0, 1, b"a")
    checker.signed_vote("r0", "prepare", 0, 1, b"a")   # the same vote again (a resend) is fine
    checker.signed_vote("r0", "prepare", 1, 1, b"b")   # another view is another slot
    with pytest.raises(SafetyViolation, match="two different prepare"):
        checker.signed_vote("r0", "prepare", 0, 1, b"b")


def test_checker_follows_the_schedule_and_refuses_an_old_sets_certificate_past_its_epoch(cluster):
    vset, keys, checker = cluster
    new_key = nacl.signing.SigningKey(bytes([5]) * 32)
    rotate = app.make_reconfiguration(0, 0, [RotateValidatorKey("r0", new_key.verify_key.encode())])
    block = build_block(vset, keys, None, [rotate])
    checker.committed("r0", *block)
    for height in range(2, MARGIN + 2):                   # heights 2..9 stay in epoch 0
        block = build_block(vset, keys, block[0], [req(height)])
        checker.committed("r0", *block)
    new_set = checker.schedule.config_at(MARGIN + 2).validators   # epoch 1 from height 10
    assert checker.schedule.latest.epoch == 1 and new_set.get("r0").public_key == new_key.verify_key.encode()
    with pytest.raises(SafetyViolation, match="certificate does not verify"):
        checker.committed("r0", *build_block(vset, keys, block[0], [req(10)]))   # the old set, past its epoch
    checker.committed("r0", *build_block(new_set, {**keys, "r0": new_key}, block[0], [req(10)]))
    # A replica whose schedule disagrees with the committed chain's is caught.
    checker.same_epochs("r0", checker.schedule, 10)
    with pytest.raises(SafetyViolation, match="epoch 0 at height 10"):
        checker.same_epochs("r0", EpochSchedule.genesis(vset, MARGIN), 10)


def test_the_simulator_draws_reconfigurations_and_the_chain_changes_epoch():
    from consensus.sim.cluster import run_seed

    result = run_seed(draw_fault_plan(10))
    assert result.ok, result.failure
    assert result.faults["epochs_scheduled"] >= 1
    assert sum(count for name, count in result.faults.items() if name.startswith("reconfigure_")) >= 1


def test_request_validity_edges():
    good = app.make_request("client", 7, b"x" * app.payload_bytes_max)
    assert app.check_request(good) is None
    assert app.request_key(good) == ("client", 7)
    assert app.check_request(app.make_request("client", 7, b"x" * (app.payload_bytes_max + 1))) == "request_payload"
    assert app.check_request(app.make_request("client", 7, b"x", valid=False)) == "request_checksum"
    assert app.check_request(b"\xc1") == "request_not_canonical"
    assert app.check_request(b"x" * (app.request_bytes_max + 1)) == "request_too_large"
    assert app.check_request(codec.pack({"client": "c"})) == "request_fields"
    assert app.check_request(codec.pack([1, 2])) == "request_fields"


def test_execute_chains_from_the_parent_only():
    a = app.SimApplication()
    assert a.execute(None, 2, 0, []) is None
    first = a.execute(None, 1, 0, [b"e1", b"e2"])
    assert first.tree_size == 2
    assert a.execute(None, 1, 0, [b"e1", b"e2"]) == first
    assert a.execute(None, 1, 0, [b"e2", b"e1"]).tree_root != first.tree_root


def test_fault_plans_are_deterministic_and_always_draw_a_legal_validator_set():
    kinds = set()
    for seed in range(300):
        plan = draw_fault_plan(seed)
        assert plan == draw_fault_plan(seed)
        assert plan.lines()[0] == f"seed={seed}"
        assert 0 <= plan.byzantine_count <= plan.f
        vset, _ = make_validators(plan)      # ValidatorSet refuses illegal splits
        assert vset.n == plan.replica_count
        kinds.add(plan.replica_count)
    assert kinds == {4, 7, 10}


def test_fault_plan_overrides_are_validated_and_keep_other_draws():
    base = draw_fault_plan(5)
    assert draw_fault_plan(5, ticks=77).loss_probability == base.loss_probability
    assert draw_fault_plan(5, replicas=10, byzantine=3).byzantine_count == 3
    with pytest.raises(ValueError, match="byzantine"):
        draw_fault_plan(5, replicas=4, byzantine=2)
    with pytest.raises(ValueError, match="byzantine"):
        draw_fault_plan(5, byzantine=4)
    # Without --replicas, a drawn cluster too small for the Byzantine count grows to fit it.
    assert all(draw_fault_plan(seed, byzantine=3).replica_count == 10 for seed in range(20))
    assert {draw_fault_plan(seed, byzantine=2).replica_count for seed in range(40)} == {7, 10}
    with pytest.raises(ValueError, match="replicas"):
        draw_fault_plan(5, replicas=5)


def run_network(seed):
    net = SimNetwork(random.Random(seed), NetworkConditions(0, 5, 0.2, 0.2, 0.1))
    delivered = []
    for tick in range(200):
        if tick == 50:
            net.start_partition(tick, "asymmetric", ["a", "b", "c", "d"], 30)
        if tick == 80:
            net.heal()
        links = [(s, d) for s in "abcd" for d in "abcd" if s != d]
        for i, (s, d) in enumerate(links):
            net.send(tick, Packet(s, d, f"{tick}/{i}".encode()))
        delivered += [(tick, p) for p in net.due(tick)]
    return delivered, net


def test_network_is_a_pure_function_of_its_seed_and_injects_each_fault():
    first, net = run_network(3)
    again, _ = run_network(3)
    assert first == again
    assert run_network(4)[0] != first
    for kind in ("loss", "duplicate", "replay", "partition_drop", "partition_asymmetric"):
        assert net.faults[kind] > 0, kind
    # Reordering: some packet on one link overtakes an earlier one.
    on_ab = [int(p.data.split(b"/")[0]) for _, p in first if (p.source, p.destination) == ("a", "b")]
    assert on_ab != sorted(on_ab)
    # Nothing arrives in the tick it was sent.
    assert all(int(p.data.split(b"/")[0]) < tick for tick, p in first)


def test_partitions_block_exactly_their_links():
    ids = ["r0", "r1", "r2", "r3"]
    net = SimNetwork(random.Random(1), NetworkConditions(0, 0, 0, 0, 0))
    p = net.start_partition(0, "isolate_one", ids, 10)
    alone = p.description.split()[-1]
    assert all(net.blocked(alone, o) and net.blocked(o, alone) for o in ids if o != alone)
    assert sum(net.blocked(a, b) for a in ids for b in ids) == 6
    p = net.start_partition(0, "asymmetric", ids, 10)
    assert all(not net.blocked(b, a) for a, b in p.blocked)
    p = net.start_partition(0, "symmetric", ids, 10)
    assert all(net.blocked(b, a) for a, b in p.blocked)
    with pytest.raises(ValueError):
        net.start_partition(0, "sideways", ids, 10)


def test_replay_pool_is_bounded():
    from consensus.sim import network
    net = SimNetwork(random.Random(1), NetworkConditions(0, 0, 0, 0, 0.5))
    for i in range(network.replay_pool_packets_max + 50):
        net.send(0, Packet("a", "b", str(i).encode()))
    assert len(net._replay_pool) == network.replay_pool_packets_max


def test_verify_memo_is_bounded_exact_and_restored(monkeypatch):
    """The memo answers exactly what codec.verify answers, starts over at its bound, and
    codec.verify is the real one again after the run."""
    from consensus.sim import speed

    monkeypatch.setattr(speed, "verify_memo_entries_max", 3)
    key = nacl.signing.SigningKey(bytes(range(32)))
    real = codec.verify
    with speed.memoized_verify():
        assert codec.verify is not real
        for i in range(10):
            payload = bytes([i])
            signature = codec.sign(key, codec.DOMAIN_PREPARE, CHAIN_ID, payload)
            assert codec.verify(key.verify_key.encode(), signature, codec.DOMAIN_PREPARE, CHAIN_ID, payload)
            assert not codec.verify(key.verify_key.encode(), signature, codec.DOMAIN_COMMIT, CHAIN_ID, payload)
            flipped = signature[:-1] + bytes([signature[-1] ^ 1])
            assert not codec.verify(key.verify_key.encode(), flipped, codec.DOMAIN_PREPARE, CHAIN_ID, payload)
        memo = codec.verify.__closure__
        assert any(isinstance(c.cell_contents, dict) and len(c.cell_contents) <= 3 for c in memo)
    assert codec.verify is real


def test_byzantine_memory_is_bounded():
    from consensus.sim import adapter, byzantine
    from consensus.sim.byzantine import ByzantineBehaviour

    vset, keys = make_validators(plan_for(4))
    behaviour = ByzantineBehaviour(random.Random(1), "r0", keys["r0"], CHAIN_ID, ["r0", "r1", "r2", "r3"], vset, ("replay",), 1.0)
    for i in range(byzantine.replay_pool_messages_max + 10):
        behaviour.observe("r1", str(i).encode())
    assert len(behaviour.pool) == byzantine.replay_pool_messages_max
    ctx = adapter.Context(vset, CHAIN_ID, keys["r0"], "r0")
    header = build_block(vset, keys, None, [req(1)])[0]
    for view in range(adapter.Context.proposal_slots_max + 5):
        ctx.note_proposal(view, header)
    assert len(ctx.proposals) == adapter.Context.proposal_slots_max


def test_a_replica_that_never_stops_asking_to_persist_is_reported():
    """The host follows on_persisted() chains, but not forever: past host.FOLLOW_UPS_MAX
    it reports the replica (a bug there), instead of looping."""
    from consensus import host
    from consensus.sim import Simulation
    from consensus.sim.faults import calm_plan

    class Endless:
        def __init__(self):
            self.persist, self.messages, self.committed = [(b"k", b"v")], [], []
            self.serve_catch_up, self.evidence, self.rejected = [], [], []

    class EndlessReplica:
        calls = 0

        def check_invariants(self):
            pass

        def on_persisted(self):
            self.calls += 1
            return Endless()

    sim = Simulation(calm_plan(1, ticks=5))
    node = sim.nodes["r1"]
    node.replica = replica = EndlessReplica()
    replica.schedule = sim.checker.schedule   # the checker compares each replica's epochs with the chain's
    with pytest.raises(SafetyViolation, match="kept returning"):
        sim.carry_out(node, Endless())
        sim.flush(node)
    assert replica.calls == host.FOLLOW_UPS_MAX + 1   # the first ack, then one per follow-up


def test_the_simulator_checks_every_replicas_invariants_after_every_step():
    """A replica whose state contradicts itself fails the run at once, naming the replica and the rule."""
    from consensus.sim import Simulation
    from consensus.sim.faults import calm_plan

    sim = Simulation(calm_plan(3, ticks=40))
    calls = []
    replica = sim.nodes["r2"].replica

    def check_invariants():
        calls.append(sim.tick)
        if sim.tick >= 20:
            raise AssertionError("r2: slot 3 is prepared without a certificate")
    replica._replica.check_invariants = check_invariants      # GuardedReplica passes the call through
    result = sim.run()
    assert not result.ok and "replica r2 broke an invariant: r2: slot 3 is prepared" in result.failure
    assert result.failure.startswith("tick 20:")
    assert len(calls) > 20 and set(range(20)) <= set(calls)    # every tick, before the rule broke
