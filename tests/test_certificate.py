"""Commit certificates verify only with a real quorum that spans both jurisdictions."""

import dataclasses

import nacl.signing
import pytest

from consensus import codec
from consensus.block import (
    ZERO_HASH, BlockHeader, CertificateError, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash,
)
from consensus.validators import Validator, ValidatorSet, ValidatorSetError

CHAIN = "bayledger-test"


def make_set(jurisdictions, minimum=1):
    keys = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(len(jurisdictions))]
    validators = tuple(
        Validator(f"v{i}", k.verify_key.encode(), j) for i, (k, j) in enumerate(zip(keys, jurisdictions))
    )
    return ValidatorSet(validators, minimum), {f"v{i}": k for i, k in enumerate(keys)}


def make_header(vset, height=1):
    return BlockHeader(
        chain_id=CHAIN, height=height, prev_hash=ZERO_HASH, time_ms=1_700_000_000_000,
        entries_hash=entries_hash([b"a", b"b"]), entry_count=2, tree_size=2, tree_root=bytes(32),
        results_hash=bytes(32), validator_set_hash=vset.hash(),
    )


def certify(header, keys, signers, view=0):
    payload = commit_vote_payload(view, header.height, header.hash())
    sigs = tuple(CommitSignature(s, codec.sign(keys[s], codec.DOMAIN_COMMIT, CHAIN, payload)) for s in signers)
    return CommitCertificate(view, header.height, header.hash(), sigs)


def test_quorum_across_jurisdictions_verifies_and_round_trips():
    vset, keys = make_set(["HK", "HK", "CN", "CN"])
    header = make_header(vset)
    cert = certify(header, keys, ["v0", "v1", "v2"])
    cert.verify(header, vset)
    again = CommitCertificate.from_wire(codec.unpack(codec.pack(cert.to_wire())))
    again.verify(BlockHeader.from_wire(codec.unpack(header.encode())), vset)


def test_quorum_from_one_jurisdiction_is_refused():
    vset, keys = make_set(["HK", "HK", "HK", "CN", "CN", "CN", "CN"])  # n=7, f=2, quorum 5
    header = make_header(vset)
    certify(header, keys, ["v0", "v1", "v2", "v3", "v4"]).verify(header, vset)
    vset2, keys2 = make_set(["HK", "HK", "CN", "CN", "CN", "CN", "CN"], minimum=0)
    header2 = make_header(vset2)
    certify(header2, keys2, ["v2", "v3", "v4", "v5", "v6"]).verify(header2, vset2)  # minimum 0: CN alone is fine
    vset3, keys3 = make_set(["HK", "HK", "HK", "CN", "CN", "CN", "CN"], minimum=1)
    header3 = make_header(vset3)
    with pytest.raises(CertificateError, match="not a quorum"):
        certify(header3, keys3, ["v3", "v4", "v5", "v6"]).verify(header3, vset3)


@pytest.mark.parametrize("mutation", ["too-few", "duplicate", "stranger", "bad-sig", "other-header", "other-view"])
def test_broken_certificates_name_the_failed_check(mutation):
    vset, keys = make_set(["HK", "HK", "CN", "CN"])
    header = make_header(vset)
    cert = certify(header, keys, ["v0", "v1", "v2"])
    expected = {
        "too-few": "not a quorum", "duplicate": "signs twice", "stranger": "not a validator",
        "bad-sig": "invalid", "other-header": "different header", "other-view": "invalid",
    }[mutation]
    if mutation == "too-few":
        cert = dataclasses.replace(cert, signatures=cert.signatures[:2])
    elif mutation == "duplicate":
        cert = dataclasses.replace(cert, signatures=cert.signatures + cert.signatures[:1])
    elif mutation == "stranger":
        cert = dataclasses.replace(cert, signatures=cert.signatures + (CommitSignature("v9", bytes(64)),))
    elif mutation == "bad-sig":
        first = cert.signatures[0]
        flipped = bytes([first.signature[0] ^ 1]) + first.signature[1:]
        cert = dataclasses.replace(cert, signatures=(CommitSignature(first.validator, flipped),) + cert.signatures[1:])
    elif mutation == "other-header":
        header = dataclasses.replace(header, time_ms=header.time_ms + 1)
    elif mutation == "other-view":
        cert = dataclasses.replace(cert, view=1)
    with pytest.raises(CertificateError, match=expected):
        cert.verify(header, vset)


def test_unsafe_validator_sets_are_refused_with_reason():
    with pytest.raises(ValidatorSetError, match="jurisdiction HK has 1 validators"):
        make_set(["HK", "CN", "CN", "CN"])
    with pytest.raises(ValidatorSetError, match="not one of"):
        make_set(["HK", "HK", "CN", "XX"])
    with pytest.raises(ValidatorSetError, match="empty"):
        ValidatorSet((), 1)


def test_header_rejects_malformed_fields():
    vset, _ = make_set(["HK", "HK", "CN", "CN"])
    wire = make_header(vset).to_wire()
    with pytest.raises(CertificateError, match="lacks tree_root"):
        BlockHeader.from_wire({k: v for k, v in wire.items() if k != "tree_root"})
    with pytest.raises(CertificateError, match="unknown fields"):
        BlockHeader.from_wire({**wire, "extra": 1})
    with pytest.raises(CertificateError, match="32 bytes"):
        BlockHeader.from_wire({**wire, "prev_hash": b"short"})
    with pytest.raises(CertificateError, match="non-negative"):
        BlockHeader.from_wire({**wire, "height": -1})


def _fixed_header(**changes):
    fields = dict(
        chain_id="bayledger-test", height=7, prev_hash=bytes(range(32)), time_ms=1_700_000_000_123,
        entries_hash=bytes([0xAA]) * 32, entry_count=3, tree_size=42, tree_root=bytes([0x11]) * 32,
        results_hash=bytes([0x22]) * 32, validator_set_hash=bytes([0x33]) * 32,
    )
    return BlockHeader(**{**fields, **changes})


def test_an_epoch_0_header_hashes_as_before_headers_had_an_epoch():
    # Computed on the code before BlockHeader had `epoch` (commit ddd4548): epoch 0 leaves the key out,
    # so stored headers, certificates and other-language clients keep these exact bytes.
    header = _fixed_header()
    assert header.epoch == 0 and "epoch" not in header.to_wire()
    assert header.hash().hex() == "dea43ae2f553f73cdd4dc92b829610cd1c9b15e44d88adee12b080b2feb6a788"
    assert BlockHeader.from_wire(codec.unpack(header.encode())) == header


def test_an_epoch_1_header_round_trips_and_hashes_apart_from_epoch_0():
    header = _fixed_header(epoch=1)
    wire = codec.unpack(header.encode())
    assert wire["epoch"] == 1 and list(wire) == sorted(wire), "the key in canonical order, like the others"
    again = BlockHeader.from_wire(wire)
    assert again == header and again.hash() == header.hash() != _fixed_header().hash()


@pytest.mark.parametrize("epoch", [0, -1, True, False, "1", 1.0, None])
def test_a_header_epoch_on_the_wire_is_an_integer_of_at_least_1(epoch):
    wire = _fixed_header().to_wire()
    with pytest.raises(CertificateError, match="epoch"):
        BlockHeader.from_wire({**wire, "epoch": epoch})


@pytest.mark.parametrize("epoch", [-1, True, "1", None])
def test_a_header_is_never_built_with_a_bad_epoch(epoch):
    with pytest.raises(CertificateError, match="epoch"):
        _fixed_header(epoch=epoch)
