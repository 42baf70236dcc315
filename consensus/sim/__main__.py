"""`python -m consensus.sim --seed N` / `--seeds A..B`: run seeded cluster simulations.

Prints, per run, the seed and every fault parameter first and a one-line
result last; then one summary line over all runs (with `structured_garbage=N`,
the structured hostile messages Byzantine nodes sent). Exit status 1 if any seed
failed (each failure prints `reproduce with: python -m consensus.sim --seed N`),
2 on bad arguments. A seed whose run raises (an exception the simulator does not
turn into a failure itself) is a failing seed too, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .byzantine import structured_garbage_count
from .cluster import RunResult, run_seed, split_counts
from .faults import draw_fault_plan


def crashed_result(seed: int, exc: Exception) -> RunResult:
    """The result of a run that raised instead of returning: a failure that names the exception."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb is not None else ""
    return RunResult(
        seed=seed, ok=False, failure=f"the run raised {type(exc).__name__}{where}: {str(exc)[:200]}",
        phase="crashed", ticks_run=0, blocks_committed=0, view_changes=0, requests_valid=0,
        requests_committed=0, faults=Counter(), liveness_ticks=0, trace_digest="-",
    )


def parse_seeds(text: str) -> range:
    """`A..B` inclusive."""
    try:
        low_text, high_text = text.split("..", 1)
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants A..B (inclusive), got {text!r}") from None
    if low < 0 or high < low:
        raise argparse.ArgumentTypeError(f"--seeds range {text!r} is empty or negative")
    return range(low, high + 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", type=int, help="run one seed")
    which.add_argument("--seeds", type=parse_seeds, help="run seeds A..B inclusive")
    parser.add_argument("--replicas", type=int, choices=(4, 7, 10), help="cluster size (default: drawn from the seed)")
    parser.add_argument("--byzantine", type=int, help="Byzantine replicas, 0..f (default: drawn from the seed)")
    parser.add_argument("--ticks", type=int, help="ticks of the fault phase (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the final summary")
    parser.add_argument("--verbose", action="store_true", help="log crashes, restarts, partitions, applied blocks and new views as they happen")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(args.seeds)
    if args.seed is not None and args.seed < 0:
        parser.error("--seed must be non-negative")
    runs = blocks = view_changes = 0
    faults: Counter[str] = Counter()
    failed: list[int] = []
    for seed in seeds:
        try:
            plan = draw_fault_plan(seed, replicas=args.replicas, byzantine=args.byzantine, ticks=args.ticks)
        except ValueError as exc:
            parser.error(str(exc))
        if not args.quiet:
            print(f"--- seed {seed}")
            for line in plan.lines():
                print(f"  {line}")
        try:
            result = run_seed(plan, log=(lambda m: print(f"  {m}")) if args.verbose else None)
        except Exception as exc:  # a bug (the replica's or ours) fails this seed, not the sweep
            result = crashed_result(seed, exc)
        runs += 1
        blocks += result.blocks_committed
        view_changes += result.view_changes
        faults.update(result.faults)
        if not args.quiet or not result.ok:
            print(result.summary())
        if not result.ok:
            failed.append(seed)
            print(f"reproduce with: python -m consensus.sim --seed {seed}"
                  + (f" --replicas {args.replicas}" if args.replicas else "")
                  + (f" --byzantine {args.byzantine}" if args.byzantine is not None else "")
                  + (f" --ticks {args.ticks}" if args.ticks else ""))
        sys.stdout.flush()
    injected, observed = split_counts(faults)
    fault_text = " ".join(f"{k}={v}" for k, v in sorted(injected.items())) or "none"
    event_text = " ".join(f"{k}={v}" for k, v in sorted(observed.items())) or "none"
    print(
        f"runs={runs} failed={len(failed)} blocks_committed={blocks} view_changes={view_changes} "
        f"structured_garbage={structured_garbage_count(faults)} "
        f"faults_injected: {fault_text} | replica_events: {event_text}"
        + (f" failing_seeds={','.join(map(str, failed))}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
