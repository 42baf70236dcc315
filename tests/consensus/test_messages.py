"""Consensus messages at the boundary: round-trips, and every mutation of every field is rejected, never raised.

Builds one correctly signed sample of every message type, then (with
hypothesis) replaces any value anywhere inside it, deletes or adds a key, or
sends arbitrary bytes, and checks that `decode_message` either raises
MessageError with a reason code or, for the unsigned kinds whose fields carry
no signature, returns a well-typed message. Nothing else may escape.
"""

from __future__ import annotations

import copy
import dataclasses

import nacl.signing
import pytest
from hypothesis import given, settings, strategies as st

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash
from consensus.messages import (
    BLOCK_REQUEST_BYTES_MAX, BLOCK_REQUEST_HASHES_MAX, CATCH_UP_BLOCKS_MAX, MESSAGE_BYTES_MAX, MESSAGE_BYTES_MAX_BY_TYPE,
    MESSAGE_TYPES, NEW_VIEW_BYTES_MAX, REQUEST_BYTES_MAX, REQUESTS_PER_MESSAGE_MAX, VIEW_CHANGE_BYTES_MAX, BlockRequest,
    BlockResponse, CatchUpRequest, CatchUpResponse,
    Checkpoint, CheckpointCertificate, Commit, CommittedBlock, MessageError, NewView, PrePrepare,
    PreparedCertificate, Prepare, Requests, ViewChange, VoteSignature, checkpoint_payload, choose_blocks,
    decode_message, encode, encode_catch_up_response, sign, slot_payload,
)
from consensus.validators import Validator, ValidatorSet

CHAIN = "bayledger-test"
KEYS = {f"v{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)}
VSET = ValidatorSet(tuple(Validator(f"v{i}", KEYS[f"v{i}"].verify_key.encode(), j) for i, j in enumerate(["HK", "HK", "CN", "CN"])))


def header(height=1, prev=ZERO_HASH, entries=(b"ok:1", b"ok:2")):
    return BlockHeader(CHAIN, height, prev, 1_700_000_000_000, entries_hash(entries), len(entries), len(entries),
                       codec.sha256(b"root"), codec.sha256(b"results"), VSET.hash())


def prepared(view, hdr, entries=None, signers=("v0", "v1", "v2")):
    """A prepared certificate for `hdr` (`entries`: its body, which the certificate does not carry)."""
    sigs = tuple(VoteSignature(s, codec.sign(KEYS[s], codec.DOMAIN_PREPARE, CHAIN, slot_payload(view, hdr.height, hdr.hash())))
                 for s in sorted(signers))
    return PreparedCertificate(view, hdr, sigs)


def checkpoint_cert(hdr, signers=("v0", "v1", "v2")):
    sigs = tuple(VoteSignature(s, codec.sign(KEYS[s], codec.DOMAIN_CHECKPOINT, CHAIN, checkpoint_payload(hdr.height, hdr.hash())))
                 for s in sorted(signers))
    return CheckpointCertificate(hdr.height, hdr.hash(), sigs)


def committed(hdr, entries, signers=("v0", "v1", "v2"), view=0):
    payload = commit_vote_payload(view, hdr.height, hdr.hash())
    sigs = tuple(CommitSignature(s, codec.sign(KEYS[s], codec.DOMAIN_COMMIT, CHAIN, payload)) for s in sorted(signers))
    return CommittedBlock(hdr, tuple(entries), CommitCertificate(view, hdr.height, hdr.hash(), sigs))


ENTRIES = (b"ok:1", b"ok:2")
H1 = header()
H2 = header(2, H1.hash(), (b"ok:3",))


def view_change(sender, view=1):
    return sign(ViewChange(view, CheckpointCertificate(0, ZERO_HASH, ()), (prepared(0, H1, ENTRIES),), sender), KEYS[sender], CHAIN)


def samples():
    vcs = tuple(view_change(s) for s in ("v0", "v1", "v2"))
    _, chosen = choose_blocks(vcs)
    return {
        "requests": Requests((b"ok:1", b"ok:2")),
        "pre-prepare": sign(PrePrepare(0, H1, ENTRIES, "v0"), KEYS["v0"], CHAIN),
        "prepare": sign(Prepare(0, 1, H1.hash(), "v2"), KEYS["v2"], CHAIN),
        "commit": sign(Commit(0, 1, H1.hash(), "v3"), KEYS["v3"], CHAIN),
        "checkpoint": sign(Checkpoint(4, H1.hash(), "v1"), KEYS["v1"], CHAIN),
        "view-change": sign(ViewChange(2, checkpoint_cert(H1), (prepared(1, H2, (b"ok:3",)),), "v3"), KEYS["v3"], CHAIN),
        "new-view": sign(NewView(1, vcs, tuple(p.header.hash() for p in chosen), "v1"), KEYS["v1"], CHAIN),
        "catch-up-request": CatchUpRequest(1, 10),
        "catch-up-response": CatchUpResponse((committed(H1, ENTRIES), committed(H2, (b"ok:3",)))),
        "block-request": BlockRequest((H1.hash(), H2.hash())),
        "block-response": BlockResponse(H1, ENTRIES),
    }


SAMPLES = samples()
UNSIGNED = {"requests", "catch-up-request", "catch-up-response", "block-request", "block-response"}


def test_every_type_has_a_sample():
    assert set(SAMPLES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_sample_round_trips(kind):
    message = SAMPLES[kind]
    data = encode(message)
    again = decode_message(data, VSET, CHAIN)
    assert again == message
    assert encode(again) == data
    if hasattr(again, "signed_bytes"):
        # The payload taken from the wire is exactly the canonical encoding of the fields.
        assert again.signed_bytes == codec.pack(again._body()) == message.payload()


def test_a_decoded_then_edited_view_change_signs_its_new_fields():
    decoded = decode_message(encode(SAMPLES["view-change"]), VSET, CHAIN)
    edited = sign(dataclasses.replace(decoded, view=decoded.view + 1), KEYS["v3"], CHAIN)
    assert decode_message(encode(edited), VSET, CHAIN).view == decoded.view + 1


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def replace(wire, path, new):
    wire = copy.deepcopy(wire)
    if not path:
        return new
    target = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return wire


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=8) | st.binary(max_size=70),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def decode_or_reason(data):
    try:
        return decode_message(data, VSET, CHAIN)
    except MessageError as exc:
        assert exc.reason and " " not in exc.reason
        return None


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.data(), junk)
def test_any_replaced_value_is_rejected_with_a_reason(kind, data, new_value):
    wire = SAMPLES[kind].to_wire()
    all_paths = list(paths(wire))
    path = data.draw(st.sampled_from(all_paths))
    mutated = replace(wire, path, new_value)
    if mutated == wire:
        return
    try:
        encoded = codec.pack(mutated)
    except codec.EncodingError:
        return
    result = decode_or_reason(encoded)
    if kind in UNSIGNED:
        if result is not None and kind == "block-response":
            # Whatever changed, the body still matches the header it came with (or it was refused).
            assert result.header.entries_hash == entries_hash(result.entries)
            assert result.header.entry_count == len(result.entries)
        if result is not None and kind == "catch-up-response":
            # Decoding is structural; each block must still fail its certificate check unless untouched.
            for original, block in zip(SAMPLES[kind].blocks, result.blocks):
                if block != original:
                    with pytest.raises(MessageError):
                        block.verify(VSET)
        return
    assert result is None, f"mutated {kind} at {path} was accepted"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_missing_or_unknown_keys_are_rejected(kind, data):
    wire = SAMPLES[kind].to_wire()
    maps = [p for p in paths(wire) if isinstance(_get(wire, p), dict)]
    path = data.draw(st.sampled_from(maps))
    target = copy.deepcopy(wire)
    inner = _get(target, path)
    if data.draw(st.booleans()) and inner:
        del inner[data.draw(st.sampled_from(sorted(inner)))]
    else:
        inner["zz-unknown"] = 1
    assert decode_or_reason(codec.pack(target)) is None


def _get(value, path):
    for step in path:
        value = value[step]
    return value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    decode_or_reason(data)


@pytest.mark.parametrize("kind", sorted(set(SAMPLES) - UNSIGNED))
def test_a_flipped_signature_bit_is_bad_signature(kind):
    wire = SAMPLES[kind].to_wire()
    signature = bytearray(wire["signature"])
    signature[0] ^= 1
    wire["signature"] = bytes(signature)
    with pytest.raises(MessageError) as info:
        decode_message(codec.pack(wire), VSET, CHAIN)
    assert info.value.reason == "bad-signature"


def test_signatures_are_bound_to_the_chain_and_to_validators():
    data = encode(SAMPLES["prepare"])
    with pytest.raises(MessageError) as info:
        decode_message(data, VSET, "another-chain")
    assert info.value.reason == "bad-signature"
    stranger = nacl.signing.SigningKey(b"\x77" * 32)
    forged = sign(Prepare(0, 1, H1.hash(), "v9"), stranger, CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(forged), VSET, CHAIN)
    assert info.value.reason == "unknown-sender"
    # v1 is not the primary of view 0: a pre-prepare it signs is refused.
    impostor = sign(PrePrepare(0, H1, ENTRIES, "v1"), KEYS["v1"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(impostor), VSET, CHAIN)
    assert info.value.reason == "not-primary"


def test_non_canonical_encoding_is_refused():
    wire = SAMPLES["commit"].to_wire()
    import msgpack
    loose = msgpack.packb(dict(reversed(list(wire.items()))), use_bin_type=True)
    with pytest.raises(MessageError) as info:
        decode_message(loose, VSET, CHAIN)
    assert info.value.reason == "bad-encoding"


def test_view_change_needs_quorum_proofs():
    weak_checkpoint = sign(ViewChange(2, checkpoint_cert(H1, ("v0", "v1")), (), "v3"), KEYS["v3"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(weak_checkpoint), VSET, CHAIN)
    assert info.value.reason == "no-quorum"
    one_jurisdiction = sign(ViewChange(1, CheckpointCertificate(0, ZERO_HASH, ()), (prepared(0, H1, ENTRIES, ("v0", "v1")),), "v3"), KEYS["v3"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(one_jurisdiction), VSET, CHAIN)
    assert info.value.reason == "no-quorum"


def test_new_view_must_make_the_choice_its_view_changes_dictate():
    vcs = tuple(view_change(s) for s in ("v0", "v1", "v2"))
    wrong = sign(NewView(1, vcs, (), "v1"), KEYS["v1"], CHAIN)  # drops the prepared block at height 1
    with pytest.raises(MessageError) as info:
        decode_message(encode(wrong), VSET, CHAIN)
    assert info.value.reason == "bad-new-view"
    too_few = sign(NewView(1, vcs[:2], (H1.hash(),), "v1"), KEYS["v1"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(too_few), VSET, CHAIN)
    assert info.value.reason == "no-quorum"


def test_choice_stops_at_a_gap_or_a_block_that_does_not_chain():
    h3 = header(3, H2.hash(), (b"ok:4",))
    fork2 = header(2, codec.sha256(b"elsewhere"), (b"ok:5",))
    cp = CheckpointCertificate(0, ZERO_HASH, ())
    a = sign(ViewChange(2, cp, (prepared(0, H1, ENTRIES), prepared(0, H2, (b"ok:3",)), prepared(0, h3, (b"ok:4",))), "v0"), KEYS["v0"], CHAIN)
    b = sign(ViewChange(2, cp, (prepared(1, fork2, (b"ok:5",)),), "v1"), KEYS["v1"], CHAIN)
    _, chosen = choose_blocks((a, b))
    # Height 2: the view-1 certificate wins but does not chain onto height 1, so the choice stops at 1.
    assert [p.header.hash() for p in chosen] == [H1.hash()]
    _, chosen = choose_blocks((a,))
    assert [p.height for p in chosen] == [1, 2, 3]


def test_limits_are_enforced_at_their_edge():
    at_limit = Requests(tuple(b"ok:%d" % i for i in range(REQUESTS_PER_MESSAGE_MAX)))
    assert decode_message(encode(at_limit), VSET, CHAIN) == at_limit
    over = Requests(tuple(b"ok:%d" % i for i in range(REQUESTS_PER_MESSAGE_MAX + 1)))
    with pytest.raises(MessageError) as info:
        decode_message(encode(over), VSET, CHAIN)
    assert info.value.reason == "too-large"
    big = Requests((b"x" * REQUEST_BYTES_MAX,))
    assert decode_message(encode(big), VSET, CHAIN) == big
    with pytest.raises(MessageError):
        decode_message(encode(Requests((b"x" * (REQUEST_BYTES_MAX + 1),))), VSET, CHAIN)
    assert decode_message(encode(CatchUpRequest(1, CATCH_UP_BLOCKS_MAX)), VSET, CHAIN)
    with pytest.raises(MessageError):
        decode_message(encode(CatchUpRequest(1, CATCH_UP_BLOCKS_MAX + 1)), VSET, CHAIN)
    with pytest.raises(ValueError):
        encode_catch_up_response([committed(H1, ENTRIES)] * (CATCH_UP_BLOCKS_MAX + 1))


def test_view_change_and_new_view_carry_no_block_bodies():
    for kind in ("view-change", "new-view"):
        data = encode(SAMPLES[kind])
        assert b"ok:1" not in data and b"ok:3" not in data  # the entries' bytes never travel in them
        assert "'entries':" not in repr(codec.unpack(data))


def test_block_response_body_must_match_its_header():
    wire = BlockResponse(H1, ENTRIES).to_wire()
    for entries in ([b"ok:1"], [b"ok:2", b"ok:1"], [b"ok:1", b"ok:2", b"ok:3"], [b"ok:1", b"ok:X"]):
        with pytest.raises(MessageError) as info:
            decode_message(codec.pack({**wire, "entries": entries}), VSET, CHAIN)
        assert info.value.reason == "bad-body"
    with pytest.raises(MessageError) as info:
        decode_message(encode(BlockResponse(header(entries=()), ())), VSET, "another-chain")
    assert info.value.reason == "wrong-chain"


def test_block_request_limits():
    most = BlockRequest(tuple(codec.sha256(b"%d" % i) for i in range(BLOCK_REQUEST_HASHES_MAX)))
    data = encode(most)
    assert len(data) <= BLOCK_REQUEST_BYTES_MAX
    assert decode_message(data, VSET, CHAIN) == most
    over = codec.pack({"type": "block-request", "header_hashes": [codec.sha256(b"%d" % i)
                                                                   for i in range(BLOCK_REQUEST_HASHES_MAX + 1)]})
    with pytest.raises(MessageError) as info:
        decode_message(over, VSET, CHAIN)
    assert info.value.reason == "too-large"
    for hashes in ([], [H1.hash(), H1.hash()]):
        with pytest.raises(MessageError) as info:
            decode_message(codec.pack({"type": "block-request", "header_hashes": hashes}), VSET, CHAIN)
        assert info.value.reason == "bad-field"


def test_every_type_has_a_byte_cap_and_view_change_caps_are_well_below_the_frame():
    assert set(MESSAGE_BYTES_MAX_BY_TYPE) == set(MESSAGE_TYPES.values())
    assert all(cap <= MESSAGE_BYTES_MAX for cap in MESSAGE_BYTES_MAX_BY_TYPE.values())
    assert MESSAGE_BYTES_MAX_BY_TYPE[ViewChange] == VIEW_CHANGE_BYTES_MAX <= MESSAGE_BYTES_MAX // 8
    assert MESSAGE_BYTES_MAX_BY_TYPE[NewView] == NEW_VIEW_BYTES_MAX <= MESSAGE_BYTES_MAX // 2
    assert MESSAGE_BYTES_MAX_BY_TYPE[BlockRequest] == BLOCK_REQUEST_BYTES_MAX
    assert MESSAGE_BYTES_MAX_BY_TYPE[BlockResponse] == MESSAGE_BYTES_MAX_BY_TYPE[PrePrepare]


def test_an_oversize_view_change_is_too_large_before_any_signature_check():
    # A VIEW-CHANGE over its cap (its content does not matter: the cap is checked before the fields).
    wire = codec.unpack(encode(SAMPLES["view-change"]))
    wire["prepared"] = [wire["prepared"][0]] * (VIEW_CHANGE_BYTES_MAX // len(codec.pack(wire["prepared"][0])) + 1)
    data = codec.pack(wire)
    assert VIEW_CHANGE_BYTES_MAX < len(data) < MESSAGE_BYTES_MAX
    with pytest.raises(MessageError) as info:
        decode_message(data, VSET, CHAIN)
    assert info.value.reason == "too-large" and "exceeds" in info.value.detail


# ---------------------------------------------------------------- epochs (docs/CONSENSUS.md, "Reconfiguration")

def epoch_view_change(sender, epoch, base, view=1):
    return sign(ViewChange(view, base, (), sender, epoch=epoch), KEYS[sender], CHAIN)


BASE_AT_2 = CheckpointCertificate(2, H2.hash(), ())   # an epoch that starts at height 3, from block 2


def test_epoch_zero_view_messages_carry_no_epoch_key():
    """Epoch 0's bytes are as they were before epochs: the key appears only from epoch 1."""
    for kind in ("view-change", "new-view"):
        assert "epoch" not in codec.unpack(encode(SAMPLES[kind]))
    assert codec.unpack(encode(epoch_view_change("v0", 1, BASE_AT_2)))["epoch"] == 1


def test_a_view_change_of_another_epoch_is_refused_both_ways():
    later = encode(epoch_view_change("v0", 1, BASE_AT_2))
    assert decode_message(later, VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2).epoch == 1
    with pytest.raises(MessageError) as info:
        decode_message(later, VSET, CHAIN)
    assert info.value.reason == "wrong-epoch"
    with pytest.raises(MessageError) as info:
        decode_message(encode(SAMPLES["view-change"]), VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2)
    assert info.value.reason == "wrong-epoch"


def test_epoch_zero_written_out_is_not_canonical_and_the_epoch_is_signed():
    wire = codec.unpack(encode(SAMPLES["view-change"]))
    with pytest.raises(MessageError) as info:
        decode_message(codec.pack({**wire, "epoch": 0}), VSET, CHAIN)
    assert info.value.reason == "bad-field"
    moved = codec.unpack(encode(epoch_view_change("v0", 1, BASE_AT_2)))
    with pytest.raises(MessageError) as info:
        decode_message(codec.pack({**moved, "epoch": 2}), VSET, CHAIN, epoch=2, base_checkpoint=BASE_AT_2)
    assert info.value.reason == "bad-signature"


def test_the_epochs_base_checkpoint_needs_no_signatures_and_nothing_below_it_counts():
    ok = encode(epoch_view_change("v0", 1, BASE_AT_2))
    assert decode_message(ok, VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2).checkpoint == BASE_AT_2
    for base in (CheckpointCertificate(2, H1.hash(), ()), CheckpointCertificate(4, H1.hash(), ())):
        with pytest.raises(MessageError) as info:   # another block at the base height, or a base above it
            decode_message(ok, VSET, CHAIN, epoch=1, base_checkpoint=base)
        assert info.value.reason == "bad-checkpoint"
    genesis_form = encode(epoch_view_change("v0", 1, CheckpointCertificate(0, ZERO_HASH, ())))
    with pytest.raises(MessageError) as info:
        decode_message(genesis_form, VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2)
    assert info.value.reason == "bad-checkpoint"
    # Above the base, a checkpoint needs its quorum as before.
    cert = checkpoint_cert(header(4, H2.hash()), ("v0", "v1", "v2"))
    decode_message(encode(epoch_view_change("v3", 1, cert)), VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2)


def test_a_new_view_counts_only_view_changes_of_its_own_epoch():
    vcs = tuple(epoch_view_change(s, 1, BASE_AT_2) for s in ("v0", "v1", "v2"))
    good = sign(NewView(1, vcs, (), "v1", epoch=1), KEYS["v1"], CHAIN)
    assert decode_message(encode(good), VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2).epoch == 1
    mixed = vcs[:2] + (epoch_view_change("v2", 2, BASE_AT_2),)
    bad = sign(NewView(1, mixed, (), "v1", epoch=1), KEYS["v1"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(bad), VSET, CHAIN, epoch=1, base_checkpoint=BASE_AT_2)
    assert info.value.reason == "bad-field"


def test_a_header_naming_its_epoch_travels_in_every_message_that_carries_headers():
    """An epoch-1 header decodes as it was sent (pre-prepare, catch-up); "epoch": 0 written out or an
    epoch past 2^63 in a header is bad-field."""
    h1 = dataclasses.replace(H1, epoch=1)
    pre = sign(PrePrepare(0, h1, ENTRIES, "v0"), KEYS["v0"], CHAIN)
    assert decode_message(encode(pre), VSET, CHAIN).header == h1
    caught_up = decode_message(encode_catch_up_response([committed(h1, ENTRIES)]), VSET, CHAIN)
    assert caught_up.blocks[0].header == h1 and caught_up.blocks[0].header.hash() == h1.hash() != H1.hash()
    wire = codec.unpack(encode(SAMPLES["pre-prepare"]))
    for epoch in (0, 2**63):
        with pytest.raises(MessageError) as info:
            decode_message(codec.pack({**wire, "header": {**wire["header"], "epoch": epoch}}), VSET, CHAIN, verify=False)
        assert info.value.reason == "bad-field"


def test_a_vote_is_judged_with_the_set_of_its_height():
    rotated_key = nacl.signing.SigningKey(bytes([77]) * 32)
    later = ValidatorSet(tuple(
        Validator(v.id, rotated_key.verify_key.encode() if v.id == "v0" else v.public_key, v.jurisdiction)
        for v in VSET.validators))
    def validators_at(height):
        return VSET if height < 20 else later
    new_vote = encode(sign(Prepare(0, 25, H1.hash(), "v0"), rotated_key, CHAIN))
    assert decode_message(new_vote, VSET, CHAIN, validators_at=validators_at).height == 25
    # The rotated-out key no longer signs for height 25, and the new one never signed for height 5.
    old_vote = encode(sign(Prepare(0, 25, H1.hash(), "v0"), KEYS["v0"], CHAIN))
    early_vote = encode(sign(Prepare(0, 5, H1.hash(), "v0"), rotated_key, CHAIN))
    for data in (old_vote, early_vote):
        with pytest.raises(MessageError) as info:
            decode_message(data, VSET, CHAIN, validators_at=validators_at, known_through_height=30)
        assert info.value.reason == "bad-signature"


def test_a_vote_past_the_known_heights_that_no_known_set_verifies_is_unknown_epoch_not_forged():
    stranger = nacl.signing.SigningKey(bytes([78]) * 32)
    far = encode(sign(Prepare(0, 60, H1.hash(), "v0"), stranger, CHAIN))
    with pytest.raises(MessageError) as info:
        decode_message(far, VSET, CHAIN, validators_at=lambda h: VSET, known_through_height=59)
    assert info.value.reason == "unknown-epoch"
    with pytest.raises(MessageError) as info:   # at a height whose set it knows, the same bytes are a forgery
        decode_message(far, VSET, CHAIN, validators_at=lambda h: VSET, known_through_height=60)
    assert info.value.reason == "bad-signature"


def test_a_catch_up_block_certified_by_a_larger_later_set_decodes():
    """A catch-up answer carries blocks of later epochs, whose sets may be larger than the receiver's
    current one: the signature list is bounded by VALIDATORS_MAX, not by the receiver's n; the
    certificate is checked against its own epoch's set afterwards (the replica's catch-up)."""
    keys = {f"w{i}": nacl.signing.SigningKey(bytes([i + 50]) * 32) for i in range(7)}
    grown = ValidatorSet(tuple(Validator(k, keys[k].verify_key.encode(), "HK" if i < 4 else "CN")
                               for i, k in enumerate(sorted(keys))))
    hdr = BlockHeader(CHAIN, 1, ZERO_HASH, 1_700_000_000_000, entries_hash(ENTRIES), 2, 2,
                      codec.sha256(b"root"), codec.sha256(b"results"), grown.hash())
    payload = commit_vote_payload(0, 1, hdr.hash())
    signers = sorted(keys)[:5]   # a quorum of 7: more signatures than the receiver's set of 4 has validators
    sigs = tuple(CommitSignature(s, codec.sign(keys[s], codec.DOMAIN_COMMIT, CHAIN, payload)) for s in signers)
    block = CommittedBlock(hdr, ENTRIES, CommitCertificate(0, 1, hdr.hash(), sigs))
    decoded = decode_message(encode(CatchUpResponse((block,))), VSET, CHAIN)
    assert decoded.blocks[0].certificate.signatures == sigs
    block.verify(grown)   # and it holds under its own set


def test_a_catch_up_block_with_more_signatures_than_any_set_is_refused():
    from consensus.epochs import VALIDATORS_MAX
    sig = codec.sign(KEYS["v0"], codec.DOMAIN_COMMIT, CHAIN, b"x")
    wire = committed(H1, ENTRIES).to_wire()
    wire["certificate"]["signatures"] = [{"validator": f"x{i:03d}", "sig": sig} for i in range(VALIDATORS_MAX + 1)]
    data = codec.pack({"type": "catch-up-response", "blocks": [wire]})
    with pytest.raises(MessageError):
        decode_message(data, VSET, CHAIN)
    wire["certificate"]["signatures"] = wire["certificate"]["signatures"][:VALIDATORS_MAX]
    decode_message(codec.pack({"type": "catch-up-response", "blocks": [wire]}), VSET, CHAIN)


def test_a_proposal_past_the_known_heights_by_another_set_s_primary_is_unknown_epoch_not_malformed():
    """A replica still in an old epoch gets a PRE-PREPARE of a later one: its sender leads that view in
    the later set, not in the receiver's. Past the heights whose set the receiver knows, that is an
    unknown epoch (the simulator's seed 45 caught an honest proposal refused as not-primary)."""
    later_primary = sign(PrePrepare(0, H1, ENTRIES, "v1"), KEYS["v1"], CHAIN)
    with pytest.raises(MessageError) as info:
        decode_message(encode(later_primary), VSET, CHAIN, validators_at=lambda h: VSET, known_through_height=0)
    assert info.value.reason == "unknown-epoch"
    with pytest.raises(MessageError) as info:   # at a height whose set it knows, v1 is no primary of view 0
        decode_message(encode(later_primary), VSET, CHAIN, validators_at=lambda h: VSET, known_through_height=1)
    assert info.value.reason == "not-primary"
