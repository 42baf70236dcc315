"""`make fuzz` works: each atheris target runs for a second from its seeds with no finding.

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
SMOKE_SECONDS = 1


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_runs_without_findings(name, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, "--seconds", str(SMOKE_SECONDS), "--corpus", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "stat::number_of_executed_units" in output, output[-2000:]
    executed = int(output.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > 100, f"only {executed} inputs ran"
    assert any(tmp_path.iterdir()), "the corpus kept nothing"


def test_fuzz_refuses_an_unknown_target():
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "no-such-target"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice" in done.stderr
