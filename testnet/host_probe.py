"""The host's own speed, measured at the start of a bench run (issue 19).

This host's speed changes from day to day by a third or more, so a benchmark's absolute rates do
not travel between machines or days; its ratios to these probes do. Each probe runs on one core
(this process) for a fixed time:

- `ed25519_verify_per_s`: Ed25519 verifications of one 64-byte message (PyNaCl, as the nodes verify
  entries and votes);
- `sha256_64b_per_s`: SHA-256 of 64-byte inputs (a Merkle node: two child hashes).
"""

from __future__ import annotations

import hashlib
import time

import nacl.signing

PROBE_SECONDS_DEFAULT = 1.0   # per probe; long enough to average out a scheduler tick
PROBE_BATCH = 64              # operations between clock reads


def _rate(operation, duration_s: float) -> float:
    """Operations per second of `operation()` over about `duration_s` seconds."""
    count = 0
    start = time.perf_counter()
    deadline = start + duration_s
    while True:
        for _ in range(PROBE_BATCH):
            operation()
        count += PROBE_BATCH
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def ed25519_verify_per_s(duration_s: float = PROBE_SECONDS_DEFAULT) -> float:
    key = nacl.signing.SigningKey(bytes(range(32)))
    signed = key.sign(bytes(64))
    verify_key = key.verify_key
    return _rate(lambda: verify_key.verify(signed), duration_s)


def sha256_64b_per_s(duration_s: float = PROBE_SECONDS_DEFAULT) -> float:
    data = bytes(64)
    sha256 = hashlib.sha256
    return _rate(lambda: sha256(data).digest(), duration_s)


def probe(duration_s: float = PROBE_SECONDS_DEFAULT) -> dict:
    """The bench results' `host_probe`: both rates (one core), rounded, and how long each ran."""
    if not isinstance(duration_s, (int, float)) or not 0 < duration_s <= 60:
        raise ValueError(f"probe duration must be in (0, 60] seconds, got {duration_s!r}")
    return {
        "ed25519_verify_per_s": round(ed25519_verify_per_s(duration_s)),
        "sha256_64b_per_s": round(sha256_64b_per_s(duration_s)),
        "cores": 1,
        "seconds_each": duration_s,
    }
