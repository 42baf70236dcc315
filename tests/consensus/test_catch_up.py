"""Catch-up state (consensus/catch_up.py) alone: the target only rises, peers are asked in turn and
the one that delivered first, the probe rotates, and the pacer allows one action per interval."""

from consensus.catch_up import CatchUp, Pacer, catch_up_request
from consensus.messages import CATCH_UP_BLOCKS_MAX


def test_a_request_covers_one_range_after_the_applied_height_or_up_to_the_target():
    assert catch_up_request(10) == catch_up_request(10, 10_000)
    request = catch_up_request(10)
    assert (request.from_height, request.to_height) == (11, 10 + CATCH_UP_BLOCKS_MAX)
    request = catch_up_request(10, 12)
    assert (request.from_height, request.to_height) == (11, 12)


def test_the_target_only_rises_and_brings_its_own_peers():
    catch_up = CatchUp()
    assert not catch_up.behind(0)
    catch_up.raise_target(20, ["v2", "v1", "v2"])
    assert (catch_up.target, catch_up.peers) == (20, ["v1", "v2"]) and catch_up.behind(19)
    catch_up.raise_target(15, ["v3"])
    assert (catch_up.target, catch_up.peers) == (20, ["v1", "v2"]), "a lower target changes nothing"
    assert not catch_up.behind(20)


def test_peers_are_asked_in_turn_and_the_one_that_delivered_first():
    catch_up = CatchUp()
    catch_up.raise_target(20, ["v1", "v2", "v3"])
    assert [catch_up.next_peer() for _ in range(4)] == ["v1", "v2", "v3", "v1"]
    catch_up.progressed_with("v3")
    assert catch_up.next_peer() == "v3"
    catch_up.progressed_with("v9")   # not one of ours: no change
    assert catch_up.next_peer() == "v1"


def test_the_probe_rotates_over_the_others():
    catch_up = CatchUp()
    assert catch_up.probe_peer([]) is None
    assert [catch_up.probe_peer(["a", "b"]) for _ in range(3)] == ["a", "b", "a"]


def test_the_pacer_allows_one_action_per_key_per_interval():
    pacer = Pacer()
    assert pacer.allow("request:v1", 10, now_ms=100)
    assert not pacer.allow("request:v1", 10, now_ms=109)
    assert pacer.allow("request:v2", 10, now_ms=109), "another peer is not limited"
    assert pacer.allow("request:v1", 10, now_ms=110)
