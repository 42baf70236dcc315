"""Genuine match proofs and their malleated copies, each with the check the verifier must name.

Shared by tests/storage/test_proof_strict.py (library) and tests/cli/test_cli_proof_strict.py (the
`bayledger proof verify` command). Every case changes one thing of a proof that verifies: the rest
stays canonical (re-encoded with codec.pack) unless the change IS the encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import msgpack

from consensus import codec
from consensus.block import BlockHeader
from storage.genesis import Genesis
from storage.ledger import Ledger
from tests.support.storage_helpers import Author, World, certify, commitment, next_block

MINUTE_MS = 60_000


@dataclass
class Proofs:
    world: World
    match: bytes            # commitment(1): committed at height 1, never revoked
    revoked: bytes          # commitment(2): committed at height 1, revoked by its author at height 2
    before_revoke: bytes    # commitment(2) as a node still at height 1 serves it: a match
    other_kind: bytes       # commitment(3) of kind "mortgage", which world.genesis does not list
    status_time_ms: int     # time of the status header of `match` and `revoked`


def build_proofs(world: World, directory: Path, head_time_ms: int) -> Proofs:
    """Two blocks whose head (the status of every proof) is at `head_time_ms`, one block earlier."""
    store = Ledger.open(directory / "ledger", world.genesis)
    try:
        author = Author(world, "hk-bureau")
        store.apply_block(next_block(world, store, [author.commit(commitment(1)), author.commit(commitment(2))],
                                     time_ms=head_time_ms - 1000))
        before_revoke = store.match_proof(commitment(2))
        store.apply_block(next_block(world, store, [author.revoke(commitment(2))], time_ms=head_time_ms))
        match, revoked = store.match_proof(commitment(1)), store.match_proof(commitment(2))
    finally:
        store.close()
    # A chain whose genesis lists one more kind: same chain id and validators, so its certificates
    # hold under world.genesis too, but world.genesis does not know the kind.
    raw = world.genesis.to_dict()
    raw["entry_kinds"] = [*world.genesis.entry_kinds, "mortgage"]
    wider = replace(world, genesis=Genesis.from_dict(raw))
    store = Ledger.open(directory / "wider", wider.genesis)
    try:
        author = Author(wider, "hk-bureau")
        store.apply_block(next_block(wider, store, [author.commit(commitment(3), kind="mortgage")],
                                     time_ms=head_time_ms))
        other_kind = store.match_proof(commitment(3))
    finally:
        store.close()
    assert match and revoked and before_revoke and other_kind
    return Proofs(world, match, revoked, before_revoke, other_kind, head_time_ms)


def recode(proof: bytes, change: Callable[[dict], None]) -> bytes:
    """The proof decoded, changed in place, and encoded canonically again."""
    value = codec.unpack_canonical(proof)
    change(value)
    return codec.pack(value)


def recertified(world: World, section: dict, **fields) -> None:
    """Give `section`'s header new field values and a certificate for it by the test validators
    (quorum keys are at hand in tests), so only the changed field can be refused."""
    header = BlockHeader.from_wire({**section["header"], **fields})
    section["header"] = header.to_wire()
    section["certificate"] = certify(world, header).to_wire()


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


def _key(name: str) -> bytes:
    return codec.pack(name)


@dataclass(frozen=True)
class Case:
    name: str
    base: str               # "match" or "revoked": the commitment checked is that proof's
    check: str              # the check the verifier must name
    says: str               # a phrase its message must hold (the reason, not just the check's name)
    make: Callable[[Proofs], bytes]


def _reordered(proof: bytes, path: tuple[str, ...] = ()) -> bytes:
    """Valid msgpack of the same value, with the keys of the map at `path` in descending order."""
    value = msgpack.unpackb(proof, raw=False)
    target = value
    for key in path:
        target = target[key]
    items = sorted(target.items(), reverse=True)
    target.clear()
    target.update(items)
    return msgpack.packb(value, use_bin_type=True)


def _swap_signatures(where: tuple[str, ...]):
    def change(value: dict) -> None:
        section = value
        for key in where:
            section = section[key]
        section["certificate"]["signatures"].reverse()
    return change


def _set(where: tuple[str, ...], key: str, item):
    def change(value: dict) -> None:
        section = value
        for k in where:
            section = section[k]
        section[key] = item
    return change


def _version_twice(proof: bytes) -> bytes:
    """The top map with "version": 2 written twice (decoders keep the last), its length one more."""
    assert proof[0] == 0x88, "a proof without revocation is a fixmap of 8 keys"
    return _replace_once(b"\x89" + proof[1:], _key("version") + b"\x02",
                         _key("version") + b"\x02" + _key("version") + b"\x02")


CASES = [
    # One encoding per value (§1).
    Case("keys-reordered", "match", "canonical", "not canonical", lambda p: _reordered(p.match)),
    Case("header-keys-reordered", "match", "canonical", "not canonical", lambda p: _reordered(p.match, ("header",))),
    Case("status-keys-reordered", "match", "canonical", "not canonical", lambda p: _reordered(p.match, ("status",))),
    Case("wider-int", "match", "canonical", "not canonical",   # leaf_index 0 as a uint 64, not a positive fixint
         lambda p: _replace_once(p.match, _key("leaf_index") + b"\x00", _key("leaf_index") + b"\xcf" + bytes(8))),
    Case("wider-str", "match", "canonical", "not canonical",   # the key "version" as a str 8 (d9 07), not a fixstr
         lambda p: _replace_once(p.match, _key("version"), b"\xd9\x07version")),
    Case("repeated-key", "match", "canonical", "not canonical", lambda p: _version_twice(p.match)),
    Case("version-float", "match", "format", "not the integer 2",
         lambda p: _replace_once(p.match, _key("version") + b"\x02", _key("version") + b"\xcb" + struct.pack(">d", 2.0))),
    Case("version-float-32", "match", "format", "not the integer 2",
         lambda p: _replace_once(p.match, _key("version") + b"\x02", _key("version") + b"\xca" + struct.pack(">f", 2.0))),
    # No keys beyond the document's.
    Case("proof-extra-key", "match", "format", "unknown key(s) 'zz-extra'",
         lambda p: recode(p.match, _set((), "zz-extra", 1))),
    Case("status-extra-key", "match", "status.format", "unknown key(s) 'zz-extra'",
         lambda p: recode(p.match, _set(("status",), "zz-extra", 1))),
    Case("certificate-extra-key", "match", "certificate", "unknown key(s) 'zz-extra'",
         lambda p: recode(p.match, _set(("certificate",), "zz-extra", 1))),
    Case("status-certificate-extra-key", "match", "status.certificate", "unknown key(s) 'round'",
         lambda p: recode(p.match, _set(("status", "certificate"), "round", 0))),
    Case("signature-extra-key", "match", "certificate", "unknown key(s) 'at_ms'",
         lambda p: recode(p.match, lambda v: v["certificate"]["signatures"][0].__setitem__("at_ms", 1))),
    Case("revocation-extra-key", "revoked", "revocation.format", "unknown key(s) 'note'",
         lambda p: recode(p.revoked, _set(("revocation",), "note", "x"))),
    Case("revocation-certificate-extra-key", "revoked", "revocation.certificate", "unknown key(s) 'zz-extra'",
         lambda p: recode(p.revoked, _set(("revocation", "certificate"), "zz-extra", b""))),
    Case("revocation-nil", "match", "revocation.format", "not a map", lambda p: recode(p.match, _set((), "revocation", None))),
    # Certificate signatures sorted by validator id, each once.
    Case("signatures-unsorted", "match", "certificate", "not sorted", lambda p: recode(p.match, _swap_signatures(()))),
    Case("status-signatures-unsorted", "match", "status.certificate", "not sorted",
         lambda p: recode(p.match, _swap_signatures(("status",)))),
    Case("revocation-signatures-unsorted", "revoked", "revocation.certificate", "not sorted",
         lambda p: recode(p.revoked, _swap_signatures(("revocation",)))),
    Case("signature-repeated", "match", "certificate", "each once",
         lambda p: recode(p.match, lambda v: v["certificate"]["signatures"].insert(0, v["certificate"]["signatures"][0]))),
    # The kind is one genesis lists (§2).
    Case("kind-not-in-genesis", "other_kind", "kind", "unknown-kind", lambda p: p.other_kind),
    # Heights start at 1 (§4), even for a header the validators signed.
    Case("header-height-0", "match", "header", "height 1", lambda p: recode(p.match, lambda v: recertified(p.world, v, height=0))),
    Case("status-height-0", "match", "status.header", "height 1",
         lambda p: recode(p.match, lambda v: recertified(p.world, v["status"], height=0))),
]


def commitment_of(case: Case):
    return {"match": commitment(1), "revoked": commitment(2), "other_kind": commitment(3)}[case.base]


__all__ = ["CASES", "Case", "MINUTE_MS", "Proofs", "build_proofs", "commitment_of", "recertified", "recode"]
