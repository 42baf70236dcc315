"""Running `bayledger` in-process for the CLI tests (node.cli.main, output captured by pytest)."""

from __future__ import annotations

from node.cli import main


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `bayledger ARGV`."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> bool:
    """The CLI's errors are one line, never a traceback."""
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err
