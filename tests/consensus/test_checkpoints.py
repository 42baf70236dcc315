"""Checkpoints (consensus/checkpoints.py) alone: a quorum of matching votes proves a checkpoint above
the stable one, each validator's votes are bounded, adopting forgets what is below."""

from consensus.checkpoints import CHECKPOINT_VOTES_PER_VALIDATOR_MAX, Checkpoints
from tests.support.replica_cluster import make_validators

HASH = b"h" * 32


def sig(voter: str) -> bytes:
    return voter.encode().ljust(64, b"s")


def test_a_quorum_of_matching_votes_proves_a_checkpoint():
    vset, _ = make_validators()   # 4 validators: a quorum is 3
    checkpoints = Checkpoints(vset)
    assert checkpoints.record_vote("v0", 8, HASH, sig("v0")) is None
    assert checkpoints.record_vote("v1", 8, b"x" * 32, sig("v1")) is None, "a different block does not count"
    assert checkpoints.record_vote("v2", 8, HASH, sig("v2")) is None
    certificate = checkpoints.record_vote("v3", 8, HASH, sig("v3"))
    assert certificate is not None and (certificate.height, certificate.header_hash) == (8, HASH)
    assert [s.validator for s in certificate.signatures] == ["v0", "v2", "v3"]
    assert checkpoints.record_vote("v3", 8, HASH, sig("v3")) is None, "a second vote of one voter is ignored"


def test_adopting_forgets_votes_below_and_nothing_at_or_below_the_stable_one_is_proved_again():
    vset, _ = make_validators()
    checkpoints = Checkpoints(vset)
    for voter in ("v0", "v1"):
        checkpoints.record_vote(voter, 8, HASH, sig(voter))
        checkpoints.record_vote(voter, 16, HASH, sig(voter))
    certificate = checkpoints.record_vote("v2", 16, HASH, sig("v2"))
    checkpoints.adopt(certificate)
    assert checkpoints.stable is certificate
    assert all(not votes for votes in checkpoints.votes.values()), "votes at or below 16 are forgotten"
    assert checkpoints.record_vote("v3", 8, HASH, sig("v3")) is None
    assert [vote.sender for vote in checkpoints.proof()] == ["v0", "v1", "v2"]


def test_votes_per_validator_are_bounded_oldest_first():
    vset, _ = make_validators()
    checkpoints = Checkpoints(vset)
    for height in range(1, CHECKPOINT_VOTES_PER_VALIDATOR_MAX + 3):
        checkpoints.record_vote("v1", height, HASH, sig("v1"))
    assert sorted(checkpoints.votes["v1"]) == list(range(3, CHECKPOINT_VOTES_PER_VALIDATOR_MAX + 3))


def test_our_checkpoint_is_resent_only_while_above_the_stable_one():
    vset, _ = make_validators()
    checkpoints = Checkpoints(vset)
    assert checkpoints.unstable_mine() is None and checkpoints.proof() == []
    checkpoints.signed(8, b"mine")
    assert checkpoints.unstable_mine() == b"mine"
    for voter in ("v0", "v1", "v2"):
        certificate = checkpoints.record_vote(voter, 8, HASH, sig(voter))
    checkpoints.adopt(certificate)
    assert checkpoints.unstable_mine() is None


def test_a_checkpoint_of_another_epoch_is_proved_by_that_epochs_quorum():
    """A replica behind an epoch switch judges a later epoch's checkpoint with that epoch's set: three
    votes are a quorum of its own four validators, not of the later epoch's seven."""
    four, _ = make_validators()
    seven, _ = make_validators(("HK", "HK", "HK", "HK", "CN", "CN", "CN"))
    checkpoints = Checkpoints(four)
    for voter in ("v0", "v1", "v2"):
        assert checkpoints.record_vote(voter, 40, HASH, sig(voter), seven) is None
    for voter in ("v4", "v5"):
        certificate = checkpoints.record_vote(voter, 40, HASH, sig(voter), seven)
    assert certificate is not None and len(certificate.signatures) == 5
