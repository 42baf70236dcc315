"""Coverage-guided fuzzing of one decoder with atheris (libFuzzer for Python).

    .venv/bin/python -m tests.fuzz.run TARGET|all [--seconds S] [--corpus DIR]
    make fuzz [FUZZ_SECONDS=60]             every target in turn

TARGET is a name from tests/fuzz/targets.py (handshake-frame, peer-frame,
consensus-message, entry, rpc-request, signed-query, proof, genesis, msgpack).
The corpus starts from the target's valid seeds, so mutations begin inside
the format. Our packages are instrumented for coverage; a finding is any
exception other than the decoder's documented error: atheris prints the
input and its traceback and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["consensus", "storage", "node"]):
    from tests.fuzz import targets

# libFuzzer's default input size cap is 4 KiB; our frames are larger, but what breaks
# decoders (nesting, headers, truncation) fits here, and smaller inputs run faster.
INPUT_BYTES_MAX = 16_384


ALL = "all"
_NAMES = sorted(targets.TARGETS)


def every_target(data: bytes) -> None:
    """All targets in one process (one start-up instead of nine): byte 0 picks the decoder."""
    if data:
        targets.TARGETS[_NAMES[data[0] % len(_NAMES)]](data[1:])


def _seeds(name: str) -> list[bytes]:
    if name != ALL:
        return targets.seeds(name)
    return [bytes([index]) + seed for index, each in enumerate(_NAMES) for seed in targets.seeds(each)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(targets.TARGETS) + [ALL],
                        help=f"one decoder, or {ALL!r}: every one in one run, the input's first byte picking it")
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus directory, kept between runs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    target = targets.TARGETS[args.target] if args.target != ALL else every_target
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{args.target}-") as scratch:
        corpus = args.corpus or Path(scratch)
        corpus.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(_seeds(args.target)):
            (corpus / f"seed-{index}").write_bytes(seed)
        print(f"fuzzing {args.target} for {args.seconds} s, corpus {corpus}", flush=True)
        atheris.Setup(
            [sys.argv[0], f"-max_total_time={args.seconds}", f"-max_len={INPUT_BYTES_MAX}",
             "-print_final_stats=1", str(corpus)],
            target,
        )
        atheris.Fuzz()   # exits the process: 0 when the time is up, non-zero on a finding
    return 0


if __name__ == "__main__":
    sys.exit(main())
