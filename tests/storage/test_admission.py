"""Ledger.check_admission (issue 15): the door check gives, against the applied state, the reason
apply gives for the same entry, for every author rule and the nonce; it writes nothing, and unlike
check_applied its answer may go back to None (an author admitted later)."""

from __future__ import annotations

import os

from storage import entries
from storage.genesis import GOVERNANCE_AUTHOR, Participant
from storage.ledger import Ledger
from tests.support.storage_helpers import Author, commitment, key_from, make_world, next_block


def apply(world, ledger, entry_list):
    block = next_block(world, ledger, entry_list)
    return [o.reason if not o.ok else o.leaf_index for o in ledger.apply_block(block)]


def regulators(world):
    return list(world.governance_keys.items())


def store_contents(ledger):
    with ledger._db.iterator() as it:
        return dict(it)


def assert_door_agrees_with_apply(world, ledger, entry_list, expected):
    """Each entry's door verdict is `expected`; applying them (each alone in its own block, so no entry
    changes the state another is judged on) gives the same reasons, and None at the door is accepted."""
    door = [ledger.check_admission(e) for e in entry_list]
    assert door == expected
    for data, reason in zip(entry_list, expected):
        (result,) = apply(world, ledger, [data])
        assert result == reason if reason is not None else isinstance(result, int), (reason, result)


def test_each_author_rule_gives_applys_reason(world, ledger):
    stranger_key = key_from("mallory")
    stranger = entries.build_commit(stranger_key, "mallory", world.chain_id, commitment(1), "credit-report", "HK", 1, 1)
    impostor = entries.build_commit(stranger_key, "hk-bureau", world.chain_id, commitment(2), "credit-report", "HK", 1, 1)
    other_chain = Author(make_world(chain_id="elsewhere"), "hk-bureau").commit(commitment(3))
    unknown_gov_key = entries.build_governance_revoke(
        regulators(world) + [("rogue-regulator", key_from("rogue"))], world.chain_id, commitment(4), "x", 1, 1)
    under_threshold = entries.build_suspend(regulators(world)[:1], world.chain_id, "hk-bank", 2, 1)
    assert_door_agrees_with_apply(
        world, ledger, [stranger, impostor, other_chain, unknown_gov_key, under_threshold, b"\x00garbage"],
        ["unknown-author", "key-mismatch", "wrong-chain", "unknown-governance-key", "governance-threshold",
         "entry-malformed"])
    assert ledger.tree_size() == 0


def test_suspended_author_and_reuse_of_nonces(world, ledger):
    bank = Author(world, "hk-bank")
    first = bank.commit(commitment(1))
    assert ledger.check_admission(first) is None
    assert apply(world, ledger, [first]) == [0]
    # Same nonce, other bytes: replayed-nonce as apply says; the very bytes again: already-applied
    # (apply says replayed-nonce; the daemon answers already-committed).
    same_nonce = entries.build_commit(bank.key, "hk-bank", world.chain_id, commitment(2), "credit-report", "HK",
                                      bank.nonce, 5)
    assert ledger.check_admission(first) == "already-applied"
    assert_door_agrees_with_apply(world, ledger, [same_nonce], ["replayed-nonce"])
    suspend = entries.build_suspend(regulators(world), world.chain_id, "hk-bank", 1, 1)
    assert_door_agrees_with_apply(world, ledger, [suspend], [None])
    late = bank.commit(commitment(3))
    assert_door_agrees_with_apply(world, ledger, [late], ["suspended"])
    # The governance author's nonces are checked at the door too.
    suspend_again = entries.build_suspend(regulators(world), world.chain_id, "hk-bank", 1, 2)
    assert_door_agrees_with_apply(world, ledger, [suspend_again], ["replayed-nonce"])


def test_the_door_opens_once_the_author_is_admitted_unlike_the_pool_check(world, ledger):
    """check_admission is not monotonic (why it is not the core's pool check): refused before the admit
    applies, None after. check_applied, the pool's check, says None throughout (it never goes back)."""
    newcomer_key = key_from("sz-bank")
    early = entries.build_commit(newcomer_key, "sz-bank", world.chain_id, commitment(1), "credit-score", "CN", 1, 1)
    assert ledger.check_admission(early) == "unknown-author"
    assert ledger.check_applied(early) is None
    admit = entries.build_admit(regulators(world), world.chain_id,
                                Participant("sz-bank", "CN", "bank", bytes(newcomer_key.verify_key)), 1, 1)
    assert apply(world, ledger, [admit]) == [0]
    assert ledger.check_admission(early) is None
    assert apply(world, ledger, [early]) == [1]


def test_admission_names_the_author_and_writes_nothing(world, ledger, tmp_path):
    bank = Author(world, "hk-bank")
    apply(world, ledger, [bank.commit(commitment(1))])
    gov = entries.build_suspend(regulators(world), world.chain_id, "cn-bureau", 1, 1)
    stranger = entries.build_commit(key_from("mallory"), "mallory", world.chain_id, commitment(2),
                                    "credit-report", "HK", 1, 1)
    before = store_contents(ledger)
    assert ledger.admission(bank.commit(commitment(3))) == ("hk-bank", None)
    assert ledger.admission(gov) == (GOVERNANCE_AUTHOR, None)
    assert ledger.admission(stranger) == ("mallory", "unknown-author")
    assert store_contents(ledger) == before
    # Reopened from disk, the same verdicts (nothing was only in memory).
    ledger.close()
    with Ledger.open(ledger.path, world.genesis) as reopened:
        assert reopened.admission(stranger) == ("mallory", "unknown-author")
        assert reopened.admission(gov) == (GOVERNANCE_AUTHOR, None)


def test_hostile_bytes_are_refused_with_applys_reason_not_an_exception(world, ledger):
    """Random bytes, truncations of a real entry, an oversized entry, deep nesting and non-bytes give a
    reason code (the one apply gives for the bytes ones), never an exception."""
    real = Author(world, "hk-bank").commit(commitment(1))
    hostile = [os.urandom(n) for n in (0, 1, 7, 64, 512)]
    hostile += [real[:n] for n in (1, len(real) // 2, len(real) - 1)]
    hostile += [b"\x91" * 2000 + b"\xc0", real + b"\x00" * (entries.entry_bytes_max + 1)]
    door = [ledger.check_admission(data) for data in hostile]
    assert all(isinstance(reason, str) for reason in door), door
    assert apply(world, ledger, hostile) == door
    for not_bytes in ("text", ["list"], None, 7):
        assert ledger.admission(not_bytes) == (None, "entry-malformed")
