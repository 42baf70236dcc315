"""Entries: builders, the stateless check (shape, canonical bytes, signatures, governance thresholds), limits."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from consensus import codec
from storage import entries
from storage.entries import EntryError, check_entry, decode_entry, validate_entry
from storage.genesis import Participant
from tests.support.storage_helpers import Author, commitment, key_from, make_world


def test_commitment_of_known_answer():
    doc = b"credit report of ACME Ltd, 2026-11-24"
    salt = bytes(range(32))
    expected = hashlib.sha256(b"bayledger/commitment/v1" + salt + hashlib.sha256(doc).digest()).digest()
    assert entries.commitment_of_document(doc, salt) == expected
    assert entries.commitment_of(hashlib.sha256(doc).digest(), salt) == expected
    assert len(entries.new_salt()) == 32 and entries.new_salt() != entries.new_salt()
    with pytest.raises(ValueError):
        entries.commitment_of(b"short", salt)


def test_every_builder_passes_the_check(world):
    g = world.genesis
    author = Author(world, "hk-bureau")
    regulators = [(gid, key) for gid, key in world.governance_keys.items()]
    newcomer = Participant("sz-bank", "CN", "bank", bytes(key_from("sz-bank").verify_key))
    built = [
        author.commit(commitment(1), expires_ms=2_000_000_000_000),
        author.revoke(commitment(1)),
        entries.build_governance_revoke(regulators, g.chain_id, commitment(1), "court order", 1, 5),
        entries.build_admit(regulators, g.chain_id, newcomer, 2, 5),
        entries.build_suspend(regulators, g.chain_id, "hk-bank", 3, 5),
    ]
    for data in built:
        assert check_entry(data, g) is None
        assert check_entry(data) is None
        assert codec.unpack_canonical(data) is not None
        assert entries.entry_id(data) == hashlib.sha256(data).digest()
    entry = decode_entry(built[0])
    assert (entry.type, entry.author, entry.nonce, entry.commitment) == ("commit", "hk-bureau", 1, commitment(1))
    assert entry.fields["expires_ms"] == 2_000_000_000_000
    assert decode_entry(built[3]).fields["participant"] == newcomer


def test_participant_signature_checked(world):
    data = Author(world, "hk-bureau").commit(commitment(1))
    outer = msgpack.unpackb(data)
    outer["sigs"][0]["sig"] = bytes(64)
    assert check_entry(codec.pack(outer), world.genesis) == "bad-signature"
    # Signed by another key than the one the body names.
    body = msgpack.unpackb(outer["body"])
    forged = entries.sign_entry(outer["body"], world.chain_id, [("hk-bureau", key_from("someone else"))])
    assert body["author_key"] != bytes(key_from("someone else").verify_key)
    assert check_entry(forged, world.genesis) == "bad-signature"


def test_wrong_chain_and_unknown_kind(world):
    other = make_world(chain_id="another-chain")
    data = Author(other, "hk-bureau").commit(commitment(1))
    assert check_entry(data) is None
    assert check_entry(data, world.genesis) == "wrong-chain"
    weird = Author(world, "hk-bureau").commit(commitment(1), kind="horoscope")
    assert check_entry(weird, world.genesis) == "unknown-kind"


def test_not_canonical_rejected(world):
    """Same content, other bytes (keys out of order): rejected, so one entry has exactly one encoding."""
    data = Author(world, "hk-bureau").commit(commitment(1))
    outer = msgpack.unpackb(data)
    reordered = msgpack.packb({"sigs": outer["sigs"], "body": outer["body"]}, use_bin_type=True)
    assert reordered != data
    assert check_entry(reordered, world.genesis) == "entry-not-canonical"


def test_governance_needs_each_jurisdiction(world):
    g = world.genesis
    hk = ("hk-regulator-1", world.governance_keys["hk-regulator-1"])
    cn = ("cn-regulator-1", world.governance_keys["cn-regulator-1"])
    only_hk = entries.build_suspend([hk], g.chain_id, "hk-bank", 1, 5)
    assert check_entry(only_hk, g) == "governance-threshold"
    both = entries.cosign(only_hk, *cn)
    assert check_entry(both, g) is None
    stranger = entries.cosign(both, "zz-regulator", key_from("stranger"))
    assert check_entry(stranger, g) == "unknown-governance-key"
    wrong_key = entries.sign_entry(decode_entry(only_hk).body, g.chain_id, [hk, ("cn-regulator-1", key_from("x"))])
    assert check_entry(wrong_key, g) == "bad-signature"


def test_threshold_two_per_side():
    world = make_world(governance_threshold=2, regulators_per_side=3)
    g = world.genesis
    keys = world.governance_keys
    signers = [(i, keys[i]) for i in ("hk-regulator-1", "hk-regulator-2", "cn-regulator-1")]
    data = entries.build_suspend(signers, g.chain_id, "hk-bank", 1, 5)
    assert check_entry(data, g) == "governance-threshold"
    data = entries.cosign(data, "cn-regulator-3", keys["cn-regulator-3"])
    assert check_entry(data, g) is None


def _malformed_cases(world):
    author = Author(world, "hk-bureau")
    good = msgpack.unpackb(author.commit(commitment(1)))
    body = msgpack.unpackb(good["body"])
    key = world.participant_keys["hk-bureau"]

    def with_body(**changes):
        b = dict(body, **changes)
        for k, v in list(b.items()):
            if v is KeyError:
                del b[k]
        return entries.sign_entry(codec.pack(b), world.chain_id, [("hk-bureau", key)])

    return {
        "not msgpack": b"\xc1",
        "not a map": codec.pack([1, 2]),
        "extra outer key": codec.pack(dict(good, extra=1)),
        "body not bin": codec.pack({"body": "text", "sigs": good["sigs"]}),
        "no signatures": codec.pack({"body": good["body"], "sigs": []}),
        "short signature": codec.pack({"body": good["body"], "sigs": [{"by": "hk-bureau", "sig": b"x" * 63}]}),
        "two participant signatures": entries.sign_entry(good["body"], world.chain_id,
                                                         [("hk-bureau", key), ("zz", key)]),
        "signer is not author": entries.sign_entry(good["body"], world.chain_id, [("cn-bureau", key)]),
        "short commitment": with_body(commitment=b"x" * 31),
        "missing field": with_body(expires_ms=KeyError),
        "extra field": with_body(colour="blue"),
        "negative nonce": with_body(nonce=-1),
        "huge nonce": with_body(nonce=2**63),
        "bad jurisdiction": with_body(jurisdiction="US"),
        "bad expires": with_body(expires_ms="soon"),
        "bad author key": with_body(author_key=b"k" * 31),
        "governance commits": with_body(author="governance", author_key=KeyError),
        "bad author": with_body(author="has space"),
    }


def test_malformed_entries_named(world):
    for name, data in _malformed_cases(world).items():
        reason = check_entry(data, world.genesis)
        assert reason == "entry-malformed", (name, reason)
        with pytest.raises(EntryError) as caught:
            validate_entry(data, world.genesis)
        assert caught.value.reason == "entry-malformed" and str(caught.value)


def test_unknown_type(world):
    key = world.participant_keys["hk-bureau"]
    body = entries.make_body("mint", world.chain_id, "hk-bureau", 1, 1, author_key=bytes(key.verify_key))
    assert check_entry(entries.sign_entry(body, world.chain_id, [("hk-bureau", key)])) == "unknown-type"


def test_entry_size_limit_edge(world):
    """Exactly entry_bytes_max bytes is parsed (and here found malformed); one byte more is too large."""
    limit = entries.entry_bytes_max
    at_limit = codec.pack({"body": b"x" * (limit - 32), "sigs": []})
    at_limit = at_limit + b"\x00" * (limit - len(at_limit))
    assert len(at_limit) == limit
    assert check_entry(at_limit) == "entry-malformed"
    assert check_entry(at_limit + b"\x00") == "entry-too-large"


def test_reason_length_edge(world):
    author = Author(world, "hk-bureau")
    assert check_entry(author.revoke(commitment(1), "r" * entries.reason_bytes_max), world.genesis) is None
    assert check_entry(author.revoke(commitment(1), "r" * (entries.reason_bytes_max + 1)), world.genesis) == "entry-malformed"


def test_signature_count_edge(world):
    """A governance entry with entry_signatures_max signatures parses; one more is malformed."""
    g = world.genesis
    body = entries.make_body("suspend", g.chain_id, "governance", 1, 1, participant_id="hk-bank")
    signers = [(f"k{i:02d}", key_from(f"k{i}")) for i in range(entries.entry_signatures_max + 1)]
    at_limit = entries.sign_entry(body, g.chain_id, signers[:-1])
    over = entries.sign_entry(body, g.chain_id, signers)
    assert check_entry(at_limit) is None                  # shape only: genesis keys unknown here
    assert check_entry(at_limit, g) == "unknown-governance-key"
    assert check_entry(over) == "entry-malformed"


def test_signatures_must_be_sorted(world):
    g = world.genesis
    hk = ("hk-regulator-1", world.governance_keys["hk-regulator-1"])
    cn = ("cn-regulator-1", world.governance_keys["cn-regulator-1"])
    data = entries.build_suspend([hk, cn], g.chain_id, "hk-bank", 1, 5)
    outer = msgpack.unpackb(data)
    outer["sigs"].reverse()
    assert check_entry(msgpack.packb(outer, use_bin_type=True), g) == "entry-malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data):
    assert isinstance(check_entry(data), str)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_bit_flip_is_caught(data):
    """Flipping any bit of a valid entry makes the stateless check fail (signature or shape)."""
    world = make_world()
    good = Author(world, "hk-bureau").commit(commitment(1))
    bit = data.draw(st.integers(0, len(good) * 8 - 1))
    flipped = bytearray(good)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert check_entry(bytes(flipped), world.genesis) is not None


def test_the_check_without_signatures_refuses_everything_but_a_bad_signature(world):
    """What a validator that lets others vouch for signatures checks (LedgerApplication.check_request_shape)."""
    g = world.genesis
    data = Author(world, "hk-bureau").commit(commitment(1))
    outer = msgpack.unpackb(data)
    outer["sigs"][0]["sig"] = bytes(64)
    bad_signature = codec.pack(outer)
    assert entries.validate_entry(bad_signature, g, check_signatures=False).author == "hk-bureau"
    hk = ("hk-regulator-1", world.governance_keys["hk-regulator-1"])
    cn = ("cn-regulator-1", world.governance_keys["cn-regulator-1"])
    only_hk = entries.build_suspend([hk], g.chain_id, "hk-bank", 1, 5)
    wrong_cn_key = entries.sign_entry(decode_entry(only_hk).body, g.chain_id, [hk, ("cn-regulator-1", key_from("x"))])
    for data, reason in ((b"\xc1", "entry-malformed"), (only_hk, "governance-threshold"),
                         (entries.cosign(entries.cosign(only_hk, *cn), "zz-regulator", key_from("s")),
                          "unknown-governance-key")):
        with pytest.raises(entries.EntryError) as refused:
            entries.validate_entry(data, g, check_signatures=False)
        assert refused.value.reason == reason
    assert entries.validate_entry(wrong_cn_key, g, check_signatures=False).type == "suspend"
    assert check_entry(wrong_cn_key, g) == "bad-signature"
