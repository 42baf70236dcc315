"""Shared fixtures: a genesis with real keys (2 HK + 2 CN validators, one regulator key per side)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import nacl.signing
import pytest

from storage.genesis import Genesis


def key_from(seed_text: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(seed_text.encode()).digest())


@dataclass
class World:
    genesis: Genesis
    validator_keys: dict[str, nacl.signing.SigningKey]
    governance_keys: dict[str, nacl.signing.SigningKey]
    participant_keys: dict[str, nacl.signing.SigningKey]

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id


def make_world(chain_id: str = "bayledger-test", governance_threshold: int = 1, regulators_per_side: int = 1) -> World:
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
    return World(Genesis.from_dict(raw), validator_keys, governance_keys, participant_keys)


@pytest.fixture
def world() -> World:
    return make_world()
