"""consensus.host: the one way to carry out Readies, driven with a scripted replica.

The daemon and the simulator both perform these steps; here each step is
recorded, with every call the host makes into the replica, and the whole
order is checked.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from consensus import host
from consensus.ready import Outbound, Ready


class ScriptedReplica:
    """on_persisted returns the scripted follow-ups in turn (then empty Readies), noting each call."""

    def __init__(self, journal: list, follow_ups=()):
        self.journal = journal
        self.follow_ups = list(follow_ups)

    def on_persisted(self) -> Ready:
        self.journal.append(("on_persisted",))
        return self.follow_ups.pop(0) if self.follow_ups else Ready()


def block(height: int):
    return SimpleNamespace(header=SimpleNamespace(height=height), entries=(), certificate=None)


def run(replica, readies, applied_height=0, **options):
    """Drive the generator to its end; the steps in order, with the replica's calls among them."""
    journal = replica.journal
    steps = host.carry_out(replica, readies, applied_height, **options)
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        journal.append(step)


def test_merged_readies_share_one_write_and_keep_the_one_at_a_time_order():
    journal = []
    follow_up = Ready(persist=[(b"k3", b"v3")], messages=[Outbound("cn-1", b"released-1")])
    replica = ScriptedReplica(journal, [follow_up, Ready(messages=[Outbound(None, b"released-2")]),
                                        Ready(messages=[Outbound(None, b"released-3")])])
    first = Ready(persist=[(b"k1", b"v1"), (b"k2", None)], rejected=[("hk-2", "wrong-view")])
    second = Ready(messages=[Outbound("hk-2", b"plain")], serve_catch_up=[("hk-2", 1, 3)])
    third = Ready(persist=[(b"k1", b"v1-again")])
    assert run(replica, [first, second, third]) == 0
    assert journal == [
        host.WriteBatch(((b"k1", b"v1"), (b"k2", None), (b"k1", b"v1-again"))),   # one write, input order
        ("on_persisted",),                          # first's ack: its held messages come back as a follow-up
        host.Report((), (("hk-2", "wrong-view"),)),
        host.WriteBatch(((b"k3", b"v3"),)),         # the follow-up persists again before it sends
        ("on_persisted",),
        host.Send((Outbound("cn-1", b"released-1"),)),
        host.Send((Outbound(None, b"released-2"),)),
        host.Send((Outbound("hk-2", b"plain"),)),   # second persisted nothing: no ack
        host.ServeCatchUp((("hk-2", 1, 3),)),
        ("on_persisted",),                          # third
        host.Send((Outbound(None, b"released-3"),)),
    ]


def test_the_block_after_the_applied_height_rides_in_the_write_and_is_not_applied_twice():
    journal = []
    replica = ScriptedReplica(journal)
    ready_a = Ready(persist=[(b"k", b"v")], committed=[block(4), block(5)])
    ready_b = Ready(committed=[block(6)])
    assert run(replica, [ready_a, ready_b], applied_height=4) == 6
    assert journal == [
        host.WriteBatch(((b"k", b"v"),), block(5)),   # 4 is applied already; 5 is next
        ("on_persisted",),
        host.Apply(block(6)),
    ]


def test_a_block_from_a_later_ready_rides_in_the_write_but_a_gap_is_refused():
    journal = []
    replica = ScriptedReplica(journal)
    assert run(replica, [Ready(persist=[(b"k", b"v")]), Ready(committed=[block(1)])], applied_height=0) == 1
    assert journal == [host.WriteBatch(((b"k", b"v"),), block(1)), ("on_persisted",)]
    journal.clear()
    with pytest.raises(ValueError, match="committed block 3 does not follow the applied height 0"):
        run(replica, [Ready(persist=[(b"k", b"v")], committed=[block(3)])], applied_height=0)
    assert journal == [host.WriteBatch(((b"k", b"v"),)), ("on_persisted",)]   # 3 is not next: not in the write


def test_nothing_persisted_means_no_write_and_no_acknowledgement():
    journal = []
    replica = ScriptedReplica(journal)
    assert run(replica, [Ready(messages=[Outbound(None, b"m")]), Ready()], applied_height=7) == 7
    assert journal == [host.Send((Outbound(None, b"m"),))]


def test_send_before_persist_sends_every_message_first_and_the_released_ones_after_the_ack():
    journal = []
    replica = ScriptedReplica(journal, [Ready(messages=[Outbound(None, b"vote")])])
    run(replica, [Ready(persist=[(b"k", b"v")], messages=[Outbound("a", b"m1")]),
                  Ready(messages=[Outbound("b", b"m2")])], send_before_persist=True)
    assert journal == [
        host.Send((Outbound("a", b"m1"), Outbound("b", b"m2"))),
        host.WriteBatch(((b"k", b"v"),)),
        ("on_persisted",),
        host.Send((Outbound(None, b"vote"),)),   # released by the ack: never before the write
    ]


def test_a_replica_that_keeps_asking_to_persist_is_stopped():
    journal = []
    endless = [Ready(persist=[(b"k", b"v")]) for _ in range(host.FOLLOW_UPS_MAX + 5)]
    replica = ScriptedReplica(journal, endless)
    with pytest.raises(host.FollowUpsExceeded, match="kept returning more to persist"):
        run(replica, [Ready(persist=[(b"k", b"v")])])
    assert journal.count(("on_persisted",)) == host.FOLLOW_UPS_MAX + 1
    assert sum(isinstance(step, host.WriteBatch) for step in journal) == host.FOLLOW_UPS_MAX + 1


def test_a_host_that_stops_between_steps_leaves_the_rest_undone():
    """A crash between steps: the generator is dropped, and what it has not yielded never happens
    (in particular, no acknowledgement for a write that was not performed)."""
    journal = []
    replica = ScriptedReplica(journal, [Ready(messages=[Outbound(None, b"vote")])])
    steps = host.carry_out(replica, [Ready(persist=[(b"k", b"v")], messages=[])], 0)
    assert isinstance(next(steps), host.WriteBatch)
    steps.close()
    assert journal == []


def test_a_write_batch_applies_its_changes_in_order_and_none_deletes():
    kv = {b"a": b"1", b"gone": b"x"}
    host.WriteBatch(((b"b", b"2"), (b"gone", None), (b"a", b"3"), (b"missing", None))).apply_changes_to(kv)
    assert kv == {b"a": b"3", b"b": b"2"}
