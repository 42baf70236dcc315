"""How a match proof grows with the epochs it walks (docs/PROTOCOL.md §5, "Size"): the figures there.

    .venv/bin/python -m tests.support.epoch_proof_sizes        (from the repository root; ~1 minute)

The test world (4 validators: hk-1, hk-2, cn-1, cn-2; margin 1), a commitment at height 1, then N
reconfigurations, each one change in its own block, each epoch's blocks certified by every validator
of its set (epoch 0 by 3 of the 4, as the test helper signs). The proof is of the height-1 commitment,
with the head (of epoch N) as its status. Two series:

- rotate: each reconfiguration rotates one validator's key, round robin (the set stays 4 validators);
- add: each adds one HK or CN validator (4 -> 4 + N validators, so certificates grow too), up to
  VALIDATORS_MAX.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from consensus.epochs import AddValidator, RotateValidatorKey
from consensus.validators import Validator
from storage.ledger import Ledger
from storage.proofs import proof_bytes_max, verify_match_proof
from tests.support.storage_helpers import Author, commitment, key_from, make_world, next_block, reconfigure

# Reconfigurations per series: the add series stops at 96, where the set reaches VALIDATORS_MAX (100).
COUNTS = {"rotate": (0, 1, 10, 100), "add": (1, 10, 96)}


def _change(world, series: str, number: int):
    """Reconfiguration `number`'s change, its addresses, and the key to give world once it applies."""
    if series == "rotate":
        vid = ("hk-1", "hk-2", "cn-1", "cn-2")[number % 4]
        new = key_from(f"validator {vid} rotation {number}")
        return RotateValidatorKey(vid, bytes(new.verify_key)), {}, (vid, new)
    vid = f"{'hk' if number % 2 else 'cn'}-added-{number}"
    new = key_from(f"validator {vid}")
    world.validator_keys[vid] = new        # an added validator signs only from its epoch on
    addresses = {vid: {"p2p": f"10.0.{number // 250}.{number % 250}:26601",
                       "rpc": f"10.0.{number // 250}.{number % 250}:26701"}}
    return AddValidator(Validator(vid, bytes(new.verify_key), vid[:2].upper())), addresses, None


def measure(series: str, reconfigurations: int, directory: Path) -> dict:
    world = make_world(epoch_margin_heights=1)
    with Ledger.open(directory / f"{series}-{reconfigurations}", world.genesis) as store:
        store.apply_block(next_block(world, store, [Author(world, "hk-bureau").commit(commitment(0))]))
        for number in range(reconfigurations):
            change, addresses, rekey = _change(world, series, number)
            entry = reconfigure(world, number, [change], addresses, nonce=number + 1)
            outcome = store.apply_block(next_block(world, store, [entry]))[0]
            assert outcome.ok, (series, number, outcome.reason)
            store.apply_block(next_block(world, store, []))     # the margin: the last height of the old epoch
            if rekey is not None:
                world.validator_keys[rekey[0]] = rekey[1]
        store.apply_block(next_block(world, store, []))         # the head: first block of the last epoch
        proof = store.match_proof(commitment(0))
        plain = len(proof) - sum(len(_step_bytes(step)) for step in store.epoch_steps(store.height()))
    started = time.perf_counter()
    verdict = verify_match_proof(proof, world.genesis, commitment(0), now_ms=0)
    verify_ms = (time.perf_counter() - started) * 1000
    assert verdict.status == "match", verdict
    return {"series": series, "reconfigurations": reconfigurations, "proof_bytes": len(proof),
            "steps_bytes": len(proof) - plain, "verify_ms": verify_ms}


def _step_bytes(step: dict) -> bytes:
    from storage.proofs import encode_epoch_steps

    return encode_epoch_steps([step])[1:]     # without the 1-byte array header


def main() -> None:
    print(f"proof_bytes_max = {proof_bytes_max}")
    print("| series | reconfigurations | proof bytes | of which epoch steps | bytes per step | verify ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as directory:
        for series, counts in COUNTS.items():
            for count in counts:
                row = measure(series, count, Path(directory))
                per_step = f"{row['steps_bytes'] // count:,}" if count else "-"
                print(f"| {series} | {count} | {row['proof_bytes']:,} | {row['steps_bytes']:,} | "
                      f"{per_step} | {row['verify_ms']:.0f} |")


if __name__ == "__main__":
    main()
