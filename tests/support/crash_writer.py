"""A writer process for test_crash.py: applies deterministic blocks to a store until killed.

    python -m tests.support.crash_writer STORE_PATH HEIGHT_MAX     (from the repository root)

Block h is a pure function of h (see `block_entries`), so the test can
recompute the expected log for whatever height the store was left at. Each
block carries a replica record (`committed_record`) in its own batch, as a
validator's driver writes it.
"""

from __future__ import annotations

import hashlib
import sys

from consensus import codec
from storage import entries
from storage.ledger import Ledger
from tests.support.storage_helpers import make_world, next_block

AUTHORS = ("hk-bureau", "cn-bureau", "hk-bank")
ENTRIES_PER_BLOCK = 200


def _entry(world, author: str, nonce: int, body_fields: dict) -> bytes:
    # Apply does not verify signatures (replicas do, before voting): a stand-in keeps the writer fast.
    key = world.participant_keys[author]
    body = entries.make_body(chain_id=world.chain_id, author=author, nonce=nonce, time_ms=nonce,
                             author_key=bytes(key.verify_key), **body_fields)
    return codec.pack({"body": body, "sigs": [{"by": author, "sig": hashlib.sha512(body).digest()}]})


def _commitment(height: int, i: int) -> bytes:
    return hashlib.sha256(b"crash %d %d" % (height, i)).digest()


def block_entries(world, height: int) -> tuple[list[bytes], list[bool]]:
    """Entries of block `height` and, for each, whether apply must accept it."""
    out: list[tuple[bytes, bool]] = []
    for i in range(ENTRIES_PER_BLOCK):
        author = AUTHORS[(height + i) % len(AUTHORS)]
        out.append((_entry(world, author, height * 1000 + i,
                           {"type": "commit", "commitment": _commitment(height, i), "kind": "credit-report",
                            "jurisdiction": "HK", "expires_ms": None}), True))
    if height > 1:
        replay, _ = block_entries_first(world, height - 1)
        out.append((replay, False))  # same entry again: replayed nonce
        author = AUTHORS[(height - 1) % len(AUTHORS)]
        out.append((_entry(world, author, height * 1000 + 999,
                           {"type": "revoke", "commitment": _commitment(height - 1, 0), "reason": "test"}), True))
    return [e for e, _ in out], [ok for _, ok in out]


def committed_record(height: int) -> tuple[bytes, bytes]:
    return b"committed/" + height.to_bytes(8, "big"), b"block %d" % height


def block_entries_first(world, height: int) -> tuple[bytes, bool]:
    author = AUTHORS[height % len(AUTHORS)]
    return _entry(world, author, height * 1000,
                  {"type": "commit", "commitment": _commitment(height, 0), "kind": "credit-report",
                   "jurisdiction": "HK", "expires_ms": None}), True


def main() -> int:
    path, height_max = sys.argv[1], int(sys.argv[2])
    world = make_world()
    ledger = Ledger.open(path, world.genesis)
    print("ready", ledger.height(), flush=True)
    while ledger.height() < height_max:
        height = ledger.height() + 1
        batch, _ = block_entries(world, height)
        ledger.apply_block(next_block(world, ledger, batch), [committed_record(height)])
    ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
