"""Shared test helpers: a genesis with real keys (2 HK + 2 CN validators, regulators per side) and certified blocks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack
import nacl.signing
from consensus import codec
from consensus.block import BlockHeader, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash
from consensus.messages import CommittedBlock
from storage.genesis import Genesis


def key_from(seed_text: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(seed_text.encode()).digest())


@dataclass
class World:
    genesis: Genesis
    validator_keys: dict[str, nacl.signing.SigningKey]
    governance_keys: dict[str, nacl.signing.SigningKey]
    participant_keys: dict[str, nacl.signing.SigningKey]
    spare_governance_keys: dict[str, nacl.signing.SigningKey] = field(default_factory=dict)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id


def make_world(chain_id: str = "bayledger-test", governance_threshold: int = 1, regulators_per_side: int = 1,
               epoch_margin_heights: int | None = None) -> World:
    validator_keys = {vid: key_from(f"validator {vid}") for vid in ("hk-1", "hk-2", "cn-1", "cn-2")}
    governance_keys = {}
    governance = {}
    for side in ("HK", "CN"):
        ids = [f"{side.lower()}-regulator-{i}" for i in range(1, regulators_per_side + 1)]
        for gid in ids:
            governance_keys[gid] = key_from(f"governance {gid}")
        governance[side] = {
            "keys": [{"id": gid, "public_key": bytes(governance_keys[gid].verify_key).hex()} for gid in ids],
            "threshold": governance_threshold,
        }
    participant_keys = {pid: key_from(f"participant {pid}") for pid in ("hk-bureau", "cn-bureau", "hk-bank")}
    roles = {"hk-bureau": ("HK", "credit-provider"), "cn-bureau": ("CN", "credit-provider"), "hk-bank": ("HK", "bank")}
    raw = {
        "chain_id": chain_id,
        "genesis_time_ms": 1_700_000_000_000,
        "min_signers_per_jurisdiction": 1,
        "validators": [
            {"id": vid, "public_key": bytes(k.verify_key).hex(), "jurisdiction": vid[:2].upper(),
             "p2p": f"127.0.0.1:{26600 + i}", "rpc": f"127.0.0.1:{26700 + i}"}
            for i, (vid, k) in enumerate(validator_keys.items())
        ],
        "governance": governance,
        "participants": [
            {"id": pid, "jurisdiction": roles[pid][0], "role": roles[pid][1], "public_key": bytes(k.verify_key).hex()}
            for pid, k in participant_keys.items()
        ],
    }
    if epoch_margin_heights is not None:
        raw["epoch_margin_heights"] = epoch_margin_heights
    return World(Genesis.from_dict(raw), validator_keys, governance_keys, participant_keys)


def certify(world: World, header: BlockHeader, signers=("hk-1", "hk-2", "cn-1"), view: int = 0) -> CommitCertificate:
    """A certificate by `signers`, each signing with its key in world.validator_keys."""
    payload = commit_vote_payload(view, header.height, header.hash())
    signatures = tuple(
        CommitSignature(v, codec.sign(world.validator_keys[v], codec.DOMAIN_COMMIT, world.chain_id, payload))
        for v in signers
    )
    return CommitCertificate(view=view, height=header.height, header_hash=header.hash(), signatures=signatures)


def next_block(world: World, ledger, entries, parent: BlockHeader | None = "head", time_ms: int | None = None,
               epoch: int | None = None) -> CommittedBlock:
    """A certified block of `entries` on top of `parent` (default: the ledger's head), executed by `ledger`.

    Its header names the epoch and set the ledger's schedule gives its height (or `epoch`, to build a
    wrong one). Epoch 0 is certified by hk-1, hk-2, cn-1 as always; a later epoch by every validator of
    its set, each with its key in world.validator_keys (a test that adds or rotates puts the key there)."""
    if parent == "head":
        parent = ledger.head()
    height = 1 if parent is None else parent.height + 1
    if time_ms is None:
        time_ms = world.genesis.genesis_time_ms + 1000 * height
    result = ledger.execute(parent, height, time_ms, list(entries))
    assert result is not None, "parent unknown to the ledger"
    config = ledger.epochs.schedule.config_at(height)
    epoch = config.epoch if epoch is None else epoch
    header = BlockHeader(
        chain_id=world.chain_id, height=height, prev_hash=parent.hash() if parent else bytes(32), time_ms=time_ms,
        entries_hash=entries_hash(list(entries)), entry_count=len(entries), tree_size=result.tree_size,
        tree_root=result.tree_root, results_hash=result.results_hash,
        validator_set_hash=config.validators.hash(), epoch=epoch,
    )
    signers = ("hk-1", "hk-2", "cn-1") if config.epoch == 0 else tuple(v.id for v in config.validators.validators)
    return CommittedBlock(header, tuple(entries), certify(world, header, signers))


def reconfigure(world: World, epoch: int, changes, addresses=None, nonce: int = 1, governance=()) -> bytes:
    """A reconfigure entry changing `epoch`, signed by every regulator key of the world (meets any threshold;
    a test that replaces regulator keys updates world.governance_keys)."""
    from storage.entries import build_reconfigure

    return build_reconfigure(sorted(world.governance_keys.items()), world.chain_id, epoch, changes, addresses or {},
                             nonce, world.genesis.genesis_time_ms + nonce, governance)


def new_regulators(world: World, jurisdiction: str, n: int):
    """A set-governance change giving `jurisdiction` one new regulator key (id and key made from `n`);
    the key is put in world.spare_governance_keys for the test to move into governance_keys."""
    from storage.genesis import GovernanceKey
    from storage.reconfiguration import SetGovernance

    key_id = f"{jurisdiction.lower()}-regulator-new-{n}"
    key = key_from(f"governance {key_id}")
    world.spare_governance_keys[key_id] = key
    return SetGovernance(jurisdiction, (GovernanceKey(key_id, key.verify_key.encode(), jurisdiction),), 1)


def held_twice(world: World):
    """A set-governance change giving HK a key that CN's regulator holds (refused: a key held twice)."""
    from storage.genesis import GovernanceKey
    from storage.reconfiguration import SetGovernance

    cn_key = world.genesis.governance.keys["CN"][0]
    return SetGovernance("HK", (GovernanceKey("hk-regulator-copy", cn_key.public_key, "HK"),), 1)


class Author:
    """A participant that numbers its own nonces."""

    def __init__(self, world: World, participant_id: str) -> None:
        self.world = world
        self.id = participant_id
        self.key = world.participant_keys[participant_id]
        self.nonce = 0

    def commit(self, commitment: bytes, kind: str = "credit-report", jurisdiction: str = "HK",
               expires_ms: int | None = None) -> bytes:
        from storage.entries import build_commit

        self.nonce += 1
        return build_commit(self.key, self.id, self.world.chain_id, commitment, kind, jurisdiction,
                            self.nonce, 1_700_000_000_000 + self.nonce, expires_ms)

    def revoke(self, commitment: bytes, reason: str = "withdrawn") -> bytes:
        from storage.entries import build_revoke

        self.nonce += 1
        return build_revoke(self.key, self.id, self.world.chain_id, commitment, reason, self.nonce,
                            1_700_000_000_000 + self.nonce)


def commitment(n: int) -> bytes:
    return hashlib.sha256(b"test commitment %d" % n).digest()


def reference_smt_root(keys: set[bytes], depth: int = 0) -> bytes:
    """The revoked set's root by its definition (docs/PROTOCOL.md §3), recursively, with no stored nodes."""
    from storage import smt

    if not keys:
        return smt.EMPTY[smt.DEPTH - depth]
    if depth == smt.DEPTH:
        (key,) = keys
        return hashlib.sha256(b"\x02" + key).digest()
    left = {k for k in keys if not (k[depth // 8] >> (7 - depth % 8)) & 1}
    return hashlib.sha256(b"\x01" + reference_smt_root(left, depth + 1)
                          + reference_smt_root(keys - left, depth + 1)).digest()


def expected_smt_store(keys) -> dict[bytes, int]:
    """Node id -> value length the compact SMT store must hold for a set (storage/smt.py docstring):
    the nodes with >= 2 members below (32 bytes) and, per member, the highest node with it alone (64)."""
    from storage import smt

    keys = list(keys)
    expected: dict[bytes, int] = {}
    for key in keys:
        shared = max((smt.DEPTH - (int.from_bytes(key, "big") ^ int.from_bytes(other, "big")).bit_length()
                      for other in keys if other != key), default=-1)  # longest common prefix, in bits
        for depth in range(shared + 1):
            expected[smt.node_id(key, depth)] = 32
        expected[smt.node_id(key, shared + 1)] = 64
    return expected


def tampered(proof: bytes, change) -> bytes:
    """A proof decoded, changed in place by `change(value)`, and encoded again."""
    value = msgpack.unpackb(proof)
    change(value)
    return msgpack.packb(value, use_bin_type=True)


def flip_bit(data: bytes, index: int = 0) -> bytes:
    """`data` with the lowest bit of byte `index` flipped."""
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]
