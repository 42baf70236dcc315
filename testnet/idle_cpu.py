"""What an idle validator costs: `python -m testnet.idle_cpu [--validators 4] [--seconds 20]`.

Starts a fresh testnet in a temporary directory (no demo, no load), lets it settle, then reads each
node's user + system CPU from /proc over `--seconds` and prints, as one JSON line, the milliseconds
of CPU each node used per second of wall time. Stops the testnet and removes the directory. A
benchmark, not a test (docs/PERFORMANCE.md, "At low load").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import control
from .network import Network
from .ports import find_free_base_port
from .supervisor import process_usage, running_pid

settle_s = 3.0          # after every node answers: links up, the first catch-up probes done
seconds_min, seconds_max = 1.0, 600.0


def measure(validators: int, seconds: float) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(prefix="bayledger-idle-"))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            control.up(run_dir, validators, find_free_base_port(validators), demo=False)
        network = Network.load(run_dir)
        pids = {node.name: running_pid(node.pid_path, node.config_path) for node in network.nodes}
        time.sleep(settle_s)
        before = {name: process_usage(pid)["cpu_s"] for name, pid in pids.items()}
        time.sleep(seconds)
        after = {name: process_usage(pid)["cpu_s"] for name, pid in pids.items()}
        return {name: round((after[name] - before[name]) / seconds * 1000, 1) for name in pids}
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            control.down(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.idle_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4, choices=(4, 7, 10))
    parser.add_argument("--seconds", type=float, default=20.0,
                        help=f"how long to measure, {seconds_min:g}-{seconds_max:g} (default 20)")
    args = parser.parse_args(argv)
    if not seconds_min <= args.seconds <= seconds_max:
        print(f"idle_cpu: --seconds must be between {seconds_min:g} and {seconds_max:g}, got {args.seconds:g}",
              file=sys.stderr)
        return 2
    try:
        cpu_ms_per_s = measure(args.validators, args.seconds)
    except control.TestnetError as exc:
        print(f"idle_cpu: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"cpu_ms_per_s": cpu_ms_per_s, "seconds": args.seconds, "validators": args.validators}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
