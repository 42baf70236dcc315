"""The ledger's reconfigure entry (storage/reconfiguration.py): format, rule, epochs followed by the
store, and the consensus hook agreeing with execution. Real LevelDB, real signatures."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus import codec
from consensus.epochs import (
    AddValidator, EpochChange, EpochConfig, RECONFIGURATION_CHANGES_MAX, ReconfigurationError, RemoveValidator, RotateValidatorKey, SetMinSigners,
)
from consensus.validators import Validator
from storage.application import LedgerApplication
from storage.entries import EntryError, build_admit, build_reconfigure, decode_entry, make_body, sign_entry, validate_entry
from storage.genesis import Participant
from storage.ledger import Ledger, LedgerError
from storage.reconfiguration import LedgerEpochs, address_bytes_max, decode_reconfiguration
from tests.support.storage_helpers import (
    Author, commitment, held_twice, key_from, make_world, new_regulators, next_block, reconfigure,
)

MARGIN = 2
NEW_KEY = key_from("validator hk-3")
ADD_HK3 = AddValidator(Validator("hk-3", NEW_KEY.verify_key.encode(), "HK"))
HK3_ADDRESSES = {"hk-3": {"p2p": "127.0.0.1:26610", "rpc": "127.0.0.1:26710"}}


@pytest.fixture
def world():
    return make_world(epoch_margin_heights=MARGIN)


@pytest.fixture
def store(world, tmp_path):
    ledger = Ledger.open(tmp_path / "store", world.genesis)
    yield ledger
    ledger.close()


def add_hk3(world, epoch=0, nonce=1):
    return reconfigure(world, epoch, [ADD_HK3], HK3_ADDRESSES, nonce=nonce)


def apply(world, store, entries):
    return store.apply_block(next_block(world, store, entries))


def fill_to(world, store, height):
    author = Author(world, "cn-bureau")
    while store.height() < height:
        apply(world, store, [author.commit(commitment(10_000 + store.height()))])


# -- the entry ------------------------------------------------------------------------------------

def test_a_reconfigure_entry_round_trips_with_its_addresses(world):
    entry = validate_entry(add_hk3(world), world.genesis)
    assert entry.type == "reconfigure" and entry.is_governance
    assert entry.fields["changes"].epoch == 0
    assert entry.fields["changes"].changes == (ADD_HK3,)
    assert entry.fields["changes"].addresses == HK3_ADDRESSES


def _body_with_changes(world, changes, epoch=0, **extra):
    body = {"type": "reconfigure", "chain_id": world.chain_id, "author": "governance", "nonce": 1, "time_ms": 1,
            "epoch": epoch, "changes": changes, **extra}
    return sign_entry(codec.pack(body), world.chain_id, sorted(world.governance_keys.items()))


@pytest.mark.parametrize("changes, reason", [
    ([], "reconfigure-empty"),
    ([{"op": "remove-validator", "id": "hk-1"}] * (RECONFIGURATION_CHANGES_MAX + 1), "reconfigure-too-many-changes"),
    ([{"op": "retire-everyone"}], "reconfigure-malformed"),
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "127.0.0.1:1"}], "reconfigure-malformed"),                      # no rpc address
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "127.0.0.1:1", "rpc": "no port"}], "reconfigure-malformed"),
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "127.0.0.1:70000", "rpc": "h:1"}], "reconfigure-malformed"),
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "h" * address_bytes_max + ":1", "rpc": "h:1"}], "reconfigure-malformed"),
    ([{"op": "remove-validator", "id": "hk-1", "p2p": "h:1"}], "reconfigure-malformed"),   # addresses only on add
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "h\x00st:1", "rpc": "h:1"}], "reconfigure-malformed"),       # a control character in the host
    ([{"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
       "p2p": "h\u0430st:1", "rpc": "h:1"}], "reconfigure-malformed"),     # a Cyrillic letter posing as Latin
    ([{"op": "rotate-validator-key", "id": "hk-1", "public_key": b"\x01" * 31}], "reconfigure-malformed"),
    ("remove hk-1", "reconfigure-malformed"),
])
def test_a_malformed_change_list_is_refused_with_its_reason(world, changes, reason):
    with pytest.raises(EntryError) as caught:
        validate_entry(_body_with_changes(world, changes), world.genesis)
    assert caught.value.reason == reason


def test_an_address_at_its_byte_limit_is_accepted_and_one_past_refused():
    host = "h" * (address_bytes_max - 6)       # + ":65535" = address_bytes_max bytes
    change = {"op": "add-validator", "id": "hk-3", "public_key": b"\x01" * 32, "jurisdiction": "HK",
              "p2p": host + ":65535", "rpc": "h:1"}
    assert decode_reconfiguration(0, [change]).addresses["hk-3"]["p2p"] == host + ":65535"
    with pytest.raises(ReconfigurationError):
        decode_reconfiguration(0, [dict(change, p2p="h" + host + ":65535")])


@pytest.mark.parametrize("epoch", [-1, 2**63, "0", None, True])
def test_the_epoch_must_be_a_plain_integer(world, epoch):
    with pytest.raises(EntryError) as caught:
        validate_entry(_body_with_changes(world, [{"op": "remove-validator", "id": "hk-1"}], epoch=epoch), world.genesis)
    assert caught.value.reason in ("reconfigure-malformed", "entry-malformed")


def test_a_reconfigure_must_be_governance_and_meet_every_threshold(world):
    body = make_body("reconfigure", world.chain_id, "hk-bureau", 1, 1, epoch=0,
                     changes=[{"op": "remove-validator", "id": "hk-1"}])
    with pytest.raises(EntryError) as caught:
        decode_entry(sign_entry(body, world.chain_id, [("hk-bureau", world.participant_keys["hk-bureau"])]))
    assert caught.value.reason == "entry-malformed"
    hk_only = build_reconfigure([("hk-regulator-1", world.governance_keys["hk-regulator-1"])], world.chain_id, 0,
                                [ADD_HK3], HK3_ADDRESSES, 1, 1)
    with pytest.raises(EntryError) as caught:
        validate_entry(hk_only, world.genesis)
    assert caught.value.reason == "governance-threshold"


# -- applying it ----------------------------------------------------------------------------------

def test_an_accepted_reconfiguration_schedules_the_next_epoch_at_height_plus_margin_plus_one(world, store):
    author = Author(world, "hk-bureau")
    outcomes = apply(world, store, [author.commit(commitment(1)), add_hk3(world)])
    assert [o.ok for o in outcomes] == [True, True]
    epochs = store.epochs
    assert epochs.latest_epoch == 1 and epochs.entry_leaves == (1,)
    assert epochs.schedule.latest.start_height == 1 + MARGIN + 1 and epochs.schedule.latest.scheduled_at == 1
    assert epochs.schedule.latest.validators.get("hk-3").public_key == NEW_KEY.verify_key.encode()
    assert epochs.addresses["hk-3"] == HK3_ADDRESSES["hk-3"] and "cn-2" in epochs.addresses
    world.validator_keys["hk-3"] = NEW_KEY
    fill_to(world, store, 1 + MARGIN)
    block = next_block(world, store, [author.commit(commitment(2))])
    assert block.header.epoch == 1 and len(block.certificate.signatures) == 5
    assert store.apply_block(block)[0].ok


def test_the_block_of_a_new_epoch_must_name_it_and_carry_its_sets_certificate(world, store):
    apply(world, store, [add_hk3(world)])
    fill_to(world, store, 1 + MARGIN)
    author = Author(world, "hk-bureau")
    world.validator_keys["hk-3"] = NEW_KEY
    with pytest.raises(LedgerError, match="epoch 1"):
        store.apply_block(next_block(world, store, [author.commit(commitment(1))], epoch=0))
    world.validator_keys["hk-3"] = key_from("not hk-3's key")
    with pytest.raises(LedgerError, match="certificate"):
        store.apply_block(next_block(world, store, [author.commit(commitment(1))]))
    assert store.height() == 1 + MARGIN
    world.validator_keys["hk-3"] = NEW_KEY
    assert store.apply_block(next_block(world, store, [author.commit(commitment(1))]))[0].ok


@pytest.mark.parametrize("changes, reason", [
    ([SetMinSigners(2)], "reconfigure-unsafe"),                       # each side would need 2 + f = 3
    ([RemoveValidator("hk-9")], "reconfigure-unknown-validator"),
    ([AddValidator(Validator("hk-1", b"\x02" * 32, "HK"))], "reconfigure-duplicate-id"),
    ([RotateValidatorKey("hk-1", key_from("validator cn-1").verify_key.encode())], "reconfigure-duplicate-key"),
    ([SetMinSigners(1)], "reconfigure-no-change"),
])
def test_a_refused_reconfiguration_is_an_outcome_and_changes_nothing(world, store, changes, reason):
    addresses = {c.validator.id: HK3_ADDRESSES["hk-3"] for c in changes if isinstance(c, AddValidator)}
    outcomes = apply(world, store, [reconfigure(world, 0, changes, addresses)])
    assert outcomes[0].reason == reason
    assert store.epochs == LedgerEpochs.genesis(world.genesis) and store.tree_size() == 0


def test_one_reconfiguration_at_a_time(world, store):
    first, second = add_hk3(world), reconfigure(world, 0, [SetMinSigners(0)], nonce=2)
    outcomes = apply(world, store, [first, second])   # the first closes epoch 0 for changes
    assert [o.reason for o in outcomes] == [None, "reconfigure-wrong-epoch"]
    # While epoch 1 is pending, one naming it is pending, one naming epoch 0 is for a closed epoch.
    outcomes = apply(world, store, [reconfigure(world, 1, [SetMinSigners(0)], nonce=3), first])
    assert [o.reason for o in outcomes] == ["reconfigure-pending", "reconfigure-wrong-epoch"]
    fill_to(world, store, 1 + MARGIN)
    world.validator_keys["hk-3"] = NEW_KEY
    outcomes = apply(world, store, [reconfigure(world, 1, [SetMinSigners(0)], nonce=3)])
    assert outcomes[0].ok and store.epochs.latest_epoch == 2


def test_only_the_blocks_first_candidate_is_judged(world, store):
    """A refused candidate still uses up the block's one judgement: the consensus hook sees only the
    first candidate, so execution must too."""
    unsafe = reconfigure(world, 0, [SetMinSigners(2)], nonce=1)
    outcomes = apply(world, store, [reconfigure(world, 5, [SetMinSigners(0)], nonce=9), unsafe, add_hk3(world, nonce=2)])
    assert [o.reason for o in outcomes] == ["reconfigure-wrong-epoch", "reconfigure-unsafe", "reconfigure-pending"]
    assert store.epochs.latest_epoch == 0


def test_the_epoch_is_the_replay_guard_not_the_nonce(world, store):
    entry = add_hk3(world, nonce=7)
    assert store.check_applied(entry) is None
    apply(world, store, [entry])
    assert store.check_applied(entry) == "reconfigure-wrong-epoch"
    # The governance nonce 7 was not spent: an admit with it applies.
    participant = Participant("hk-lender", "HK", "bank", key_from("participant hk-lender").verify_key.encode())
    admit = build_admit(sorted(world.governance_keys.items()), world.chain_id, participant, 7, 1)
    assert apply(world, store, [admit])[0].ok


def test_the_epochs_survive_a_reopen(world, tmp_path):
    path = tmp_path / "store"
    store = Ledger.open(path, world.genesis)
    apply(world, store, [add_hk3(world)])
    before = store.epochs
    store.close()
    store = Ledger.open(path, world.genesis)
    try:
        assert store.epochs == before and store.epochs.latest_epoch == 1
    finally:
        store.close()


def test_a_store_whose_epochs_are_unreadable_is_refused_clearly(world, tmp_path):
    import plyvel
    from storage import keys

    path = tmp_path / "store"
    Ledger.open(path, world.genesis).close()
    db = plyvel.DB(str(path))
    db.put(keys.META_EPOCHS, b"\xc1")
    db.close()
    with pytest.raises(LedgerError, match="epoch schedule is unreadable"):
        Ledger.open(path, world.genesis)


# -- the consensus hook agrees with execution -------------------------------------------------------

def _entry_kinds(world):
    author = Author(world, "hk-bureau")
    hk_only = [("hk-regulator-1", world.governance_keys["hk-regulator-1"])]
    return {
        "add": lambda n: add_hk3(world, nonce=n),
        "unsafe": lambda n: reconfigure(world, 0, [SetMinSigners(2)], nonce=n),
        "remove": lambda n: reconfigure(world, 0, [RemoveValidator("hk-2")], nonce=n),
        "min0": lambda n: reconfigure(world, 0, [SetMinSigners(0)], nonce=n),
        "wrong-epoch": lambda n: reconfigure(world, 3, [SetMinSigners(0)], nonce=n),
        "under-signed": lambda n: build_reconfigure(hk_only, world.chain_id, 0, [SetMinSigners(0)], {}, n, 1),
        "commit": lambda n: author.commit(commitment(n)),
        "garbage": lambda n: b"\x92reconfigure" + bytes([n % 256]),
        "rotate-regulator": lambda n: reconfigure(world, 0, [], governance=[new_regulators(world, "HK", n)], nonce=n),
        "regulator-held-twice": lambda n: reconfigure(
            world, 0, [], governance=[held_twice(world)], nonce=n),
        "rotate-both": lambda n: reconfigure(world, 0, [SetMinSigners(0)], governance=[new_regulators(world, "CN", n)],
                                             nonce=n),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["add", "unsafe", "remove", "rotate-regulator", "regulator-held-twice", "rotate-both", "min0", "wrong-epoch", "under-signed", "commit", "garbage"]),
                max_size=6))
def test_the_hook_names_the_changes_execution_applies(tmp_path_factory, kinds):
    world = make_world(epoch_margin_heights=MARGIN)
    store = Ledger.open(tmp_path_factory.mktemp("hook") / "store", world.genesis)
    try:
        makers = _entry_kinds(world)
        entries = [makers[kind](n + 1) for n, kind in enumerate(kinds)]
        replica_schedule = store.epochs.schedule
        found = LedgerApplication(store).reconfiguration(1, entries, replica_schedule.latest)
        if found is not None:
            try:
                replica_schedule = replica_schedule.schedule(1, found.changes, found.application)
            except ReconfigurationError:
                pass
        apply(world, store, entries)
        assert store.epochs.schedule == replica_schedule
    finally:
        store.close()


def test_the_hook_ignores_a_block_without_reconfigure_cheaply(world, store):
    author = Author(world, "hk-bureau")
    epoch_0 = store.epochs.schedule.latest
    epoch_1 = EpochConfig(1, 5, epoch_0.validators, 3)
    assert LedgerApplication(store).reconfiguration(1, [author.commit(commitment(1))], epoch_0) is None
    assert LedgerApplication(store).reconfiguration(1, [add_hk3(world)], epoch_0) == EpochChange((ADD_HK3,))
    assert LedgerApplication(store).reconfiguration(1, [add_hk3(world)], epoch_1) is None


# -- regulator keys -------------------------------------------------------------------------------

def test_replacing_a_regulator_key_opens_an_epoch_with_the_same_validators(world, store):
    change = new_regulators(world, "HK", 1)
    outcomes = apply(world, store, [reconfigure(world, 0, [], governance=[change])])
    assert outcomes[0].ok
    latest = store.epochs.schedule.latest
    assert latest.epoch == 1 and latest.validators == world.genesis.validator_set and latest.application
    assert store.epochs.governance_at(1 + MARGIN).keys["HK"] == world.genesis.governance.keys["HK"]
    assert store.epochs.governance_at(2 + MARGIN).keys["HK"] == change.keys
    assert store.epochs.governance_at(2 + MARGIN).keys["CN"] == world.genesis.governance.keys["CN"]


def test_after_the_switch_only_the_new_regulator_keys_sign(world, store):
    change = new_regulators(world, "HK", 1)
    apply(world, store, [reconfigure(world, 0, [], governance=[change])])
    old_signed = reconfigure(world, 1, [SetMinSigners(0)], nonce=2)      # old HK key: accepted until the switch
    assert store.check_entry(old_signed) is None
    fill_to(world, store, 1 + MARGIN)
    # From the new epoch on, the door and execution judge with the new keys: the old HK key is unknown.
    assert store.check_entry(old_signed) == "unknown-governance-key"
    assert apply(world, store, [old_signed])[0].reason == "unknown-governance-key"
    del world.governance_keys["hk-regulator-1"]
    world.governance_keys.update(world.spare_governance_keys)
    assert apply(world, store, [reconfigure(world, 1, [SetMinSigners(0)], nonce=3)])[0].ok


def test_a_signature_under_a_regulator_ids_old_key_fails_at_execution(world, store):
    """An id keeps its name but not its key: a signature made with the id's old key, checked before the
    switch, is checked again when it commits, with the key the id has then."""
    from storage.genesis import GovernanceKey
    from storage.reconfiguration import SetGovernance

    new_key = key_from("hk-regulator-1, next")
    same_id = SetGovernance("HK", (GovernanceKey("hk-regulator-1", new_key.verify_key.encode(), "HK"),), 1)
    apply(world, store, [reconfigure(world, 0, [], governance=[same_id])])
    old_signed = reconfigure(world, 1, [SetMinSigners(0)], nonce=2)
    fill_to(world, store, 1 + MARGIN)
    assert apply(world, store, [old_signed])[0].reason == "bad-signature"
    world.governance_keys["hk-regulator-1"] = new_key
    assert apply(world, store, [reconfigure(world, 1, [SetMinSigners(0)], nonce=3)])[0].ok


@pytest.mark.parametrize("make, reason", [
    (lambda world: [held_twice(world)], "reconfigure-duplicate-key"),
    (lambda world: [], "reconfigure-empty"),
])
def test_a_bad_regulator_change_is_refused_with_its_reason(world, store, make, reason):
    changes = make(world)
    if not changes:
        with pytest.raises(EntryError) as caught:
            validate_entry(reconfigure(world, 0, [], governance=changes), world.genesis)
        assert caught.value.reason == reason
        return
    assert apply(world, store, [reconfigure(world, 0, [], governance=changes)])[0].reason == reason
    assert store.epochs.latest_epoch == 0


@pytest.mark.parametrize("wire, message", [
    ({"op": "set-governance", "jurisdiction": "MO", "keys": [{"id": "x", "public_key": b"\x01" * 32}],
      "threshold": 1}, "jurisdiction"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [], "threshold": 1}, "keys"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x", "public_key": b"\x01" * 32}],
      "threshold": 2}, "threshold"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x", "public_key": b"\x01" * 32}],
      "threshold": True}, "threshold"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x y", "public_key": b"\x01" * 32}],
      "threshold": 1}, "each key"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x", "public_key": b"\x01" * 32}] * 17,
      "threshold": 1}, "keys"),
    ({"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x", "public_key": b"\x01" * 32}],
      "threshold": 1, "extra": 1}, "fields"),
])
def test_a_malformed_regulator_change_is_refused(wire, message):
    with pytest.raises(ReconfigurationError, match=message) as caught:
        decode_reconfiguration(0, [wire])
    assert caught.value.reason == "reconfigure-malformed"
    twice = {"op": "set-governance", "jurisdiction": "HK", "keys": [{"id": "x", "public_key": b"\x01" * 32}],
             "threshold": 1}
    with pytest.raises(ReconfigurationError, match="at most once"):
        decode_reconfiguration(0, [twice, twice])


def test_the_regulator_keys_survive_a_reopen(world, tmp_path):
    path = tmp_path / "store"
    store = Ledger.open(path, world.genesis)
    apply(world, store, [reconfigure(world, 0, [], governance=[new_regulators(world, "CN", 4)])])
    before = store.epochs.governance_at(10)
    store.close()
    store = Ledger.open(path, world.genesis)
    try:
        assert store.epochs.governance_at(10) == before and before.keys["CN"][0].id == "cn-regulator-new-4"
    finally:
        store.close()


def test_while_new_regulator_keys_are_scheduled_the_stateless_check_takes_either(world, store):
    """A block near the epoch's start may hold an entry signed by either set of keys: the stateless check
    takes both, execution decides by the height. A participant's bad signature stays bad."""
    apply(world, store, [reconfigure(world, 0, [], governance=[new_regulators(world, "HK", 1)])])
    old_signed = reconfigure(world, 1, [SetMinSigners(0)], nonce=2)
    new_keys = dict(world.governance_keys)
    del new_keys["hk-regulator-1"]
    new_keys.update(world.spare_governance_keys)
    world.governance_keys, old_keys = new_keys, world.governance_keys
    new_signed = reconfigure(world, 1, [SetMinSigners(0)], nonce=3)
    world.governance_keys = old_keys
    assert store.check_entry(old_signed) is None and store.check_entry(new_signed) is None
    assert apply(world, store, [new_signed])[0].reason == "unknown-governance-key"   # still epoch 0 here
    forged = bytearray(Author(world, "hk-bureau").commit(commitment(9)))
    forged[-5] ^= 1
    assert store.check_entry(bytes(forged)) == "bad-signature"
