"""The request pool (consensus/request_pool.py) alone: capacity, the primary's proposal queue, the
forward queue's cut by count and bytes, drains and censorship strikes."""

from collections import OrderedDict
from dataclasses import dataclass, field

from consensus import codec
from consensus.messages import REQUESTS_MESSAGE_BYTES_MAX
from consensus.request_pool import (
    DEFERRED_FORWARDS_PER_POOL_SLOT, REFORWARD_SWEEPS, ProposalQueue, RequestPool, SweepRound,
)


def rid(request: bytes) -> bytes:
    return codec.sha256(request)


@dataclass
class FakeHeader:
    height: int


@dataclass
class FakeSlot:
    header: FakeHeader
    hash: bytes
    request_ids: tuple[bytes, ...] = field(default=())


def test_pool_keeps_arrival_order_and_knows_its_bounds():
    pool = RequestPool(capacity=4)
    for i in range(2):
        pool.add(rid(b"r%d" % i), b"r%d" % i, seen_ms=i, checked=True)
    assert pool.half_full and not pool.full and len(pool) == 2
    for i in range(2, 4):
        pool.add(rid(b"r%d" % i), b"r%d" % i, seen_ms=i, checked=False)
    assert pool.full
    assert [p.request for p in pool.pending.values()] == [b"r0", b"r1", b"r2", b"r3"]
    assert rid(b"r2") in pool and pool.get(rid(b"r2")).checked is False
    pool.drop(rid(b"r0"))
    assert rid(b"r0") not in pool and not pool.full


def test_added_requests_join_the_proposal_queue_unless_in_flight():
    pool = RequestPool(capacity=10)
    in_flight = rid(b"flying")
    pool.proposal_queue = ProposalQueue(0, (), {in_flight}, OrderedDict())
    pool.add(rid(b"a"), b"a", 0, True)
    pool.add(in_flight, b"flying", 0, True)
    assert list(pool.proposal_queue.unproposed) == [rid(b"a")]
    pool.drop(rid(b"a"))
    assert not pool.proposal_queue.unproposed
    pool.committed(in_flight)
    assert in_flight not in pool


def test_queue_holds_only_if_the_oldest_in_flight_blocks_were_applied_as_they_were():
    one = FakeSlot(FakeHeader(1), b"h1", (rid(b"a"),))
    two = FakeSlot(FakeHeader(2), b"h2", (rid(b"b"),))
    queue = ProposalQueue(0, (one, two), {rid(b"a"), rid(b"b")}, OrderedDict())
    assert not queue.holds((two,), 1, {1: b"other"}), "height 1 committed another block"
    assert queue.holds((two,), 1, {1: b"h1"})
    assert queue.in_flight_ids == {rid(b"b")} and queue.applied_height == 1
    assert not queue.holds((FakeSlot(FakeHeader(2), b"h2"),), 1, {}), "a different slot object: rebuild"
    three = FakeSlot(FakeHeader(3), b"h3", (rid(b"c"),))
    queue.unproposed[rid(b"c")] = None
    queue.proposed(three)
    assert rid(b"c") not in queue.unproposed and rid(b"c") in queue.in_flight_ids
    assert queue.in_flight_slots == (two, three)


def test_forward_queue_fills_a_message_by_count_or_bytes():
    pool = RequestPool(capacity=10)
    assert not pool.queue_forward(b"x", count_max=2)
    assert pool.queue_forward(b"y", count_max=2)
    assert pool.take_forward() == [b"x", b"y"] and pool.forward_queue_bytes == 0
    assert pool.queue_forward(b"z" * (REQUESTS_MESSAGE_BYTES_MAX - 60), count_max=100)


def test_a_request_is_held_by_the_primary_it_was_forwarded_to():
    pool = RequestPool(capacity=10)
    pending = pool.add(rid(b"a"), b"a", 5, True)
    pool.note_proposal(received_ms=7, height=1, entry_count=3, batch_requests_max=3, drains_max=4)
    pool.mark_held(pending, view=2, now_ms=10)
    assert (pending.held_view, pending.held_ms, pending.forwarded_ms, pending.held_proposed) == (2, 10, 10, 3)


def test_drains_settle_one_sweep_after_their_parent_is_applied():
    pool = RequestPool(capacity=10)
    pool.note_proposal(100, height=3, entry_count=1, batch_requests_max=4, drains_max=4)   # not full: a drain
    pool.note_proposal(110, height=4, entry_count=4, batch_requests_max=4, drains_max=4)   # full: none
    assert list(pool.drains) == [(100, 3, 1)]
    assert pool.settle_drains(last_applied_height=1) is None and pool.settled_drain is None
    assert pool.settle_drains(last_applied_height=2) is None, "usable only at the next sweep"
    assert pool.settle_drains(last_applied_height=2) == (100, 3, 1)
    pool.forget_primary()
    assert pool.settled_drain is None and not pool.drains


def test_drains_are_bounded():
    pool = RequestPool(capacity=10)
    for height in range(1, 10):
        pool.note_proposal(height, height, 0, batch_requests_max=4, drains_max=3)
    assert [d[1] for d in pool.drains] == [7, 8, 9]


def test_strikes_count_per_view_and_need_a_fresh_forward():
    pool = RequestPool(capacity=10)
    pending = pool.add(rid(b"a"), b"a", 0, True)
    pool.mark_held(pending, view=1, now_ms=0)
    assert pool.strike(pending, view=1) == 1 and pending.held_view == -1
    assert pool.strike(pending, view=1) == 2
    assert pool.strike(pending, view=2) == 1, "a new view starts over"


def test_restart_keeps_signed_requests_while_room_lasts():
    pool = RequestPool(capacity=2)
    signed = [(rid(r), r) for r in (b"a", b"b", b"c", b"d")]
    pool.keep_signed(signed, skip=lambda request_id: request_id == rid(b"a"))
    assert [p.request for p in pool.pending.values()] == [b"b", b"c"]
    pool.restart_clock(500)
    assert all(p.seen_ms == 500 for p in pool.pending.values())


def sweep_round(now_ms, *, view=1, applied_height=0, in_flight=frozenset(), view_entered_ms=0):
    return SweepRound(now_ms=now_ms, view=view, round_ms=100, drain_bound=50, view_timeout_ms=300,
                      view_entered_ms=view_entered_ms, applied_height=applied_height, in_flight=set(in_flight))


def always(request_id, pending):
    return True


def test_a_sweep_forwards_old_requests_once_per_view_and_again_after_reforward_sweeps():
    pool = RequestPool(capacity=10)
    old = pool.add(rid(b"old"), b"old", seen_ms=0, checked=True)
    pool.add(rid(b"flying"), b"flying", seen_ms=0, checked=True)
    pool.add(rid(b"young"), b"young", seen_ms=1_050, checked=True)
    flying = {rid(b"flying")}
    result = pool.sweep(sweep_round(1_000, in_flight=flying), always)
    assert result.forward == [b"old"] and not result.censored
    assert (old.held_view, old.held_ms) == (1, 1_000)
    assert pool.sweep(sweep_round(1_100, in_flight=flying), always).forward == [], "held: not before REFORWARD_SWEEPS"
    assert pool.sweep(sweep_round(1_000 + REFORWARD_SWEEPS * 100, in_flight=flying), always).forward == [
        b"old", b"young"]
    assert old.held_ms == 1_000 and old.forwarded_ms == 1_200, "the claim still dates from the first forward"


def test_a_sweep_forwards_only_wanted_requests():
    pool = RequestPool(capacity=10)
    pool.add(rid(b"bad"), b"bad", seen_ms=0, checked=False)

    def unwanted(request_id, pending):
        pool.drop(request_id)
        return False
    assert pool.sweep(sweep_round(1_000), unwanted).forward == [] and len(pool) == 0


def test_two_strikes_after_drains_that_left_a_held_request_out_blame_the_primary():
    pool = RequestPool(capacity=10)
    pending = pool.add(rid(b"r"), b"r", seen_ms=0, checked=True)
    pool.sweep(sweep_round(1_000), always)                       # forwarded: the primary holds it from 1000
    pool.note_proposal(1_200, height=1, entry_count=1, batch_requests_max=4, drains_max=8)   # emptied its queue
    pool.sweep(sweep_round(1_200, applied_height=0), always)     # parent of height 1 applied: settles
    result = pool.sweep(sweep_round(1_400, applied_height=1), always)
    assert pending.strikes == 1 and not result.censored and result.forward == [b"r"], "struck, forwarded again"
    pool.note_proposal(1_600, height=2, entry_count=1, batch_requests_max=4, drains_max=8)
    pool.sweep(sweep_round(1_600, applied_height=1), always)
    result = pool.sweep(sweep_round(1_800, applied_height=2), always)
    assert pending.strikes == 2 and result.censored


def test_stale_requests_for_resending_are_old_valid_and_bounded():
    pool = RequestPool(capacity=10)
    for i in range(4):
        pool.add(rid(b"s%d" % i), b"s%d" % i, seen_ms=i, checked=i != 1)
    pool.add(rid(b"new"), b"new", seen_ms=900, checked=True)

    def confirm(request_id, pending):
        return False   # the unchecked one turns out invalid
    assert pool.stale(1_000, 500, count_max=3, in_flight={rid(b"s2")}, confirm=confirm) == [b"s0", b"s3"]
    assert pool.stale(1_000, 500, count_max=10, in_flight=set(), confirm=always) == [b"s0", b"s2", b"s3", b"s1"]


def test_deferred_forwards_are_bounded_and_skip_what_left_the_pool_or_is_in_a_block():
    pool = RequestPool(capacity=2)
    for index in range(DEFERRED_FORWARDS_PER_POOL_SLOT * 2):
        pool.add(bytes([index]) * 32, b"r%d" % index, seen_ms=0, checked=True)
        pool.defer_forward(bytes([index]) * 32, due_ms=100 + index)
    assert len(pool.deferred_forwards) == DEFERRED_FORWARDS_PER_POOL_SLOT * 2
    pool.defer_forward(bytes([9]) * 32, due_ms=200)          # one more than the bound: the oldest goes
    assert len(pool.deferred_forwards) == DEFERRED_FORWARDS_PER_POOL_SLOT * 2
    assert pool.deferred_forwards[0][1] == bytes([1]) * 32
    asked = []
    assert pool.take_due_forwards(100, lambda: asked.append(1) or set()) == []   # none due yet: not even asked
    assert asked == []
    pool.committed(bytes([1]) * 32)                           # committed meanwhile: not forwarded
    in_flight = {bytes([2]) * 32}                             # in a block meanwhile: not forwarded
    assert pool.take_due_forwards(103, lambda: in_flight) == [b"r3"]
    assert [request_id for _, request_id in pool.deferred_forwards] == [bytes([9]) * 32]
