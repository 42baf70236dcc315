"""The body fetcher (consensus/bodies.py) alone: signers first, a different first signer per replica,
one request per peer per round, nothing at or below the stable checkpoint."""

from consensus.bodies import BodyFetcher
from consensus.messages import BLOCK_REQUEST_HASHES_MAX
from tests.support.replica_cluster import make_validators


def fetcher(me="v0"):
    vset, _ = make_validators()
    return BodyFetcher(vset, me, [v.id for v in vset.validators].index(me))


def test_the_certificate_signers_come_first_and_we_never_ask_ourselves():
    bodies = fetcher("v0")
    bodies.want(5, b"h", ("v2", "v0", "stranger"))
    fetch = bodies.fetching[b"h"]
    assert fetch.peers == ("v2", "v1", "v3") and fetch.height == 5


def test_replicas_start_at_different_signers():
    starts = set()
    for me in ("v0", "v1", "v2", "v3"):
        bodies = fetcher(me)
        bodies.want(5, b"h", tuple(v for v in ("v0", "v1", "v2", "v3") if v != me))
        starts.add(next(iter(bodies.plan_round(0))))
    assert len(starts) > 1


def test_a_round_asks_each_peer_once_per_body_and_rotates_on_the_next():
    bodies = fetcher("v0")
    bodies.want(5, b"h", ("v1", "v2"))
    first = bodies.plan_round(0)
    second = bodies.plan_round(0)
    assert list(first.values()) == [[b"h"]] and list(second.values()) == [[b"h"]]
    assert set(first) != set(second), "a peer that did not answer is not asked twice running"


def test_a_full_peer_passes_the_body_to_the_next_one():
    bodies = fetcher("v0")
    for i in range(BLOCK_REQUEST_HASHES_MAX + 1):
        bodies.want(10 + i, b"%032d" % i, ("v1",))
    round_ = bodies.plan_round(0)
    assert len(round_["v1"]) == BLOCK_REQUEST_HASHES_MAX
    assert sum(len(h) for h in round_.values()) == BLOCK_REQUEST_HASHES_MAX + 1


def test_bodies_at_or_below_the_stable_checkpoint_are_neither_asked_nor_kept():
    bodies = fetcher("v0")
    bodies.want(4, b"low", ("v1",))
    bodies.want(9, b"high", ("v1",))
    assert [h for hashes in bodies.plan_round(4).values() for h in hashes] == [b"high"]
    bodies.forget_through(4)
    assert set(bodies.fetching) == {b"high"}
    assert bodies.arrived(b"high").height == 9 and bodies.arrived(b"high") is None
    bodies.want(9, b"again", ("v1",))
    bodies.clear()
    assert len(bodies) == 0
