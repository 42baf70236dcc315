"""`make fuzz` works: every atheris target runs from its seeds for a few seconds with no finding.

The long searches are `make fuzz` (FUZZ_SECONDS per target); this only keeps the
harness and every target runnable, as `make test` must.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import targets

REPO = Path(__file__).resolve().parent.parent
SMOKE_SECONDS = 5


def test_every_fuzz_target_runs_without_findings(tmp_path):
    """One atheris process over every target (`all`: the first byte of an input picks the decoder),
    seeded with each target's valid inputs; it must run clean and reach every target."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "all", "--seconds", str(SMOKE_SECONDS), "--corpus", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "stat::number_of_executed_units" in output, output[-2000:]
    executed = int(output.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 1000, f"only {executed} inputs ran"
    names = sorted(targets.TARGETS)
    reached = {names[path.read_bytes()[0] % len(names)] for path in tmp_path.iterdir() if path.read_bytes()}
    assert reached == set(names), f"never reached: {set(names) - reached}"


def test_fuzz_refuses_an_unknown_target():
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "no-such-target"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice" in done.stderr
