"""Pre-signed requests for the load generator, built with the client-side builders.

Every commitment is random (a fresh salt over a fixed document) and every
nonce unique, so no two entries collide and replays never occur. The msgpack
form of each call's method and params is produced here, once, before a phase.
"""

from __future__ import annotations

import os
import time

from node.client import Credentials, build_match_query
from node.keys import load_key_file
from storage.entries import build_commit

from .rpc import pack_call

SUBMIT_METHOD = "submit"
MATCH_METHOD = "match"
COMMIT_KIND = "credit-report"

# Next nonce per author, unique across this process's phases: it starts at the current time in
# microseconds so a rerun against the same chain never reuses one.
_next_nonce: dict[str, int] = {}


def submit_params(entry: bytes, wait_s: float) -> list:
    """submit(entry: bin, opts: {wait, timeout_ms}) as node/rpc.py defines it."""
    return [entry, {"wait": True, "timeout_ms": int(wait_s * 1000)}]


def presigned_submits(plan: dict, count: int, lanes: int, wait_s: float) -> tuple[list[list[bytes]], list[bytes]]:
    """`count` encoded submit calls of commit entries in `lanes` queues, and all their commitments.

    Lane i belongs to provider i mod len(providers). The ledger accepts an author's nonces
    out of order only within a window, so each author's nonces rise in the order its lanes
    send them and only a few lanes share one author.
    """
    providers = [(load_key_file(p["key"]), p["name"], p["jurisdiction"]) for p in plan["providers"]]
    now_ms = int(time.time() * 1000)
    queues: list[list[bytes]] = [[] for _ in range(lanes)]
    commitments = []
    for index in range(count):
        lane = index % lanes
        key, author, jurisdiction = providers[lane % len(providers)]
        nonce = _next_nonce.setdefault(author, int(time.time() * 1_000_000))
        _next_nonce[author] = nonce + 1
        commitment = os.urandom(32)
        entry = build_commit(key.signing_key, author, plan["chain_id"], commitment, COMMIT_KIND, jurisdiction,
                             nonce=nonce, time_ms=now_ms)
        queues[lane].append(pack_call(SUBMIT_METHOD, submit_params(entry, wait_s)))
        commitments.append(commitment)
    return queues, commitments


def submit_lane_credentials(plan: dict, lanes: int) -> list[Credentials]:
    """Who each submit lane authenticates as: lane i's entries are by provider i mod len(providers)
    (presigned_submits), and a participant may submit only what it authors."""
    providers = [Credentials(p["name"], load_key_file(p["key"]).signing_key) for p in plan["providers"]]
    return [providers[lane % len(providers)] for lane in range(lanes)]


def verifier_credentials(plan: dict) -> Credentials:
    return Credentials(plan["verifier"]["name"], load_key_file(plan["verifier"]["key"]).signing_key)


def presigned_match_queries(plan: dict, commitments: list[bytes], count: int) -> list[bytes]:
    """`count` encoded match calls by the plan's verifier, cycling over `commitments`, for the node
    plan["match_node"] (a signed query names the one node that may answer it).

    Each query has its own nonce: the node answers a signed query once (replay protection).
    """
    if not commitments:
        return []
    verifier = load_key_file(plan["verifier"]["key"])
    name = plan["verifier"]["name"]
    now_ms = int(time.time() * 1000)
    calls = []
    for index in range(count):
        nonce = _next_nonce.setdefault(name, int(time.time() * 1_000_000))
        _next_nonce[name] = nonce + 1
        query = build_match_query(verifier.signing_key, name, plan["chain_id"],
                                  commitments[index % len(commitments)], node=plan["match_node"], nonce=nonce,
                                  time_ms=now_ms)
        calls.append(pack_call(MATCH_METHOD, [query]))
    return calls
