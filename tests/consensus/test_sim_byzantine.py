"""Each Byzantine rewrite produces what it claims: a conflicting but validly signed
message, or one that an honest replica's boundary check (decode_message) rejects.
A behaviour that silently produced valid, harmless copies would test nothing."""

import random

import pytest

from consensus import messages
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.sim import adapter, app
from consensus.sim.byzantine import ByzantineBehaviour
from consensus.sim.cluster import CHAIN_ID, make_validators
from consensus.sim.faults import BYZANTINE_BEHAVIOURS, draw_fault_plan


@pytest.fixture
def setup():
    vset, keys = make_validators(draw_fault_plan(1, replicas=4))
    return vset, keys


def pre_prepare(vset, keys, view=0):
    entries = [app.make_request("c", i, bytes([i])) for i in range(3)]
    result = app.SimApplication().execute(None, 1, 1000, entries)
    header = BlockHeader(
        chain_id=CHAIN_ID, height=1, prev_hash=ZERO_HASH, time_ms=1000, entries_hash=entries_hash(entries),
        entry_count=len(entries), tree_size=result.tree_size, tree_root=result.tree_root,
        results_hash=result.results_hash, validator_set_hash=vset.hash(),
    )
    primary = vset.primary(view).id
    message = messages.sign(messages.PrePrepare(view, header, tuple(entries), primary), keys[primary], CHAIN_ID)
    return primary, message


def decode(vset, data):
    return messages.decode_message(data, vset, CHAIN_ID)


def test_equivocation_gives_a_validly_signed_different_block_for_the_same_slot(setup):
    vset, keys = setup
    primary, original = pre_prepare(vset, keys)
    ctx = adapter.Context(vset, CHAIN_ID, keys[primary], primary)
    rng = random.Random(1)
    seen = set()
    for _ in range(30):
        altered = decode(vset, adapter.equivocate(ctx, messages.encode(original), rng))
        assert (altered.view, altered.height) == (original.view, original.height)
        assert altered.header.hash() != original.header.hash()
        seen.add(altered.header.hash())
    assert len(seen) > 10
    assert adapter.equivocate(ctx, b"garbage", rng) is None


def test_conflicting_votes_and_shifted_views_are_validly_signed(setup):
    vset, keys = setup
    vote = messages.sign(messages.Prepare(0, 1, bytes(32), "r1"), keys["r1"], CHAIN_ID)
    ctx = adapter.Context(vset, CHAIN_ID, keys["r1"], "r1")
    rng = random.Random(2)
    other = decode(vset, adapter.conflicting_vote(ctx, messages.encode(vote), rng))
    assert (other.view, other.height) == (0, 1) and other.header_hash != vote.header_hash
    future = decode(vset, adapter.shift_view(ctx, messages.encode(vote), 1000))
    assert future.view == 1000
    assert adapter.shift_view(ctx, messages.encode(vote), -1) is None   # no view below 0


def test_forged_signatures_are_rejected_at_the_boundary(setup):
    vset, keys = setup
    vote = messages.sign(messages.Commit(0, 1, bytes(32), "r1"), keys["r1"], CHAIN_ID)
    ctx = adapter.Context(vset, CHAIN_ID, keys["r1"], "r1")
    behaviour = ByzantineBehaviour(random.Random(3), "r1", keys["r1"], CHAIN_ID, ["r0", "r1", "r2", "r3"], vset, (), 1.0)
    rng = random.Random(3)
    for _ in range(20):
        forged = adapter.forge_signature(ctx, messages.encode(vote), behaviour.stranger_key, rng)
        with pytest.raises(messages.MessageError) as caught:
            decode(vset, forged)
        assert caught.value.reason == "bad-signature"


@pytest.mark.parametrize("behaviour_name", BYZANTINE_BEHAVIOURS)
def test_every_behaviour_alters_what_it_applies_to(setup, behaviour_name):
    vset, keys = setup
    primary, original = pre_prepare(vset, keys, view=2)   # view 2 so a stale view exists
    data = messages.encode(original)
    behaviour = ByzantineBehaviour(
        random.Random(4), primary, keys[primary], CHAIN_ID, ["r0", "r1", "r2", "r3"], vset, (behaviour_name,), 1.0
    )
    behaviour.observe("r2", messages.encode(messages.sign(messages.Prepare(0, 1, bytes(32), "r2"), keys["r2"], CHAIN_ID)))
    out = behaviour.outgoing(0, ["r1", "r2", "r3"], data)
    # split_brain leaves group 0 (r2: index 2) the original block; the rest alter all three.
    assert sum(behaviour.altered.values()) == (2 if behaviour_name == "split_brain" else 3)
    if behaviour_name == "silent":
        assert out == []
    else:
        assert any(payload != data for _, payload in out)


def test_forged_catch_up_blocks_do_not_verify(setup):
    """A Byzantine node serving catch-up alters a block or strips its certificate: the block
    must fail CommittedBlock.verify, the check a catching-up replica makes."""
    from consensus.block import CommitCertificate, CommitSignature, commit_vote_payload
    from consensus import codec
    vset, keys = setup
    _, pre = pre_prepare(vset, keys)
    payload = commit_vote_payload(0, 1, pre.header.hash())
    sigs = tuple(CommitSignature(v, codec.sign(keys[v], codec.DOMAIN_COMMIT, CHAIN_ID, payload)) for v in ("r0", "r1", "r2"))
    block = messages.CommittedBlock(pre.header, pre.entries, CommitCertificate(0, 1, pre.header.hash(), sigs))
    block.verify(vset)
    data = messages.encode(messages.CatchUpResponse((block,)))
    ctx = adapter.Context(vset, CHAIN_ID, keys["r3"], "r3")
    rng = random.Random(5)
    reasons = set()
    for _ in range(20):
        forged = decode(vset, adapter.forge_signature(ctx, data, None, rng)).blocks[0]
        with pytest.raises(messages.MessageError) as caught:
            forged.verify(vset)
        reasons.add(str(caught.value))
    assert len(reasons) >= 2


def test_lying_view_changes_are_signed_and_bad_new_views_are_rejected(setup):
    """A Byzantine VIEW-CHANGE that hides its prepared blocks still verifies (only quorum
    intersection protects against it); a tampered NEW-VIEW does not."""
    vset, keys = setup
    vc = messages.sign(messages.ViewChange(1, messages.GENESIS_CHECKPOINT, (), "r2"), keys["r2"], CHAIN_ID)
    ctx = adapter.Context(vset, CHAIN_ID, keys["r2"], "r2")
    lying = decode(vset, adapter.conflicting_vote(ctx, messages.encode(vc), random.Random(6)))
    assert isinstance(lying, messages.ViewChange) and lying.prepared == ()
    vcs = tuple(
        messages.sign(messages.ViewChange(1, messages.GENESIS_CHECKPOINT, (), v), keys[v], CHAIN_ID)
        for v in ("r0", "r2", "r3")
    )
    new_view = messages.sign(messages.NewView(1, vcs, (), "r1"), keys["r1"], CHAIN_ID)
    decode(vset, messages.encode(new_view))
    ctx = adapter.Context(vset, CHAIN_ID, keys["r1"], "r1")
    tampered = adapter.conflicting_vote(ctx, messages.encode(new_view), random.Random(6))
    with pytest.raises(messages.MessageError) as caught:
        decode(vset, tampered)
    assert caught.value.reason == "no-quorum"


def test_colluders_vote_for_the_other_block_an_equivocating_primary_proposed(setup):
    """Byzantine nodes share what was proposed per slot: after the primary equivocates, a
    colluder's conflicting PREPARE names the alternative block, validly signed."""
    vset, keys = setup
    primary, original = pre_prepare(vset, keys)
    collusion = {}
    primary_ctx = adapter.Context(vset, CHAIN_ID, keys[primary], primary, collusion)
    primary_ctx.remember(messages.encode(original))
    alternative = decode(vset, adapter.equivocate(primary_ctx, messages.encode(original), random.Random(7)))
    colluder = adapter.Context(vset, CHAIN_ID, keys["r2"], "r2", collusion)
    vote = messages.sign(messages.Prepare(0, 1, original.header.hash(), "r2"), keys["r2"], CHAIN_ID)
    rng = random.Random(8)
    named = {decode(vset, adapter.conflicting_vote(colluder, messages.encode(vote), rng)).header_hash for _ in range(20)}
    assert alternative.header.hash() in named
    assert original.header.hash() not in named


def split_brain_run(byzantine_ids):
    from consensus.sim import Simulation
    from consensus.sim.faults import calm_plan

    plan = calm_plan(9, byzantine_count=1, byzantine_behaviours=("split_brain",), byzantine_probability=0.0)

    def schedule(sim, tick):
        if tick in (1, 20, 40):
            sim.client_request(["r0", "r1", "r2", "r3"])

    return Simulation(plan, schedule=schedule, byzantine_ids=byzantine_ids, beyond_f=True).run()


def test_split_brain_with_f_colluders_cannot_fork():
    """The coordinated attack (A to half the cluster, B to the rest, votes to match) by the
    primary alone (f = 1 of 4): no fork, and the cluster still commits."""
    result = split_brain_run(["r0"])
    assert result.ok, result.summary()
    assert result.faults["byz_split_brain"] > 0


def test_split_brain_with_f_plus_one_colluders_forks_and_the_checker_says_so():
    """The same attack by two of four (more than f): the honest r2 and r3 commit different
    blocks at height 1. The checker must catch it; this is the end-to-end proof that a fork
    would not go unnoticed."""
    result = split_brain_run(["r0", "r1"])
    assert not result.ok
    assert "committed" in result.failure and "at that height" in result.failure, result.failure


def test_votes_on_the_wire_are_classified_by_slot(setup):
    """The conflicting-vote check reads (kind, view, slot, digest) off the wire: each signed vote
    kind maps to its slot, a message from someone else or not a vote maps to nothing."""
    vset, keys = setup
    primary, pre = pre_prepare(vset, keys)
    h = pre.header.hash()
    assert adapter.classify_signed(messages.encode(pre), primary) == ("pre-prepare", 0, 1, h)
    prepare = messages.sign(messages.Prepare(3, 7, h, "r1"), keys["r1"], CHAIN_ID)
    commit = messages.sign(messages.Commit(3, 7, h, "r1"), keys["r1"], CHAIN_ID)
    checkpoint = messages.sign(messages.Checkpoint(8, h, "r1"), keys["r1"], CHAIN_ID)
    assert adapter.classify_signed(messages.encode(prepare), "r1") == ("prepare", 3, 7, h)
    assert adapter.classify_signed(messages.encode(commit), "r1") == ("commit", 3, 7, h)
    assert adapter.classify_signed(messages.encode(checkpoint), "r1") == ("checkpoint", 0, 8, h)
    assert adapter.classify_signed(messages.encode(prepare), "r2") is None      # relayed, not its own
    assert adapter.classify_signed(messages.encode(messages.Requests((b"x",))), "r1") is None
    assert adapter.classify_signed(b"\xc1garbage", "r1") is None


def amnesia_run(lose_disk: bool):
    """r0 (Byzantine, otherwise silent) is primary of view 0 and sends r1 block A, then, after r1
    crashed and restarted, block B for the same slot."""
    from consensus.sim import Simulation
    from consensus.sim.faults import calm_plan

    plan = calm_plan(11, byzantine_count=1, byzantine_behaviours=("silent",), byzantine_probability=1.0)
    sim = Simulation(plan, byzantine_ids=["r0"])
    vset, keys = sim.validators, {i: sim.nodes[i].signing_key for i in sim.ids}
    requests = [app.make_request("amnesia", i, bytes([i])) for i in range(2)]

    def proposal(entries, time_ms):
        result = app.SimApplication().execute(None, 1, time_ms, entries)
        header = BlockHeader(
            chain_id=CHAIN_ID, height=1, prev_hash=ZERO_HASH, time_ms=time_ms, entries_hash=entries_hash(entries),
            entry_count=len(entries), tree_size=result.tree_size, tree_root=result.tree_root,
            results_hash=result.results_hash, validator_set_hash=vset.hash(),
        )
        return messages.encode(messages.sign(messages.PrePrepare(0, header, tuple(entries), "r0"), keys["r0"], CHAIN_ID))

    def schedule(sim, tick):
        r1 = sim.nodes["r1"]
        if tick == 5:
            sim.carry_out(r1, r1.replica.on_message("r0", proposal(requests[:1], sim.now_ms())))
            sim.schedule_crash("r1", "after_apply", 3)
        if tick == 7 and lose_disk:
            r1.kv.clear()     # a host that acknowledged writes it never made durable
        if tick == 10:
            sim.carry_out(r1, r1.replica.on_message("r0", proposal(requests[1:], sim.now_ms())))

    sim.schedule = schedule
    return sim.run()


def test_a_replica_that_loses_its_votes_signs_conflicting_ones_and_the_checker_says_so():
    """With its persisted votes intact, the restarted r1 refuses block B; with them lost it
    PREPAREs B after having PREPAREd A for the same slot, which the checker must report."""
    kept = amnesia_run(lose_disk=False)
    assert kept.ok, kept.summary()
    lost = amnesia_run(lose_disk=True)
    assert not lost.ok and "honest replica r1 signed two different prepare" in lost.failure, lost.summary()
