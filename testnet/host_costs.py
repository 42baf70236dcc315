"""The host's price of what a node does per message rather than per entry: `python -m testnet.host_costs`.

At a trickle of load a node's CPU goes to wake-ups, hand-offs and small synced writes, not to the
entries themselves (docs/PERFORMANCE.md, "Where the time goes"). This measures each on its own, in
one process, so that a figure from one machine or day can be read against another's:

- `trio_wakeup_us`: CPU per wake-up of a trio task sleeping `wakeup_sleep_ms` (the event loop
  returning from epoll with nothing else to do);
- `thread_handoff_us`: CPU per `trio.to_thread.run_sync` of a function that does nothing (the
  driver hands each synced write to a worker thread);
- `synced_write_us` and `synced_write_wall_us`: CPU and wall time of one 1,000-byte LevelDB write
  with sync=True, as a block's votes are written.

Each is a median over `rounds` rounds of `calls_per_round` calls. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import trio

wakeup_sleep_ms = 10
calls_per_round = 100
rounds_default = 5
synced_write_value_bytes = 1000


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


async def _wakeups(rounds: int) -> float:
    per_call = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls_per_round):
            await trio.sleep(wakeup_sleep_ms / 1000)
        per_call.append((time.process_time() - started) / calls_per_round)
    return _median_us(per_call)


async def _handoffs(rounds: int) -> float:
    def nothing() -> None:
        return None

    await trio.to_thread.run_sync(nothing)   # the worker thread exists before the clock starts
    per_call = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls_per_round):
            await trio.to_thread.run_sync(nothing)
        per_call.append((time.process_time() - started) / calls_per_round)
    return _median_us(per_call)


def _synced_writes(rounds: int) -> tuple[float, float]:
    import plyvel

    value = os.urandom(synced_write_value_bytes)
    cpu, wall = [], []
    with tempfile.TemporaryDirectory(prefix="bayledger-host-costs-") as directory:
        db = plyvel.DB(directory, create_if_missing=True)
        try:
            for round_index in range(rounds):
                started_cpu, started_wall = time.process_time(), time.perf_counter()
                for index in range(calls_per_round):
                    db.put((round_index * calls_per_round + index).to_bytes(8, "big"), value, sync=True)
                cpu.append((time.process_time() - started_cpu) / calls_per_round)
                wall.append((time.perf_counter() - started_wall) / calls_per_round)
        finally:
            db.close()
    return _median_us(cpu), _median_us(wall)


def measure(rounds: int = rounds_default) -> dict:
    write_cpu_us, write_wall_us = _synced_writes(rounds)
    return {
        "trio_wakeup_us": trio.run(_wakeups, rounds),
        "thread_handoff_us": trio.run(_handoffs, rounds),
        "synced_write_us": write_cpu_us,
        "synced_write_wall_us": write_wall_us,
        "wakeup_sleep_ms": wakeup_sleep_ms,
        "calls": rounds * calls_per_round,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.host_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds_default, help=f"rounds of {calls_per_round} calls "
                        f"each (1-100, default {rounds_default})")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        print(f"host_costs: --rounds must be between 1 and 100, got {args.rounds}", file=sys.stderr)
        return 2
    print(json.dumps(measure(args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
