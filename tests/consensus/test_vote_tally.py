"""The vote tally (consensus/vote_tally.py) alone: the first vote of a voter is kept and a conflicting
one comes back as evidence, COMMITs of later views replace earlier ones, and a quorum is found."""

from consensus.vote_tally import VoteTally
from tests.support.replica_cluster import make_validators

A, B = b"a" * 32, b"b" * 32


def tally():
    vset, _ = make_validators()   # n = 4: a quorum is 3
    return VoteTally(vset)


def test_a_second_prepare_for_another_block_is_evidence_and_changes_nothing():
    votes = tally()
    assert votes.add_prepare("v1", 3, A, b"sig1", b"msg1") is None
    assert votes.add_prepare("v1", 3, A, b"sig1", b"again") is None, "a duplicate is not evidence"
    assert votes.add_prepare("v1", 3, B, b"sig2", b"msg2") == b"msg1"
    assert votes.prepare_signers(3, A) == ["v1"] and votes.prepare_signers(3, B) == []
    votes.add_own_prepare("v0", 3, A, b"own", b"own-msg")
    votes.add_own_prepare("v0", 3, B, b"other", b"other-msg")   # the first of ours stays
    assert votes.prepare_signers(3, A) == ["v1", "v0"] and votes.prepare_signature(3, "v0") == b"own"


def test_commits_of_a_later_view_replace_earlier_ones_and_conflicts_in_one_view_are_evidence():
    votes = tally()
    assert votes.add_commit("v1", 3, 0, A, b"s", b"m0") == (True, None)
    assert votes.add_commit("v1", 3, 0, A, b"s", b"dup") == (False, None)
    assert votes.add_commit("v1", 3, 0, B, b"s", b"m0b") == (False, b"m0")
    assert votes.add_commit("v1", 3, 1, B, b"s1", b"m1") == (True, None), "a later view may commit another block"
    assert votes.add_commit("v1", 3, 0, A, b"s", b"old") == (False, None)
    assert votes.commit_signature(3, "v1") == b"s1"


def test_a_commit_quorum_is_of_one_view_and_one_block():
    votes = tally()
    votes.add_commit("v1", 5, 1, A, b"s", b"m")
    votes.add_commit("v2", 5, 1, A, b"s", b"m")
    votes.add_commit("v3", 5, 2, A, b"s", b"m")
    assert votes.commit_quorum(5) is None, "three votes, but not in one view"
    votes.add_own_commit("v0", 5, 1, A, b"s", b"m")
    assert votes.commit_quorum(5) == (1, A, ["v0", "v1", "v2"])
    assert set(votes.committed_hashes()) == {A}


def test_forgetting():
    votes = tally()
    for height in (1, 2, 3):
        votes.add_prepare("v1", height, A, b"s", b"m")
        votes.add_commit("v1", height, 0, A, b"s", b"m")
    votes.forget_height(3)
    votes.forget_through(1)
    assert set(votes.prepares) == {2} and set(votes.commits) == {2}
    votes.forget_prepares()
    assert votes.prepares == {} and set(votes.commits) == {2}
    votes.forget_commits(2)
    assert votes.commit_quorum(2) is None
