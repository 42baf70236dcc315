"""Epochs (issue 17): the change list's wire form, apply_changes and every reason code at its edge,
the primary order after a reconfiguration, activation_height, and the EpochSchedule.

Every reason code has a case that triggers it and one that just avoids it.
"""

import nacl.signing
import pytest
from hypothesis import given, settings, strategies as st

from consensus import codec
from consensus.epochs import (
    MARGIN_HEIGHTS_DEFAULT, RECONFIGURATION_CHANGES_MAX, VALIDATOR_ID_BYTES_MAX, VALIDATOR_ID_PATTERN, VALIDATORS_MAX, AddValidator, EpochConfig,
    EpochSchedule, EpochScheduleError, ReconfigurationError, RemoveValidator, RotateValidatorKey, SetMinSigners,
    activation_height, apply_changes, decode_changes, encode_changes, retired_after,
)
from consensus.validators import JURISDICTIONS, Validator, ValidatorSet, ValidatorSetError
from storage.genesis import NAME_PATTERN, name_bytes_max


def key(i: int) -> bytes:
    return nacl.signing.SigningKey(i.to_bytes(2, "big") * 16).verify_key.encode()


def build(jurisdictions, minimum=1):
    """Validators v0, v1, ... with keys key(0), key(1), ...; four validators unless told."""
    return ValidatorSet(tuple(Validator(f"v{i}", key(i), j) for i, j in enumerate(jurisdictions)), minimum)


FOUR = build(["HK", "HK", "CN", "CN"])   # n = 4, f = 1: each jurisdiction needs 1 + 1 = 2


def add(i: int, jurisdiction: str, *, id: str | None = None) -> AddValidator:
    return AddValidator(Validator(id or f"v{i}", key(i), jurisdiction))


def refused(reason: str, current: ValidatorSet, changes, **retired) -> ReconfigurationError:
    with pytest.raises(ReconfigurationError) as info:
        apply_changes(current, changes, **retired)
    assert info.value.reason == reason, str(info.value)
    return info.value


def ids(vset: ValidatorSet) -> list[str]:
    return [v.id for v in vset.validators]


# --- the error and the wire form ------------------------------------------------------------------

def test_the_error_carries_a_reason_and_a_message():
    error = ReconfigurationError("reconfigure-empty", "no changes")
    assert isinstance(error, ValueError)
    assert error.reason == "reconfigure-empty" and str(error) == "no changes"


def test_each_change_has_its_wire_form():
    assert add(9, "HK").to_wire() == {"op": "add-validator", "id": "v9", "public_key": key(9), "jurisdiction": "HK"}
    assert RemoveValidator("v1").to_wire() == {"op": "remove-validator", "id": "v1"}
    assert RotateValidatorKey("v1", key(7)).to_wire() == {
        "op": "rotate-validator-key", "id": "v1", "public_key": key(7)}
    assert SetMinSigners(2).to_wire() == {"op": "set-min-signers", "min_signers_per_jurisdiction": 2}
    changes = (add(9, "HK"), RemoveValidator("v1"), RotateValidatorKey("v2", key(7)), SetMinSigners(0))
    assert decode_changes(encode_changes(changes)) == changes


def test_decode_bounds_the_number_of_changes():
    one = {"op": "remove-validator", "id": "v1"}
    assert len(decode_changes([one] * RECONFIGURATION_CHANGES_MAX)) == RECONFIGURATION_CHANGES_MAX == 16
    with pytest.raises(ReconfigurationError) as info:
        decode_changes([one] * (RECONFIGURATION_CHANGES_MAX + 1))
    assert info.value.reason == "reconfigure-too-many-changes"
    with pytest.raises(ReconfigurationError) as info:
        decode_changes([])
    assert info.value.reason == "reconfigure-empty"


GOOD_ADD = {"op": "add-validator", "id": "v9", "public_key": key(9), "jurisdiction": "HK"}


@pytest.mark.parametrize("wire, field", [
    ({"op": "add-validator", "id": "v9", "public_key": key(9)}, "jurisdiction"),             # missing
    ({**GOOD_ADD, "extra": 1}, "extra"),                                                    # extra
    ({**GOOD_ADD, "op": "add-validators"}, "op"),                                           # unknown op
    ({**GOOD_ADD, "op": ["add-validator"]}, "op"),                                          # op not a str
    ({"id": "v9"}, "op"),                                                                   # no op
    ({**GOOD_ADD, "id": ""}, "id"),
    ({**GOOD_ADD, "id": b"v9"}, "id"),
    ({**GOOD_ADD, "id": "x" * (VALIDATOR_ID_BYTES_MAX + 1)}, "id"),
    ({**GOOD_ADD, "id": "é"}, "id"),                                                        # not the name rule
    ({**GOOD_ADD, "id": "-v9"}, "id"),                                                      # starts with '-'
    ({**GOOD_ADD, "id": "v 9"}, "id"),
    ({**GOOD_ADD, "id": "\ud800"}, "id"),                                                   # no UTF-8 form
    ({**GOOD_ADD, "public_key": key(9)[:31]}, "public_key"),
    ({**GOOD_ADD, "public_key": key(9) + b"\x00"}, "public_key"),
    ({**GOOD_ADD, "public_key": key(9).hex()}, "public_key"),
    ({**GOOD_ADD, "jurisdiction": "US"}, "jurisdiction"),
    ({"op": "rotate-validator-key", "id": "v1", "public_key": None}, "public_key"),
    ({"op": "remove-validator", "id": 7}, "id"),
    ({"op": "set-min-signers", "min_signers_per_jurisdiction": -1}, "min_signers_per_jurisdiction"),
    ({"op": "set-min-signers", "min_signers_per_jurisdiction": True}, "min_signers_per_jurisdiction"),
    ({"op": "set-min-signers", "min_signers_per_jurisdiction": "1"}, "min_signers_per_jurisdiction"),
])
def test_decode_refuses_a_malformed_change_naming_its_index_and_field(wire, field):
    with pytest.raises(ReconfigurationError) as info:
        decode_changes([{"op": "remove-validator", "id": "v1"}, wire])
    assert info.value.reason == "reconfigure-malformed"
    assert "change #1" in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("wire", [None, {"op": "remove-validator", "id": "v1"}, "changes", b"", 3, ({"x": 1},)])
def test_decode_refuses_what_is_not_a_list(wire):
    with pytest.raises(ReconfigurationError) as info:
        decode_changes(wire)
    assert info.value.reason == "reconfigure-malformed"


@pytest.mark.parametrize("item", [None, [], "remove-validator", 1])
def test_decode_refuses_an_item_that_is_not_a_map(item):
    with pytest.raises(ReconfigurationError, match="change #0: is not a map") as info:
        decode_changes([item])
    assert info.value.reason == "reconfigure-malformed"


def test_decode_accepts_each_field_at_its_edge():
    longest_id = "v" * VALIDATOR_ID_BYTES_MAX
    (change,) = decode_changes([{**GOOD_ADD, "id": longest_id}])
    assert change.validator.id == longest_id
    assert decode_changes([{"op": "remove-validator", "id": "x"}]) == (RemoveValidator("x"),)
    assert decode_changes([{"op": "set-min-signers", "min_signers_per_jurisdiction": 0}]) == (SetMinSigners(0),)


def test_a_change_checks_its_fields_when_built():
    with pytest.raises(ReconfigurationError, match="public_key") as info:
        AddValidator(Validator("v9", b"short", "HK"))
    assert info.value.reason == "reconfigure-malformed"
    with pytest.raises(ReconfigurationError, match="id"):
        RemoveValidator("")
    with pytest.raises(ReconfigurationError, match="min_signers"):
        SetMinSigners(False)


# --- apply_changes: every reason code, triggered and just avoided --------------------------------

def test_empty_and_too_many_changes():
    refused("reconfigure-empty", FOUR, [])
    # n = 20 after 16 adds, f = 6: each jurisdiction needs 7 and has 10.
    sixteen = [add(10 + i, JURISDICTIONS[i % 2]) for i in range(RECONFIGURATION_CHANGES_MAX)]
    assert apply_changes(FOUR, sixteen).n == 4 + RECONFIGURATION_CHANGES_MAX
    refused("reconfigure-too-many-changes", FOUR, sixteen + [add(40, "HK")])


def test_malformed_item_in_the_list():
    refused("reconfigure-malformed", FOUR, [{"op": "remove-validator", "id": "v1"}])


def test_unknown_validator():
    refused("reconfigure-unknown-validator", FOUR, [RemoveValidator("nobody")])
    refused("reconfigure-unknown-validator", FOUR, [RotateValidatorKey("nobody", key(9))])
    # Known at the start, gone at that point in the list.
    refused("reconfigure-unknown-validator", FOUR, [RemoveValidator("v0"), RotateValidatorKey("v0", key(9))])
    assert "v0" not in apply_changes(FOUR, [add(9, "HK"), RemoveValidator("v0")])


def test_duplicate_id():
    refused("reconfigure-duplicate-id", FOUR, [AddValidator(Validator("v0", key(9), "HK"))])
    assert "v9" in apply_changes(FOUR, [add(9, "HK")])


def test_duplicate_key():
    refused("reconfigure-duplicate-key", FOUR, [AddValidator(Validator("v9", key(1), "HK"))])
    refused("reconfigure-duplicate-key", FOUR, [RotateValidatorKey("v0", key(1))])
    refused("reconfigure-duplicate-key", FOUR, [RotateValidatorKey("v0", key(0))])     # its own current key
    refused("reconfigure-duplicate-key", FOUR, [add(9, "HK"), RotateValidatorKey("v0", key(9))])  # added earlier
    assert apply_changes(FOUR, [RotateValidatorKey("v0", key(9))]).get("v0").public_key == key(9)


def test_reused_id():
    refused("reconfigure-reused-id", FOUR, [add(9, "HK", id="old")], retired_ids=frozenset({"old"}))
    refused("reconfigure-reused-id", FOUR, [RemoveValidator("v0"), AddValidator(Validator("v0", key(9), "HK"))])
    assert "new" in apply_changes(FOUR, [add(9, "HK", id="new")], retired_ids=frozenset({"old"}))


def test_reused_key():
    refused("reconfigure-reused-key", FOUR, [add(9, "HK")], retired_keys=frozenset({key(9)}))
    refused("reconfigure-reused-key", FOUR, [RotateValidatorKey("v0", key(9))], retired_keys=frozenset({key(9)}))
    # Retired earlier in the same list: rotated out, or its holder removed.
    refused("reconfigure-reused-key", FOUR, [RotateValidatorKey("v0", key(9)), add(0, "HK", id="v9")])
    refused("reconfigure-reused-key", FOUR, [RotateValidatorKey("v0", key(9)), RotateValidatorKey("v1", key(0))])
    refused("reconfigure-reused-key", FOUR, [RemoveValidator("v0"), add(0, "HK", id="v9")])
    assert apply_changes(FOUR, [add(9, "HK")], retired_keys=frozenset({key(8)})).get("v9").public_key == key(9)


def balanced(n: int) -> ValidatorSet:
    return build([JURISDICTIONS[i % 2] for i in range(n)])


def test_too_many_validators_at_the_edge():
    start = balanced(96)                       # 48 + 48; at 100, f = 33 and each side needs 34
    assert apply_changes(start, [add(200 + i, JURISDICTIONS[i % 2]) for i in range(4)]).n == VALIDATORS_MAX == 100
    refused("reconfigure-too-many-validators", start, [add(200 + i, JURISDICTIONS[i % 2]) for i in range(5)])


def test_the_size_limit_holds_at_every_step():
    full = balanced(VALIDATORS_MAX)
    refused("reconfigure-too-many-validators", full, [add(200, "HK"), RemoveValidator("v0")])
    assert apply_changes(full, [RemoveValidator("v0"), add(200, "HK")]).n == VALIDATORS_MAX


def test_unsafe_at_the_edge_of_the_jurisdiction_rule():
    eight = build(["HK"] * 4 + ["CN"] * 4)     # n = 8, f = 2
    assert apply_changes(eight, [SetMinSigners(2)]).min_signers_per_jurisdiction == 2   # needs 4, has 4
    error = refused("reconfigure-unsafe", eight, [SetMinSigners(3)])                    # needs 5, has 4
    assert "jurisdiction CN has 4 validators but needs at least" in str(error)
    # n = 7, f = 2: CN at exactly 1 + 2 = 3 is accepted, at 2 refused.
    assert apply_changes(eight, [RemoveValidator("v7")]).jurisdiction_sizes == {"HK": 4, "CN": 3}
    refused("reconfigure-unsafe", eight, [RemoveValidator("v6"), RemoveValidator("v7"), add(9, "HK")])


def test_unsafe_keeps_the_validator_set_message():
    with pytest.raises(ValidatorSetError) as expected:
        ValidatorSet(())
    error = refused("reconfigure-unsafe", FOUR, [RemoveValidator(f"v{i}") for i in range(4)])
    assert str(error) == str(expected.value) == "validator set is empty"
    assert isinstance(error.__cause__, ValidatorSetError)


def test_intermediate_states_need_not_be_safe():
    """Through the empty set and back: only the final set is checked."""
    changes = [RemoveValidator(f"v{i}") for i in range(4)]
    changes += [add(10, "HK"), add(11, "HK"), add(12, "CN"), add(13, "CN")]
    assert ids(apply_changes(FOUR, changes)) == ["v10", "v11", "v12", "v13"]


def test_no_change():
    refused("reconfigure-no-change", FOUR, [SetMinSigners(1)])
    refused("reconfigure-no-change", FOUR, [add(9, "HK"), RemoveValidator("v9")])
    assert apply_changes(FOUR, [SetMinSigners(0)]).min_signers_per_jurisdiction == 0


# --- order: who is primary after a reconfiguration -------------------------------------------------

def test_order_after_remove_add_and_rotate():
    six = build(["HK", "HK", "HK", "CN", "CN", "CN"])
    new = apply_changes(six, [RemoveValidator("v1"), add(9, "HK"), RotateValidatorKey("v3", key(8))])
    assert ids(new) == ["v0", "v2", "v3", "v4", "v5", "v9"]
    assert new.validators[2] == Validator("v3", key(8), "CN")          # rotated in place
    assert [new.primary(view).id for view in range(7)] == ["v0", "v2", "v3", "v4", "v5", "v9", "v0"]


def test_changes_apply_in_order():
    new = apply_changes(FOUR, [add(9, "HK"), add(8, "CN"), RemoveValidator("v9"), add(7, "HK")])
    assert ids(new) == ["v0", "v1", "v2", "v3", "v8", "v7"]


def test_retired_after_names_what_left():
    new = apply_changes(FOUR, [RemoveValidator("v1"), RotateValidatorKey("v2", key(9)), add(8, "HK")])
    assert retired_after(FOUR, new) == (frozenset({"v1"}), frozenset({key(1), key(2)}))


# --- properties -------------------------------------------------------------------------------------

ID_POOL = [f"v{i}" for i in range(14)]
KEY_POOL = list(range(28))

changes_strategy = st.one_of(
    st.builds(lambda i, k, j: AddValidator(Validator(i, key(k), j)),
              st.sampled_from(ID_POOL), st.sampled_from(KEY_POOL), st.sampled_from(JURISDICTIONS)),
    st.builds(RemoveValidator, st.sampled_from(ID_POOL)),
    st.builds(lambda i, k: RotateValidatorKey(i, key(k)), st.sampled_from(ID_POOL), st.sampled_from(KEY_POOL)),
    st.builds(SetMinSigners, st.integers(0, 3)),
)


def changes_for(member_ids, fresh_ids, keys):
    """Changes that mostly name members to remove or rotate and newcomers to add, so many lists succeed;
    the pools still overlap (a fresh id may be retired, a key may be held or retired)."""
    return st.one_of(
        st.builds(lambda i, k, j: AddValidator(Validator(i, key(k), j)),
                  st.sampled_from(fresh_ids), st.sampled_from(keys), st.sampled_from(JURISDICTIONS)),
        st.builds(RemoveValidator, st.sampled_from(member_ids)),
        st.builds(lambda i, k: RotateValidatorKey(i, key(k)), st.sampled_from(member_ids), st.sampled_from(keys)),
        st.builds(SetMinSigners, st.integers(0, 2)),
    )


@st.composite
def reconfigurations(draw):
    jurisdictions = draw(st.lists(st.sampled_from(JURISDICTIONS), min_size=1, max_size=9))
    minimum = draw(st.integers(0, 1))
    try:
        current = build(jurisdictions, minimum)
    except ValidatorSetError:
        current = FOUR
    n = current.n
    retired_ids = frozenset(draw(st.lists(st.sampled_from(ID_POOL[n:]), max_size=2)))
    retired_keys = frozenset(key(k) for k in draw(st.lists(st.sampled_from(KEY_POOL[n:]), max_size=3)))
    changes = draw(st.lists(changes_for(ID_POOL[:n], ID_POOL[n:], KEY_POOL[n - 1:]), min_size=1, max_size=5))
    return current, changes, retired_ids, retired_keys


@settings(max_examples=200, deadline=None)
@given(reconfigurations())
def test_any_set_apply_changes_returns_is_safe_and_fresh(case):
    current, changes, retired_ids, retired_keys = case
    try:
        new = apply_changes(current, changes, retired_ids=retired_ids, retired_keys=retired_keys)
    except ReconfigurationError:
        return
    need = new.min_signers_per_jurisdiction + new.f
    assert all(count >= need for count in new.jurisdiction_sizes.values())
    assert ValidatorSet(new.validators, new.min_signers_per_jurisdiction) == new != current
    assert 1 <= new.n <= VALIDATORS_MAX
    assert not set(ids(new)) & retired_ids
    assert not {v.public_key for v in new.validators} & retired_keys
    gone_ids, gone_keys = retired_after(current, new)
    assert not set(ids(new)) & gone_ids and not {v.public_key for v in new.validators} & gone_keys


@settings(max_examples=200, deadline=None)
@given(st.lists(changes_strategy, min_size=1, max_size=RECONFIGURATION_CHANGES_MAX))
def test_encode_decode_round_trip(changes):
    wire = encode_changes(changes)
    assert decode_changes(wire) == tuple(changes)
    assert decode_changes(codec.unpack_canonical(codec.pack(wire))) == tuple(changes)


scalars = (st.none() | st.booleans() | st.integers(-(2 ** 64), 2 ** 64) | st.text(max_size=70)
           | st.binary(max_size=40) | st.sampled_from(list(JURISDICTIONS)) | st.just(key(1)))
msgpack_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(scalars, children, max_size=5),
    max_leaves=25,
)
# Maps close to a change, so the decoder's deeper checks are reached too.
FIELD_NAMES = ["op", "id", "public_key", "jurisdiction", "min_signers_per_jurisdiction", "extra"]
OPS = ["add-validator", "remove-validator", "rotate-validator-key", "set-min-signers", "nope"]
near_changes = st.dictionaries(st.sampled_from(FIELD_NAMES), st.sampled_from(OPS) | scalars, max_size=6)


@settings(max_examples=200, deadline=None)
@given(msgpack_like | st.lists(near_changes | msgpack_like, max_size=RECONFIGURATION_CHANGES_MAX + 2))
def test_decode_returns_changes_or_refuses_never_anything_else(wire):
    try:
        changes = decode_changes(wire)
    except ReconfigurationError as exc:
        assert exc.reason in {"reconfigure-malformed", "reconfigure-empty", "reconfigure-too-many-changes"}
        return
    assert encode_changes(changes) == wire


# --- activation_height ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10 ** 12), st.integers(1, 10_000))
def test_activation_height_is_the_margin_past_the_commit(commit, margin):
    assert activation_height(commit, margin) == commit + margin + 1


def test_activation_height_examples():
    assert activation_height(3, 16) == 20
    assert activation_height(1, 1) == 3
    assert activation_height(1, MARGIN_HEIGHTS_DEFAULT) == 1026


@pytest.mark.parametrize("arguments", [(0, 16), (1, 0), (-1, 16), (True, 16), (1, 16.0), (1, "16"), (None, 16)])
def test_activation_height_refuses_what_is_not_a_positive_int(arguments):
    with pytest.raises(ValueError):
        activation_height(*arguments)


# --- EpochConfig --------------------------------------------------------------------------------------

def test_epoch_config_wire_and_hash():
    config = EpochConfig(epoch=2, start_height=33, validators=FOUR, scheduled_at=16)
    wire = config.to_wire()
    assert wire == {"epoch": 2, "start_height": 33, "validators": FOUR.to_wire(), "scheduled_at": 16}
    assert EpochConfig.from_wire(wire) == config
    assert EpochConfig.from_wire(codec.unpack_canonical(codec.pack(wire))) == config
    assert config.hash() == codec.sha256(codec.pack(wire))
    assert config.hash() != EpochConfig(epoch=2, start_height=41, validators=FOUR, scheduled_at=16).hash()


def malformed_configs():
    good = EpochConfig(epoch=1, start_height=9, validators=FOUR).to_wire()
    validator = good["validators"]["validators"][0]
    vset = good["validators"]
    yield {**good, "extra": 0}
    yield {k: v for k, v in good.items() if k != "start_height"}
    yield {**good, "epoch": True}
    yield {**good, "epoch": -1}
    yield {**good, "start_height": 0}
    yield {**good, "scheduled_at": -1}
    yield {k: v for k, v in good.items() if k != "scheduled_at"}
    yield {**good, "validators": {k: v for k, v in vset.items() if k != "min_signers_per_jurisdiction"}}
    yield {**good, "validators": {**vset, "min_signers_per_jurisdiction": False}}
    yield {**good, "validators": {**vset, "validators": [{**validator, "extra": 1}] + vset["validators"][1:]}}
    yield {**good, "validators": {**vset, "validators": [{**validator, "id": "x" * 65}] + vset["validators"][1:]}}
    one_cn = vset["validators"][:2] + [{**vset["validators"][2], "jurisdiction": "HK"}] + vset["validators"][3:]
    yield {**good, "validators": {**vset, "validators": one_cn}}                         # unsafe: CN has 1
    yield {**good, "validators": {**vset, "validators": vset["validators"] + [validator]}}   # v0 twice
    yield {**good, "validators": {**vset, "validators": "v0"}}
    yield {**good, "validators": balanced(VALIDATORS_MAX + 1).to_wire()}
    yield [good]
    yield None


@pytest.mark.parametrize("wire", list(malformed_configs()))
def test_epoch_config_from_wire_is_strict(wire):
    with pytest.raises(EpochScheduleError):
        EpochConfig.from_wire(wire)


def test_epoch_config_holds_at_most_the_validator_limit():
    assert EpochConfig(0, 1, balanced(VALIDATORS_MAX)).validators.n == 100
    with pytest.raises(EpochScheduleError):
        EpochConfig(0, 1, balanced(VALIDATORS_MAX + 1))


# --- EpochSchedule ----------------------------------------------------------------------------------

MARGIN = 16   # a small chain margin, as in tests (the default is MARGIN_HEIGHTS_DEFAULT)


def two_epochs() -> EpochSchedule:
    """Epoch 1 from height 20 (committed at 3, margin 16); v0 rotated from key(0) to key(9)."""
    return EpochSchedule.genesis(FOUR, MARGIN).schedule(3, [RotateValidatorKey("v0", key(9))])


def test_genesis_is_epoch_zero_from_height_one():
    schedule = EpochSchedule.genesis(FOUR)
    assert schedule.latest == EpochConfig(0, 1, FOUR)
    assert schedule.margin_heights == MARGIN_HEIGHTS_DEFAULT
    assert schedule.config_at(1).epoch == 0 and schedule.config_at(10 ** 9).epoch == 0
    assert schedule.last_height_of(0) is None
    assert schedule.retired_ids == frozenset() and schedule.retired_keys == frozenset()


def test_config_at_across_epoch_boundaries():
    schedule = two_epochs().schedule(30, [RemoveValidator("v1"), add(11, "HK")])
    assert [config.start_height for config in schedule.epochs] == [1, 20, 47]
    assert [config.scheduled_at for config in schedule.epochs] == [0, 3, 30]
    assert [schedule.config_at(h).epoch for h in (1, 19, 20, 46, 47, 1000)] == [0, 0, 1, 1, 2, 2]
    assert schedule.last_height_of(0) == 19 and schedule.last_height_of(1) == 46
    assert schedule.last_height_of(2) is None
    assert schedule.config_at(19).validators == FOUR
    assert schedule.config_at(20).validators.get("v0").public_key == key(9)
    for bad in (0, -1, True, "1"):
        with pytest.raises(ValueError):
            schedule.config_at(bad)
    for bad in (3, -1, None):
        with pytest.raises(ValueError):
            schedule.last_height_of(bad)


def test_one_reconfiguration_at_a_time():
    schedule = two_epochs()                                  # epoch 1 starts at 20
    for pending_commit in (3, 19):
        with pytest.raises(ReconfigurationError) as info:
            schedule.schedule(pending_commit, [add(11, "HK")])
        assert info.value.reason == "reconfigure-pending"
    assert schedule.schedule(20, [add(11, "HK")]).latest.start_height == 37


def test_a_commit_before_a_closed_epoch_is_a_caller_bug():
    schedule = two_epochs().schedule(20, [add(11, "HK")])   # epochs start 1, 20, 37
    with pytest.raises(ValueError) as info:
        schedule.schedule(19, [add(12, "HK")])
    assert not isinstance(info.value, ReconfigurationError)
    with pytest.raises(ReconfigurationError) as pending:
        schedule.schedule(20, [add(12, "HK")])
    assert pending.value.reason == "reconfigure-pending"


def test_a_refused_reconfiguration_leaves_the_schedule_as_it_was():
    schedule = two_epochs()
    with pytest.raises(ReconfigurationError):
        schedule.schedule(30, [RemoveValidator("nobody")])
    assert schedule == two_epochs() and len(schedule.epochs) == 2


def test_retired_ids_and_keys_carry_across_reconfigurations():
    schedule = two_epochs()                                  # key(0) rotated out in epoch 1
    assert schedule.retired_keys == frozenset({key(0)}) and schedule.retired_ids == frozenset()
    schedule = schedule.schedule(30, [RemoveValidator("v1"), add(11, "HK")])
    assert schedule.retired_ids == frozenset({"v1"})
    assert schedule.retired_keys == frozenset({key(0), key(1)})
    for changes, reason in (([RotateValidatorKey("v0", key(0))], "reconfigure-reused-key"),
                            ([add(0, "HK", id="v20")], "reconfigure-reused-key"),
                            ([add(1, "HK", id="v21")], "reconfigure-reused-key"),
                            ([add(20, "HK", id="v1")], "reconfigure-reused-id")):
        with pytest.raises(ReconfigurationError) as info:
            schedule.schedule(50, changes)
        assert info.value.reason == reason


def test_schedule_wire_round_trip():
    schedule = two_epochs().schedule(30, [RemoveValidator("v1"), add(11, "HK")])
    wire = schedule.to_wire()
    assert wire == {"margin_heights": MARGIN, "epochs": [config.to_wire() for config in schedule.epochs]}
    again = EpochSchedule.from_wire(codec.unpack_canonical(codec.pack(wire)))
    assert again == schedule
    assert again.retired_ids == schedule.retired_ids and again.retired_keys == schedule.retired_keys


def malformed_schedules():
    wire = two_epochs().schedule(30, [RemoveValidator("v1"), add(11, "HK")]).to_wire()
    epochs = wire["epochs"]
    yield {**wire, "retired_ids": []}
    yield {}
    yield {"epochs": epochs}                                                     # no margin
    yield {**wire, "margin_heights": 0}
    yield {**wire, "epochs": []}
    yield {**wire, "epochs": epochs[0]}
    yield {**wire, "epochs": [epochs[0], epochs[2]]}                             # epoch 1 missing
    yield {**wire, "epochs": [epochs[1], epochs[2]]}                             # no epoch 0
    yield {**wire, "epochs": [{**epochs[0], "start_height": 2}]}                 # epoch 0 starts at 1
    yield {**wire, "epochs": [{**epochs[0], "scheduled_at": 1}]}                 # nothing scheduled epoch 0
    yield {**wire, "epochs": [epochs[0], {**epochs[1], "start_height": 1}]}     # not after epoch 0
    yield {**wire, "epochs": [epochs[0], epochs[1], {**epochs[2], "start_height": 48}]}   # not 30 + 16 + 1
    # Scheduled at 5, in epoch 0, while epoch 1 was pending (and 5 + 16 + 1 = 22 is consistent).
    yield {**wire, "epochs": [epochs[0], epochs[1], {**epochs[2], "scheduled_at": 5, "start_height": 22}]}
    yield {**wire, "epochs": [epochs[0], epochs[1], {**epochs[2], "epoch": 3}]}
    # Epoch 2 brings back key(0), rotated out in epoch 1.
    back = build(["HK", "HK", "CN", "CN"]).to_wire()
    yield {**wire, "epochs": [epochs[0], epochs[1], {**epochs[2], "validators": back}]}
    yield None


@pytest.mark.parametrize("wire", list(malformed_schedules()))
def test_schedule_from_wire_refuses_malformed_or_out_of_order(wire):
    with pytest.raises(EpochScheduleError):
        EpochSchedule.from_wire(wire)


def test_an_added_validator_id_follows_the_genesis_files_name_rule():
    """A validator added later is named as one in genesis is (storage/genesis.py NAME_PATTERN)."""
    assert VALIDATOR_ID_PATTERN.pattern == NAME_PATTERN.pattern
    assert VALIDATOR_ID_BYTES_MAX == name_bytes_max


# -- application data (the ledger's regulator keys) ------------------------------------------------

def _four():
    keys = [bytes([i + 1]) * 32 for i in range(4)]
    return ValidatorSet(tuple(Validator(f"v{i}", keys[i], "HK" if i < 2 else "CN") for i in range(4)))


def test_an_epoch_may_change_only_its_application_data():
    schedule = EpochSchedule.genesis(_four(), margin_heights=4)
    after = schedule.schedule(2, (), b"keys v2")
    assert after.latest.validators == schedule.latest.validators and after.latest.application == b"keys v2"
    assert after.latest.start_height == 2 + 4 + 1
    with pytest.raises(ReconfigurationError) as caught:
        after.schedule(8, (), b"keys v2")
    assert caught.value.reason == "reconfigure-no-change"
    with pytest.raises(ReconfigurationError) as caught:
        schedule.schedule(2, ())
    assert caught.value.reason == "reconfigure-no-change"
    # Validator changes without data keep the latest data.
    kept = after.schedule(8, (SetMinSigners(0),))
    assert kept.latest.application == b"keys v2"


def test_application_data_is_bounded_and_written_only_when_present():
    from consensus.epochs import APPLICATION_BYTES_MAX
    schedule = EpochSchedule.genesis(_four(), margin_heights=4)
    assert "application" not in schedule.latest.to_wire()
    at_limit = schedule.schedule(2, (), b"x" * APPLICATION_BYTES_MAX)
    assert EpochSchedule.from_wire(at_limit.to_wire()) == at_limit
    with pytest.raises(ReconfigurationError) as caught:
        schedule.schedule(2, (), b"x" * (APPLICATION_BYTES_MAX + 1))
    assert caught.value.reason == "reconfigure-malformed"
    wire = at_limit.to_wire()
    for bad in (b"", "text", None):
        wire["epochs"][1]["application"] = bad
        with pytest.raises(EpochScheduleError):
            EpochSchedule.from_wire(wire)
