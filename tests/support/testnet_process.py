"""Running `python -m testnet` as a process, for the testnet's process tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
command_timeout_s = 120     # one subcommand; `up` generates, starts four daemons and runs the demo


def run_testnet(*args: str, timeout_s: float = command_timeout_s) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testnet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


def status_json(run_dir: Path) -> dict:
    done = run_testnet("status", "--json", "--dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def pid_exists(pid: int) -> bool:
    """True while `pid` runs. A killed daemon was reparented when `up` exited, and may stay a
    zombie if this container's init does not reap: a zombie has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
