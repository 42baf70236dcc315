"""Issue 15 at the library: match proofs decode exactly as docs/PROTOCOL.md §5 says (each
malleated copy of a valid proof refused naming its check), the status age bound (stale), and the
cross-check of two nodes' answers on revocation."""

from __future__ import annotations

import pytest

from node import client as node_client
from storage import proofs
from storage.proofs import revocation_disagreement, verify_match_proof
from tests.support.storage_helpers import commitment
from tests.support.proof_cases import CASES, MINUTE_MS, build_proofs, commitment_of

HEAD_TIME_MS = 1_767_225_600_000      # 2026-01-01T00:00:00Z: the status header's time in every proof


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from tests.support.storage_helpers import make_world

    return build_proofs(make_world(), tmp_path_factory.mktemp("proofs"), HEAD_TIME_MS)


def test_the_unchanged_proofs_verify(made):
    """The control: every case below starts from a proof that verifies."""
    genesis = made.world.genesis
    assert verify_match_proof(made.match, genesis, commitment(1), now_ms=HEAD_TIME_MS).status == "match"
    assert verify_match_proof(made.revoked, genesis, commitment(2), now_ms=HEAD_TIME_MS).status == "revoked"
    assert verify_match_proof(made.before_revoke, genesis, commitment(2), now_ms=HEAD_TIME_MS).status == "match"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_malleated_proof_is_refused_naming_its_check(made, case):
    proof = case.make(made)
    base = {"match": made.match, "revoked": made.revoked, "other_kind": made.other_kind}[case.base]
    assert proof != base or case.base == "other_kind"   # that one is genuine: genesis lacks its kind
    verdict = verify_match_proof(proof, made.world.genesis, commitment_of(case), now_ms=HEAD_TIME_MS)
    assert (verdict.status, verdict.check) == ("invalid", case.check), verdict
    assert case.says in verdict.message and not verdict.valid, verdict.message


def test_a_kind_is_refused_only_where_genesis_lacks_it(made):
    """The kind case fails for the kind alone: under a genesis that lists it, the same proof holds."""
    raw = made.world.genesis.to_dict()
    raw["entry_kinds"] = [*made.world.genesis.entry_kinds, "mortgage"]
    from storage.genesis import Genesis

    verdict = verify_match_proof(made.other_kind, Genesis.from_dict(raw), commitment(3), now_ms=HEAD_TIME_MS)
    assert verdict.status == "match" and verdict.details["kind"] == "mortgage"
    verdict = verify_match_proof(made.other_kind, made.world.genesis, commitment(3), now_ms=HEAD_TIME_MS)
    assert "mortgage" in verdict.message


def test_a_decoded_map_is_held_to_the_same_rules(made):
    """verify_match_proof also takes the decoded map: a float or an extra key there is refused too."""
    from consensus import codec

    value = codec.unpack_canonical(made.match)
    assert verify_match_proof(dict(value), made.world.genesis, commitment(1), now_ms=HEAD_TIME_MS).status == "match"
    verdict = verify_match_proof({**value, "version": 2.0}, made.world.genesis, commitment(1), now_ms=HEAD_TIME_MS)
    assert (verdict.status, verdict.check) == ("invalid", "format")
    verdict = verify_match_proof({**value, "extra": 1}, made.world.genesis, commitment(1), now_ms=HEAD_TIME_MS)
    assert (verdict.status, verdict.check) == ("invalid", "format") and "'extra'" in verdict.message


# -- freshness ------------------------------------------------------------------------------------

def _verify(made, proof, commitment_, now_ms, max_minutes):
    return verify_match_proof(proof, made.world.genesis, commitment_, now_ms=now_ms,
                              max_status_age_ms=None if max_minutes is None else max_minutes * MINUTE_MS)


def test_a_match_older_than_the_bound_is_stale(made):
    at_bound = _verify(made, made.match, commitment(1), HEAD_TIME_MS + 10 * MINUTE_MS, 10)
    assert at_bound.status == "match" and at_bound.details["status_age_ms"] == 10 * MINUTE_MS
    past = _verify(made, made.match, commitment(1), HEAD_TIME_MS + 10 * MINUTE_MS + 1, 10)
    assert (past.status, past.check, past.valid) == ("stale", "status.age", True)
    assert past.message == "status at height 2 is 10 minutes old"
    assert past.details["status_height"] == 2 and past.details["status_age_ms"] == 10 * MINUTE_MS + 1
    old = _verify(made, made.match, commitment(1), HEAD_TIME_MS + 25 * MINUTE_MS + 59_999, 10)
    assert old.message == "status at height 2 is 25 minutes old"     # whole minutes, rounded down
    days = _verify(made, made.match, commitment(1), HEAD_TIME_MS + 3 * 24 * 60 * MINUTE_MS, 24 * 60)
    assert days.status == "stale" and days.message == f"status at height 2 is {3 * 24 * 60} minutes old"


def test_no_bound_means_any_age_and_a_future_status_is_fresh(made):
    assert _verify(made, made.match, commitment(1), HEAD_TIME_MS + 10**12, None).status == "match"
    early = _verify(made, made.match, commitment(1), HEAD_TIME_MS - 5 * MINUTE_MS, 1)
    assert early.status == "match" and early.details["status_age_ms"] == 0


def test_revoked_and_expired_are_final_whatever_the_status_age(made):
    verdict = _verify(made, made.revoked, commitment(2), HEAD_TIME_MS + 100 * MINUTE_MS, 10)
    assert verdict.status == "revoked" and verdict.details["status_age_ms"] == 100 * MINUTE_MS


def test_a_stale_proof_is_still_checked_first(made):
    """The age bound never turns an invalid proof into stale: the proof is verified before its age."""
    broken = CASES[0].make(made)
    verdict = verify_match_proof(broken, made.world.genesis, commitment(1), now_ms=HEAD_TIME_MS + 10**9,
                                 max_status_age_ms=MINUTE_MS)
    assert (verdict.status, verdict.check) == ("invalid", "canonical")


@pytest.mark.parametrize("bad", [0, -MINUTE_MS, True, 1.5, "10m"])
def test_a_bad_bound_is_the_callers_error(made, bad):
    with pytest.raises(ValueError, match="max_status_age_ms"):
        verify_match_proof(made.match, made.world.genesis, commitment(1), max_status_age_ms=bad)


def test_the_client_wrapper_passes_the_bound(made):
    verdict = node_client.verify_match_proof(made.match, made.world.genesis, commitment(1),
                                             now_ms=HEAD_TIME_MS + 11 * MINUTE_MS, max_status_age_ms=10 * MINUTE_MS)
    assert verdict.status == proofs.STATUS_STALE and verdict.message == "status at height 2 is 11 minutes old"
    default = node_client.verify_match_proof(made.match, made.world.genesis, commitment(1),
                                             now_ms=HEAD_TIME_MS + 11 * MINUTE_MS)
    assert default.status == "match"


# -- two nodes ------------------------------------------------------------------------------------

def test_nodes_that_disagree_on_revocation_are_named(made):
    genesis, now = made.world.genesis, HEAD_TIME_MS
    revoked = verify_match_proof(made.revoked, genesis, commitment(2), now_ms=now)
    kept = verify_match_proof(made.before_revoke, genesis, commitment(2), now_ms=now)
    assert (revoked.status, kept.status) == ("revoked", "match")     # both proofs are genuine
    message = revocation_disagreement([("node-a:1", revoked), ("node-b:2", kept)])
    assert message is not None
    assert "node-a:1" in message and "revoked at height 2" in message
    assert "node-b:2" in message and "not revoked as of height 1" in message
    # In either order, and when the one that says "not revoked" is stale.
    assert revocation_disagreement([("b", kept), ("a", revoked)]) is not None
    stale = verify_match_proof(made.before_revoke, genesis, commitment(2), now_ms=now + 60 * MINUTE_MS,
                               max_status_age_ms=MINUTE_MS)
    assert stale.status == "stale" and revocation_disagreement([("a", revoked), ("b", stale)]) is not None


def test_nodes_that_agree_are_not_a_disagreement(made):
    genesis, now = made.world.genesis, HEAD_TIME_MS
    revoked = verify_match_proof(made.revoked, genesis, commitment(2), now_ms=now)
    match = verify_match_proof(made.match, genesis, commitment(1), now_ms=now)
    assert revocation_disagreement([("a", revoked), ("b", revoked)]) is None
    assert revocation_disagreement([("a", match), ("b", match)]) is None
