"""View-change state (consensus/view_change.py) alone: only newer VIEW-CHANGEs replace older ones,
the view f + 1 reached is joined, and a NEW-VIEW is built from a minimal quorum of the smallest."""

from consensus.messages import GENESIS_CHECKPOINT, NewView, ViewChange
from consensus.view_change import ViewChanges
from tests.support.replica_cluster import make_validators


def view_change(sender, view):
    return ViewChange(view, GENESIS_CHECKPOINT, (), sender, b"s" * 64)


def state():
    vset, _ = make_validators()   # n = 4, f = 1, quorum 3
    return ViewChanges(vset)


def test_only_a_newer_view_change_replaces_the_one_held():
    changes = state()
    assert changes.record("v1", view_change("v1", 2), b"two")
    assert not changes.record("v1", view_change("v1", 2), b"again")
    assert not changes.record("v1", view_change("v1", 1), b"older")
    assert changes.latest_bytes["v1"] == b"two"
    assert changes.record("v1", view_change("v1", 3), b"three")


def test_the_view_f_plus_one_validators_reached_is_joined():
    changes = state()
    changes.record("v1", view_change("v1", 5), b"5")
    assert changes.view_to_join(0) is None, "one validator alone may be faulty"
    changes.record("v2", view_change("v2", 3), b"3")
    assert changes.view_to_join(0) == 3, "the lowest view that f + 1 reached"
    assert changes.view_to_join(3) is None


def test_a_new_view_needs_a_quorum_for_exactly_that_view_and_keeps_the_smallest():
    changes = state()
    changes.record("v1", view_change("v1", 1), b"x" * 50)
    changes.record("v2", view_change("v2", 1), b"x" * 10)
    changes.record("v3", view_change("v3", 2), b"x" * 5)
    assert changes.quorum_joined(1) and not changes.quorum_joined(2)
    assert changes.new_view_quorum(1) is None, "v3 is in view 2: only two for view 1"
    changes.own("v0", view_change("v0", 1), b"x" * 20)
    quorum = changes.new_view_quorum(1)
    assert sorted(vc.sender for vc in quorum) == ["v0", "v1", "v2"]
    changes.record("v3", view_change("v3", 3), b"x")
    changes.latest["v3"] = view_change("v3", 1)
    changes.latest_bytes["v3"] = b"x"
    assert sorted(vc.sender for vc in changes.new_view_quorum(1)) == ["v0", "v2", "v3"], "the largest is left out"


def test_a_second_new_view_that_chose_other_blocks_contradicts_the_first():
    changes = state()
    first = NewView(1, (), (b"a" * 32,), "v1", b"s" * 64)
    assert not changes.contradicts(first), "no NEW-VIEW held yet"
    changes.entered(first, b"first")
    assert not changes.contradicts(first)
    assert changes.contradicts(NewView(1, (), (b"b" * 32,), "v1", b"s" * 64))
    changes.entered(None, None)
    assert changes.new_view is None and changes.new_view_bytes is None
