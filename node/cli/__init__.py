"""`bayledger` command line: one subcommand module per area, dispatched here.

Each area module exposes `register(subparsers)`, adding its subcommands with
`set_defaults(handler=fn)`; a handler takes the parsed args and returns the
exit status. Usage and connection errors print one line and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from typing import Callable

# Modules that add subcommands; a missing module (not built yet) is skipped.
AREA_MODULES = ("node.cli.admin", "node.cli.participant", "node.cli.validators")


class CliError(Exception):
    """An expected failure: printed as one line, exit status `code` (2 by default)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def installed_version() -> str:
    """The installed package's version (pyproject.toml), or "unknown" when run from a bare checkout."""
    try:
        return importlib.metadata.version("bayledger")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run `make` or `pip install .`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayledger",
        description="Bayledger: a permissioned ledger of credit-report commitments "
        "between Hong Kong and the mainland, with offline-verifiable match proofs.",
    )
    parser.add_argument("--version", action="version", version=f"bayledger {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREA_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


EXIT_INTERRUPTED = 130     # Ctrl-C, as shells report SIGINT (128 + 2)
EXIT_BROKEN_PIPE = 1       # the reader of our output went away (`| head`): as Python's own docs do


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, "bayledger")


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except CliError as exc:
        print(f"bayledger {args.command}: {exc}", file=sys.stderr)
        return exc.code


def run_main(main_function: Callable[[list[str] | None], int], argv: list[str] | None, program: str) -> int:
    """A command line's main with the endings every user meets: Ctrl-C is one line and exit 130, and a
    reader that stops early (`| head -1`) ends the output quietly instead of with a BrokenPipeError."""
    try:
        status = main_function(argv)
        sys.stdout.flush()        # a broken pipe shows here, inside the handler below
        return status
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
