"""Proofs from genesis alone across validator-set epochs (issue 17): a match or consistency proof
carries the reconfigure entries that scheduled each epoch, and the verifier walks them from genesis.

The chain (margin 1, so epoch e+1 starts two heights after the reconfiguration's block):

    h1 commit c0, c1      epoch 0
    h2 reconfigure 0: add hk-3                -> epoch 1 from h4
    h3 (empty)
    h4 commit c2          epoch 1
    h5 reconfigure 1: rotate hk-1's key       -> epoch 2 from h7
    h6 revoke c1
    h7 commit c3          epoch 2 (hk-1 signs with its new key)
    h8 (empty)
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus import codec
from consensus.block import BlockHeader
from consensus.epochs import VALIDATORS_MAX, AddValidator, RotateValidatorKey
from consensus.validators import Validator
from storage import proofs
from storage.entries import entry_bytes_max
from storage.genesis import Genesis
from storage.ledger import Ledger, LedgerError
from storage.proofs import verify_consistency_proof, verify_match_proof
from tests.support.storage_helpers import (
    Author, certify, commitment, flip_bit, key_from, make_world, next_block, reconfigure,
)

HK3_ADDRESSES = {"hk-3": {"p2p": "10.0.0.7:26601", "rpc": "10.0.0.7:26701"}}
NEW_HK1_KEY = key_from("validator hk-1, epoch 2")


def _build_chain(world, store, last_height: int = 8) -> None:
    author = Author(world, "hk-bureau")
    world.validator_keys["hk-3"] = key_from("validator hk-3")
    hk3 = Validator("hk-3", bytes(world.validator_keys["hk-3"].verify_key), "HK")
    blocks = [
        [author.commit(commitment(0)), author.commit(commitment(1))],
        [reconfigure(world, 0, [AddValidator(hk3)], HK3_ADDRESSES, nonce=1)],
        [],
        [author.commit(commitment(2))],
        [reconfigure(world, 1, [RotateValidatorKey("hk-1", bytes(NEW_HK1_KEY.verify_key))], nonce=2)],
        [author.revoke(commitment(1))],
        [author.commit(commitment(3))],
        [],
    ]
    for height, entries in enumerate(blocks[:last_height], 1):
        if height == 7:   # epoch 2 begins: hk-1 now signs with its rotated key
            world.validator_keys["hk-1"] = NEW_HK1_KEY
        outcomes = store.apply_block(next_block(world, store, entries))
        assert all(o.ok for o in outcomes), (height, outcomes)
    assert [store.header(h).epoch for h in range(1, last_height + 1)] == [0, 0, 0, 1, 1, 1, 2, 2][:last_height]


@pytest.fixture
def chain(tmp_path):
    """(world, store) of the chain in the module docstring."""
    world = make_world(epoch_margin_heights=1)
    store = Ledger.open(tmp_path / "store", world.genesis)
    _build_chain(world, store)
    yield world, store
    store.close()


def _genesis_only(world) -> Genesis:
    """The genesis file as a verifier reads it: JSON text in, a Genesis out, nothing else at hand."""
    return Genesis.from_json(world.genesis.to_json())


def _verify(world, proof, n, **kw):
    return verify_match_proof(proof, _genesis_only(world), commitment(n), now_ms=0, **kw)


def _recode(proof: bytes, change) -> bytes:
    value = codec.unpack_canonical(proof)
    change(value)
    return codec.pack(value)


# -- proofs that hold ------------------------------------------------------------------------------

def test_an_epoch_0_commitment_verifies_after_two_reconfigurations(chain):
    world, store = chain
    proof = store.match_proof(commitment(0))
    value = codec.unpack_canonical(proof)
    assert len(value["epochs"]) == 2 and value["status"]["header"]["epoch"] == 2
    assert [step["header"]["height"] for step in value["epochs"]] == [2, 5]
    assert [step["leaf_index"] for step in value["epochs"]] == list(store.epochs.entry_leaves)
    verdict = _verify(world, proof, 0)
    assert verdict.status == "match", verdict
    assert (verdict.details["height"], verdict.details["status_height"]) == (1, 8)


def test_an_epoch_2_commitment_and_an_epoch_1_revocation(chain):
    world, store = chain
    verdict = _verify(world, store.match_proof(commitment(3)), 3)
    assert verdict.status == "match" and verdict.details["height"] == 7, verdict
    verdict = _verify(world, store.match_proof(commitment(1)), 1)
    assert verdict.status == "revoked" and verdict.details["revoked_height"] == 6, verdict


def test_the_steps_are_kept_encoded_and_equal_a_fresh_build(chain):
    world, store = chain
    first = store.match_proof(commitment(2))
    store._epoch_steps_cache = None
    assert store.match_proof(commitment(2)) == first
    assert codec.unpack_canonical(first)["epochs"] == _wire(store.epoch_steps(8))


def test_epoch_steps_are_of_applied_blocks_only(chain):
    world, store = chain
    assert [len(store.epoch_steps(h)) for h in range(1, 9)] == [0, 0, 0, 1, 1, 1, 2, 2]
    for height in (0, 9, -1, "1"):
        with pytest.raises(LedgerError):
            store.epoch_steps(height)


def test_epoch_0_proofs_have_no_epochs_key(tmp_path):
    world = make_world(epoch_margin_heights=1)
    with Ledger.open(tmp_path / "store", world.genesis) as store:
        store.apply_block(next_block(world, store, [Author(world, "hk-bureau").commit(commitment(0))]))
        proof = store.match_proof(commitment(0))
        assert "epochs" not in codec.unpack_canonical(proof) and store.epoch_steps(1) == []
        assert _verify(world, proof, 0).status == "match"


# -- proofs that do not --------------------------------------------------------------------------

def _steps(change):
    return lambda v: change(v["epochs"])


def test_a_missing_or_misplaced_step_is_invalid(chain):
    world, store = chain
    good = store.match_proof(commitment(0))
    cases = [
        (_steps(lambda s: s.pop()), "status.epoch", "lacks the step"),          # walks to epoch 1 only
        # Step 2's block is of epoch 1, which genesis alone does not reach.
        (_steps(lambda s: s.pop(0)), "epochs.epoch", "lacks the step"),
        (_steps(lambda s: s.reverse()), "epochs.epoch", "lacks the step"),
        (lambda v: v.pop("epochs"), "status.epoch", "lacks the step"),
        (lambda v: v.__setitem__("epochs", []), "epochs.format", "1.."),
        (lambda v: v.__setitem__("epochs", None), "epochs.format", "1.."),
        (_steps(lambda s: s.append(s[1])), "epochs.reconfigure", "reconfigure-wrong-epoch"),
    ]
    for change, check, says in cases:
        verdict = _verify(world, _recode(good, change), 0)
        assert (verdict.status, verdict.check) == ("invalid", check), (check, verdict)
        assert says in verdict.message, verdict.message


def test_a_tampered_step_is_invalid(chain):
    world, store = chain
    good = store.match_proof(commitment(0))
    commit_entry = codec.unpack_canonical(good)["entry"]

    def step(index, key, value):
        return _steps(lambda s: s[index].__setitem__(key, value(s[index][key])))

    cases = [
        (step(0, "entry", lambda e: flip_bit(e, 60)), ("epochs.entry", "epochs.inclusion", "epochs.signature")),
        (step(1, "leaf_index", lambda i: i - 1), ("epochs.inclusion",)),
        (step(0, "inclusion_path", lambda p: [flip_bit(p[0])] + p[1:]), ("epochs.inclusion",)),
        (step(1, "certificate", lambda c: {**c, "signatures": c["signatures"][:-2]}), ("epochs.certificate",)),
        (step(1, "header", lambda h: {**h, "time_ms": h["time_ms"] + 1}), ("epochs.certificate",)),
        (step(1, "header", lambda h: {**h, "epoch": 2}), ("epochs.epoch",)),
        (step(0, "tree_size", lambda t: t + 1), ("epochs.tree-size",)),
        (_steps(lambda s: s[0].pop("certificate")), ("epochs.format",)),
        (_steps(lambda s: s[0].__setitem__("note", 1)), ("epochs.format",)),
    ]
    for change, checks in cases:
        verdict = _verify(world, _recode(good, change), 0)
        assert verdict.status == "invalid" and verdict.check in checks, (checks, verdict)
        assert "epoch step" in verdict.message
    # A genuine commit entry, proven, in place of the reconfigure: not a step.
    commit_step = {k: codec.unpack_canonical(good)[k] for k in proofs._PROVEN_FIELDS}
    verdict = _verify(world, _recode(good, _steps(lambda s: s.__setitem__(0, commit_step))), 0)
    assert (verdict.status, verdict.check) == ("invalid", "epochs.entry") and commit_entry


def test_a_step_beyond_the_status_epoch_is_refused(chain):
    """Steps run exactly to the highest epoch a header of the proof names (one proof, one form)."""
    world, store = chain
    extra = store.epoch_steps(8)[1]
    early = store.epoch_steps(4)             # a proof whose headers are all of epoch 1
    assert len(early) == 1
    h4 = {"header": store.header(4).to_wire(), "certificate": store.certificate(4).to_wire()}
    h1 = {"header": store.header(1).to_wire(), "certificate": store.certificate(1).to_wire()}
    proof = store.consistency_proof(store.header(1).tree_size, store.header(4).tree_size)
    genesis = _genesis_only(world)
    assert verify_consistency_proof(h1, h4, proof, genesis, _wire(early)).status == "match"
    verdict = verify_consistency_proof(h1, h4, proof, genesis, _wire(early + [extra]))
    assert (verdict.status, verdict.check) == ("invalid", "epochs.extra")


def test_a_pending_epoch_is_not_walked(tmp_path):
    """At height 6 epoch 2 is scheduled (height 5) but not started: the proof walks to epoch 1 only,
    and the step to epoch 2 added anyway is refused, though it is genuine."""
    world = make_world(epoch_margin_heights=1)
    with Ledger.open(tmp_path / "store", world.genesis) as store:
        _build_chain(world, store, last_height=6)
        assert len(store.epochs.entry_leaves) == 2
        proof = store.match_proof(commitment(2))
        assert len(codec.unpack_canonical(proof)["epochs"]) == 1
        assert _verify(world, proof, 2).status == "match"
        pending = store._proven_leaf(store.epochs.entry_leaves[1], store.epochs.schedule.epochs[2].scheduled_at)
        extra = _wire([pending])[0]
        verdict = _verify(world, _recode(proof, _steps(lambda s: s.append(extra))), 2)
        assert (verdict.status, verdict.check) == ("invalid", "epochs.extra"), verdict


def test_a_wrong_genesis_refuses_the_walk(chain):
    world, store = chain
    raw = world.genesis.to_dict()
    raw["governance"]["HK"]["keys"][0]["public_key"] = bytes(key_from("another regulator").verify_key).hex()
    verdict = verify_match_proof(store.match_proof(commitment(0)), Genesis.from_dict(raw), commitment(0), now_ms=0)
    assert (verdict.status, verdict.check) == ("invalid", "epochs.signature")


# -- consistency proofs -----------------------------------------------------------------------------

def _wire(steps):
    """Ledger.epoch_steps (headers and certificates as stored bytes) as a verifier decodes them."""
    return codec.unpack_canonical(proofs.encode_epoch_steps(steps))


def _certified(store, height):
    return {"header": store.header(height).to_wire(), "certificate": store.certificate(height).to_wire()}


def test_a_consistency_proof_across_epoch_boundaries(chain):
    world, store = chain
    genesis = _genesis_only(world)
    older, newer = _certified(store, 1), _certified(store, 8)
    proof = store.consistency_proof(store.header(1).tree_size, store.header(8).tree_size)
    steps = _wire(store.epoch_steps(8))
    verdict = verify_consistency_proof(older, newer, proof, genesis, steps)
    assert verdict.status == "match", verdict
    assert verify_consistency_proof(_certified(store, 4), newer, store.consistency_proof(
        store.header(4).tree_size, store.header(8).tree_size), genesis, steps).status == "match"
    # Without the steps (as before epochs), or with one missing, the epoch-2 head is refused.
    assert verify_consistency_proof(older, newer, proof, genesis).check == "newer.epoch"
    assert verify_consistency_proof(older, newer, proof, genesis, steps[:1]).check == "newer.epoch"
    assert verify_consistency_proof(older, newer, proof, genesis, steps[::-1]).check == "epochs.epoch"
    assert verify_consistency_proof(older, newer, proof[:-1], genesis, steps).check == "consistency"
    assert verify_consistency_proof(older, newer, proof, genesis, "junk").check == "epochs.format"
    assert verify_consistency_proof("junk", newer, proof, genesis, steps).status == "invalid"
    with pytest.raises(ValueError):
        verify_consistency_proof(older, newer, proof, None, steps)


# -- bounds -------------------------------------------------------------------------------------

def test_epoch_steps_max_edge(chain):
    """A list of epoch_steps_max steps is read (and walked: the first wrong step is named); one more
    is refused by the decoder's array bound (PROOF_LIMITS), before any step is looked at."""
    world, store = chain
    good = codec.unpack_canonical(store.match_proof(commitment(0)))
    step = good["epochs"][1]                 # epoch 1 -> 2, in a block of epoch 1: wrong as a first step
    good["epochs"] = [step] * proofs.epoch_steps_max
    verdict = _verify(world, codec.pack(good), 0)
    assert (verdict.status, verdict.check) == ("invalid", "epochs.epoch"), verdict
    good["epochs"].append(step)
    verdict = _verify(world, codec.pack(good), 0)
    assert (verdict.status, verdict.check) == ("invalid", "format"), verdict
    assert f"{proofs.epoch_steps_max + 1} exceeds" in verdict.message


def _worst_step(chain_id_bytes: int = 64) -> dict:
    """The largest step the format allows: every part at its own bound."""
    header = BlockHeader(chain_id="c" * chain_id_bytes, height=2**63 - 1, prev_hash=bytes(32), time_ms=2**63 - 1,
                         entries_hash=bytes(32), entry_count=2**63 - 1, tree_size=2**63 - 1, tree_root=bytes(32),
                         results_hash=bytes(32), validator_set_hash=bytes(32), epoch=2**63 - 1)
    signatures = [{"sig": bytes(64), "validator": f"{i:064d}"} for i in range(VALIDATORS_MAX)]
    return {"entry": bytes(entry_bytes_max), "leaf_index": 2**63 - 1, "tree_size": 2**63 - 1,
            "inclusion_path": [bytes(32)] * proofs.inclusion_path_hashes_max, "header": header.to_wire(),
            "certificate": {"view": 2**63 - 1, "height": 2**63 - 1, "header_hash": bytes(32),
                            "signatures": signatures}}


def test_the_worst_step_fits_epoch_step_bytes_max_and_the_longest_proof_fits_proof_bytes_max(chain):
    world, store = chain
    worst = len(codec.pack(_worst_step()))
    assert worst <= proofs.epoch_step_bytes_max < worst + 4096, worst
    proof = codec.unpack_canonical(store.match_proof(commitment(1)))   # revoked: every section
    base = len(codec.pack({**proof, "epochs": []}))
    assert base < proofs.proof_base_bytes_max // 8
    # epoch_steps_max worst steps on top: the array header grows by 2 (fixarray -> array 16).
    assert base + 2 + proofs.epoch_steps_max * worst <= proofs.proof_bytes_max
    assert proofs.PROOF_LIMITS.bytes_max == proofs.proof_bytes_max
    assert proofs.PROOF_LIMITS.array_len_max >= proofs.epoch_steps_max


def test_proof_bytes_max_edge_with_steps(chain):
    """A proof with steps of exactly proof_bytes_max bytes is read (its padding refused by name); one
    byte more is refused unread."""
    world, store = chain
    value = msgpack.unpackb(store.match_proof(commitment(0)))
    value["pad"] = b""
    value["pad"] = b"p" * (proofs.proof_bytes_max - len(msgpack.packb(value)))
    value["pad"] = value["pad"][:len(value["pad"]) - (len(msgpack.packb(value)) - proofs.proof_bytes_max)]
    assert len(msgpack.packb(value)) == proofs.proof_bytes_max
    verdict = _verify(world, msgpack.packb(value), 0)
    assert verdict.check == "format" and "unknown key(s) 'pad'" in verdict.message
    value["pad"] += b"p"
    verdict = _verify(world, msgpack.packb(value), 0)
    assert verdict.check == "format" and "exceeds" in verdict.message


def test_a_proof_verifies_from_the_genesis_file_alone(chain, tmp_path):
    """Written to disk and read back as a client would: the genesis file and the proof bytes."""
    world, store = chain
    (tmp_path / "genesis.json").write_text(world.genesis.to_json())
    (tmp_path / "proof.bin").write_bytes(store.match_proof(commitment(2)))
    genesis = Genesis.load(tmp_path / "genesis.json")
    verdict = verify_match_proof((tmp_path / "proof.bin").read_bytes(), genesis, commitment(2), now_ms=0)
    assert verdict.status == "match" and verdict.details["height"] == 4, verdict


# -- totality ---------------------------------------------------------------------------------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_STEP_PATHS = [("epochs",), ("epochs", 0), ("epochs", 1), ("epochs", 0, "entry"), ("epochs", 1, "leaf_index"),
               ("epochs", 0, "tree_size"), ("epochs", 1, "inclusion_path"), ("epochs", 0, "header"),
               ("epochs", 1, "certificate"), ("epochs", 1, "header", "epoch"), ("epochs", 0, "header", "height"),
               ("epochs", 1, "certificate", "signatures"), ("header", "epoch"), ("status", "header", "epoch")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_steps_never_raise(chain, data):
    """Any part of the epoch walk replaced by any msgpack value: a verdict (invalid), never an exception."""
    world, store = chain
    value = msgpack.unpackb(store.match_proof(commitment(0)))
    path = data.draw(st.sampled_from(_STEP_PATHS))
    target = value
    for key in path[:-1]:
        target = target[key]
    original = target[path[-1]] if isinstance(target, list) else target.get(path[-1])
    target[path[-1]] = data.draw(_values.filter(lambda v: v != original))
    verdict = _verify(world, msgpack.packb(value, use_bin_type=True), 0)
    assert verdict.status == "invalid", (path, verdict)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_bit_flip_in_the_steps_is_never_a_match(chain, data):
    world, store = chain
    good = store.match_proof(commitment(0))
    start = good.index(codec.pack("epochs"))
    end = good.index(codec.pack("header"), start)      # the `epochs` value ends where the next key begins
    bit = data.draw(st.integers(start * 8, end * 8 - 1))
    flipped = bytearray(good)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert _verify(world, bytes(flipped), 0).status == "invalid", bit


def test_a_proof_walks_a_change_of_regulator_keys_and_checks_later_governance_with_the_new_ones(tmp_path):
    """Epoch 1 changes only HK's regulator key (the set stays); a governance revoke signed with the new key
    in epoch 1 proves REVOKED from genesis alone, and the old HK key's signature on it would not verify."""
    from tests.support.storage_helpers import new_regulators

    world = make_world(epoch_margin_heights=1)
    store = Ledger.open(tmp_path / "store", world.genesis)
    try:
        author = Author(world, "hk-bureau")
        change = new_regulators(world, "HK", 7)
        store.apply_block(next_block(world, store, [author.commit(commitment(0))]))
        assert store.apply_block(next_block(world, store, [reconfigure(world, 0, [], governance=[change])]))[0].ok
        store.apply_block(next_block(world, store, []))
        del world.governance_keys["hk-regulator-1"]
        world.governance_keys.update(world.spare_governance_keys)
        from storage.entries import build_governance_revoke
        revoke = build_governance_revoke(sorted(world.governance_keys.items()), world.chain_id, commitment(0),
                                         "court order", 11, 1)
        block = next_block(world, store, [revoke])
        assert block.header.epoch == 1 and store.apply_block(block)[0].ok
        proof = store.match_proof(commitment(0))
        assert len(msgpack.unpackb(proof)["epochs"]) == 1
        verdict = _verify(world, proof, 0)
        assert verdict.status == "revoked" and verdict.details["revoked_by"] == "governance", verdict
        # The same proof with the old HK key's signature on the revoke: the entry no longer verifies.
        old = build_governance_revoke([("cn-regulator-1", world.governance_keys["cn-regulator-1"]),
                                       ("hk-regulator-1", key_from("governance hk-regulator-1"))],
                                      world.chain_id, commitment(0), "court order", 11, 1)
        forged = _recode(proof, lambda v: v["revocation"].__setitem__("entry", old))
        assert _verify(world, forged, 0).status == "invalid"
    finally:
        store.close()
