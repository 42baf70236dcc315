"""Pre-signed requests for the load generator, built with the client-side builders.

Every commitment is random (a fresh salt over a fixed document) and every
nonce unique, so no two entries collide and replays never occur. The msgpack
form of each call's method and params is produced here, once, before a phase.
"""

from __future__ import annotations

import os
import time

from node.keys import load_key_file
from storage.entries import build_commit

from .rpc import pack_call

SUBMIT_METHOD = "submit"
MATCH_METHOD = "match"
COMMIT_KIND = "credit-report"

# Unique per process run: microseconds since the epoch, times 1000, plus the entry's index.
_nonce_base = int(time.time() * 1_000_000) * 1000


def submit_params(entry: bytes, wait_s: float) -> list:
    return [entry, True, wait_s]


def presigned_submits(plan: dict, count: int, offset: int, wait_s: float) -> tuple[list[bytes], list[bytes]]:
    """`count` encoded submit calls of commit entries by the plan's provider, and their commitments."""
    key = load_key_file(plan["provider_key"])
    author = key.id or "sz-credit-bureau"
    jurisdiction = plan.get("provider_jurisdiction", "CN")
    now_ms = int(time.time() * 1000)
    calls, commitments = [], []
    for index in range(offset, offset + count):
        commitment = os.urandom(32)
        entry = build_commit(key.signing_key, author, plan["chain_id"], commitment, COMMIT_KIND, jurisdiction,
                             nonce=_nonce_base + index, time_ms=now_ms)
        calls.append(pack_call(SUBMIT_METHOD, submit_params(entry, wait_s)))
        commitments.append(commitment)
    return calls, commitments


def presigned_match_queries(plan: dict, commitments: list[bytes], count: int) -> list[bytes]:
    """`count` encoded match-proof queries by the plan's verifier, cycling over `commitments`."""
    raise NotImplementedError("match queries need the RPC contract of node/rpc.py")
