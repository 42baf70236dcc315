"""`bayledger` command line: one subcommand module per area, dispatched here.

Each area module exposes `register(subparsers)`, adding its subcommands with
`set_defaults(handler=fn)`; a handler takes the parsed args and returns the
exit status. Usage and connection errors print one line and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# Modules that add subcommands; a missing module (not built yet) is skipped.
AREA_MODULES = ("node.cli.admin", "node.cli.client")


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


def main(argv: list[str] | None = None) -> int:
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
