"""The seed sweep CI runs: every seed in SWEEP_SEEDS must keep every invariant during
the fault phase and commit every valid request on every honest replica once healed.
A failure names each failing seed with the command that replays it.

SWEEP_TICKS is shorter than the CLI default, and 20 seeds (300 took 107 s on this host
on 2026-12-06; 240 still left make test at 10 min 11 s once the host's batching, the
invariant checks and the README tour joined it; 150 took 92 s once half the seeds drew
reconfigurations, which commit empty blocks up to each epoch boundary, and 100 still left
make test at 9 min 11 s; 60 left it at 9 min 58 s once membership's real-process tests
joined; 30 left it at 10 min 3 s on 2026-12-07, a slow day, once the link proxy's and the
bench's tests joined), so the sweep fits the suite's time budget; `make sim` runs 1,000
seeds at full length. Since make test runs these chunks on every core (pytest-xdist) and only
the real-process tests alone, 60 seeds cost it about 15 s more than 20."""

import pytest

from consensus.sim import draw_fault_plan, run_seed
from consensus.sim.__main__ import main

SWEEP_SEEDS = range(0, 60)
SWEEP_TICKS = 300
CHUNK_SEEDS = 10
# Seeds known to fail on a replica bug not yet fixed (see FINDINGS.md). Empty when all pass.
KNOWN_FAILING_SEEDS: frozenset[int] = frozenset()


def chunks():
    seeds = list(SWEEP_SEEDS)
    return [seeds[i:i + CHUNK_SEEDS] for i in range(0, len(seeds), CHUNK_SEEDS)]


@pytest.mark.parametrize("seeds", chunks(), ids=lambda s: f"seeds{s[0]}-{s[-1]}")
def test_seed_sweep(seeds):
    failures = []
    for seed in seeds:
        result = run_seed(draw_fault_plan(seed, ticks=SWEEP_TICKS))
        if not result.ok and seed not in KNOWN_FAILING_SEEDS:
            failures.append(
                f"{result.summary()}\n  reproduce with: python -m consensus.sim --seed {seed} --ticks {SWEEP_TICKS}"
            )
    assert not failures, "\n".join(failures)


def test_a_seed_replays_the_identical_run():
    """Same seed, same process or not: every delivered packet is the same (trace digest)."""
    first = run_seed(draw_fault_plan(12, ticks=150))
    second = run_seed(draw_fault_plan(12, ticks=150))
    assert first == second
    assert run_seed(draw_fault_plan(13, ticks=150)).trace_digest != first.trace_digest


def test_cli_prints_the_plan_first_and_a_summary_last(capsys):
    assert main(["--seed", "4", "--ticks", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--- seed 4"
    assert lines[1].strip() == "seed=4"
    assert any(line.strip().startswith("loss_probability=") for line in lines[:40])
    assert lines[-1].startswith("runs=1 failed=0 blocks_committed=")
    assert "view_changes=" in lines[-1] and "faults_injected:" in lines[-1]


def test_cli_runs_a_range_and_refuses_bad_arguments(capsys):
    assert main(["--seeds", "0..2", "--ticks", "60", "--quiet", "--replicas", "4", "--byzantine", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("runs=3 failed=0")
    for argv in (["--seeds", "5..2"], ["--seeds", "x"], ["--seed", "1", "--byzantine", "2", "--replicas", "4"],
                 ["--seed", "1", "--replicas", "5"], ["--seed", "1", "--ticks", "0"], []):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv


def test_cli_failure_prints_how_to_reproduce_and_exits_nonzero(capsys, monkeypatch):
    """A failing seed (here the f + 1 split-brain fork, which the checker must catch) is
    reported with its reproduce line, and the exit status is 1."""
    import dataclasses

    import consensus.sim.__main__ as cli
    from consensus.sim import Simulation

    def run_seed_beyond_f(plan, log=None):
        plan = dataclasses.replace(plan, byzantine_behaviours=("split_brain",), byzantine_probability=0.0)
        return Simulation(plan, byzantine_ids=["r0", "r1"], beyond_f=True, log=log).run()

    monkeypatch.setattr(cli, "run_seed", run_seed_beyond_f)
    argv = ["--seeds", "0..5", "--replicas", "4", "--ticks", "200", "--quiet"]
    status = cli.main(argv)
    out = capsys.readouterr().out.splitlines()
    failing = [line for line in out if line.startswith("reproduce with: python -m consensus.sim --seed ")]
    assert status == 1 and failing, out
    assert "failing_seeds=" in out[-1] and f"failed={len(failing)}" in out[-1]


def test_a_seed_replays_identically_across_processes_and_hash_seeds():
    """Two processes with different PYTHONHASHSEED (so different set and str-hash orders) print
    the same result line, trace digest included: nothing depends on hash order."""
    import os
    import subprocess
    import sys

    lines = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-m", "consensus.sim", "--seed", "21", "--ticks", "150"],
            capture_output=True, text=True, env=env, check=True, timeout=120,
        ).stdout
        lines.append(out)
    assert lines[0] == lines[1]
    assert "seed=21 ok " in lines[0] and " trace=" in lines[0]
